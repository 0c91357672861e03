"""Centered kernel alignment (CKA): how alike two layers represent the same images.

Why CKA: it ignores unit order, rotations and overall scale, so it compares layers of different
widths and different models. Linear CKA (Kornblith et al. 2019) is biased upward when layers are
wide and images few; the debiased variant uses the unbiased HSIC estimator (Song et al. 2012,
as used by Nguyen et al. 2021) and sits near 0 for unrelated representations.

Everything is computed from one n x n Gram matrix per layer, so a full layer x layer table costs
one matrix product per layer plus cheap inner products, and the stimulus-permutation control
(the "floor") only re-indexes Grams instead of recomputing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scopecli.core.errors import ScopeError


def _as_matrix(x: np.ndarray) -> np.ndarray:
    """[n, p] with features centred (one row per stimulus), float32 kept (float16 probes carry no more),
    anything else as float64; vectors become one column."""
    x = np.asarray(x)
    x = x.astype(np.float32 if x.dtype in (np.float16, np.float32) else np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ScopeError(f"CKA needs a 2-D [images, units] matrix, got shape {x.shape}")
    return x - x.mean(axis=0, keepdims=True)


def linear_gram(x: np.ndarray) -> np.ndarray:
    """Gram matrix of the feature-centred representation: equals H X Xᵀ H (H the centring matrix)."""
    xc = _as_matrix(x)
    return (xc @ xc.T).astype(np.float64)


def unbiased_centre(gram: np.ndarray) -> np.ndarray:
    """Transform a Gram so that <U(K), U(L)> / (n(n-3)) is the unbiased HSIC of Song et al. (2012).

    HSIC_u = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3)), with K̃ = K with a
    zero diagonal. Expanding the bracket as one inner product gives U(K) = K̃ - r1ᵀ - 1rᵀ (diagonal
    zeroed again) with r = K̃1/(n-2) - (1ᵀK̃1)/(2(n-1)(n-2)).
    """
    n = gram.shape[0]
    if n < 4:
        raise ScopeError(f"debiased CKA needs at least 4 images, got {n}")
    k = np.array(gram, dtype=np.float64, copy=True)
    np.fill_diagonal(k, 0.0)
    row = k.sum(axis=1)
    r = row / (n - 2) - row.sum() / (2.0 * (n - 1) * (n - 2))
    k -= r[:, None]
    k -= r[None, :]
    np.fill_diagonal(k, 0.0)
    return k


def _ratio(num: np.ndarray, da: np.ndarray, db: np.ndarray) -> np.ndarray:
    """num / sqrt(da * db), NaN where a representation has no variance (or a negative self-HSIC)."""
    den = np.sqrt(np.clip(np.multiply.outer(da, db), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between two representations [n, p] and [n, q] of the same n stimuli (same row order)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ScopeError(f"CKA needs the same images in both: {x.shape[0]} vs {y.shape[0]} rows")
    k, l_ = linear_gram(x), linear_gram(y)
    if debiased:
        k, l_ = unbiased_centre(k), unbiased_centre(l_)
    num = np.vdot(k, l_)
    return float(_ratio(np.array(num), np.array(np.vdot(k, k)), np.array(np.vdot(l_, l_))))


@dataclass
class GramSet:
    """Centred Grams of several layers on the same stimuli, flattened for fast inner products."""

    names: list[str]
    biased: np.ndarray  # float64 [L, n*n]: feature-centred Grams (H K H)
    unbiased: np.ndarray  # float64 [L, n*n]: unbiased_centre(K)
    n: int
    norm_b: np.ndarray | None = None  # [L] <K, K> (unchanged by permuting stimuli)
    norm_u: np.ndarray | None = None

    def __post_init__(self):
        if self.norm_b is None:
            self.norm_b = np.einsum("ij,ij->i", self.biased, self.biased)
        if self.norm_u is None:
            self.norm_u = np.einsum("ij,ij->i", self.unbiased, self.unbiased)

    @classmethod
    def from_acts(cls, names: list[str], acts: list[np.ndarray]) -> "GramSet":
        """Acts: one [n, units] matrix per layer, rows in the same stimulus order for all layers.

        Float16/float32 acts are multiplied in float32 (twice as fast; probes are stored as float16),
        float64 acts in float64; centring and all inner products are float64.
        """
        if not acts:
            raise ScopeError("no layers to compare")
        n = int(np.asarray(acts[0]).shape[0])
        b = np.empty((len(acts), n * n), dtype=np.float64)
        u = np.empty((len(acts), n * n), dtype=np.float64)
        for i, a in enumerate(acts):
            if np.asarray(a).shape[0] != n:
                raise ScopeError(f"layer {names[i]} has {np.asarray(a).shape[0]} images, expected {n}")
            g = linear_gram(a)
            b[i] = g.ravel()
            u[i] = unbiased_centre(g).ravel()
        return cls(list(names), b, u, n)

    def permuted(self, perm: np.ndarray) -> "GramSet":
        """The same Grams with stimuli reordered by `perm` (centring commutes with permutation)."""
        n = self.n
        idx = (perm[:, None] * n + perm[None, :]).ravel()
        return GramSet(self.names, self.biased[:, idx], self.unbiased[:, idx], n, self.norm_b, self.norm_u)

    def astype(self, dtype) -> "GramSet":
        """A copy with the Gram stacks in `dtype` (float32 halves the memory traffic of the permutation
        control, whose scores are only compared against, never reported to 6 digits)."""
        return GramSet(self.names, self.biased.astype(dtype), self.unbiased.astype(dtype), self.n,
                       self.norm_b, self.norm_u)


def cka_table(a: GramSet, b: GramSet) -> tuple[np.ndarray, np.ndarray]:
    """(linear CKA [La, Lb], debiased CKA [La, Lb]) between every layer of `a` and every layer of `b`."""
    if a.n != b.n:
        raise ScopeError(f"CKA needs the same images in both: {a.n} vs {b.n}")
    lin = _ratio((a.biased @ b.biased.T).astype(np.float64), a.norm_b, b.norm_b)
    deb = _ratio((a.unbiased @ b.unbiased.T).astype(np.float64), a.norm_u, b.norm_u)
    return lin, deb


def permutation_floor(a: GramSet, b: GramSet, n_perm: int, seed: int,
                      on_step=None) -> tuple[np.ndarray, np.ndarray]:
    """Control: CKA after shuffling which image is which in `b` (seeded); max over `n_perm` shuffles.

    A score at or below its floor is what unrelated representations of these images reach by chance.
    `on_step()` is called after each shuffle (progress bars).
    """
    if n_perm < 1:
        raise ScopeError(f"the permutation control needs at least 1 shuffle, got {n_perm}")
    rng = np.random.default_rng(seed)
    a, b = a.astype(np.float32), b.astype(np.float32)
    lin_f = np.full((len(a.names), len(b.names)), -np.inf)
    deb_f = np.full_like(lin_f, -np.inf)
    for _ in range(n_perm):
        lin, deb = cka_table(a, b.permuted(rng.permutation(b.n)))
        lin_f = np.fmax(lin_f, lin)
        deb_f = np.fmax(deb_f, deb)
        if on_step is not None:
            on_step()
    lin_f[np.isinf(lin_f)] = np.nan
    deb_f[np.isinf(deb_f)] = np.nan
    return lin_f, deb_f
