"""Unit-to-unit matching between two layers by correlation over shared images.

Why: CKA says whether two layers are alike as a whole; researchers then ask which unit of B plays
the role of a given unit of A. Pearson correlation of probe activations gives a unit x unit table;
mutual best matches ("best buddies", Li et al. 2016) and an optimal one-to-one assignment
(Hungarian, scipy) read pairs off it, and a stimulus-permutation control says what correlation
unrelated units reach by chance on this many images, so "no good match" has a definite meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from scopecli.core.errors import ScopeError


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to zero mean and unit norm; also the mask of constant (dead) columns.

    Float16/float32 input is computed in float32 (probes are stored as float16), else float64.
    """
    x = np.asarray(x)
    x = x.astype(np.float32 if x.dtype in (np.float16, np.float32) else np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->j", x, x, dtype=np.float64))
    dead = ~(norm > 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0))))
    z = x / np.where(dead, 1.0, norm).astype(x.dtype)
    z[:, dead] = 0.0
    return z, dead


def unit_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation [p, q] between every unit (column) of a [n, p] and of b [n, q].

    Units that never vary on these images get NaN (they cannot be matched by correlation).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ScopeError(f"unit matching needs [images, units] matrices on the same images, "
                         f"got {a.shape} and {b.shape}")
    return _correlate(_standardize(a), _standardize(b))


def _correlate(sa, sb) -> np.ndarray:
    (za, da), (zb, db) = sa, sb
    c = za.T @ zb
    np.clip(c, -1.0, 1.0, out=c)
    c[da, :] = np.nan
    c[:, db] = np.nan
    return c


def self_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of unit i of a with unit i of b, for every i (same architecture): float64 [p]."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ScopeError(f"per-unit comparison needs the same shape, got {a.shape} and {b.shape}")
    za, da = _standardize(a)
    zb, db = _standardize(b)
    r = np.clip(np.einsum("ij,ij->j", za, zb, dtype=np.float64), -1.0, 1.0)
    r[da | db] = np.nan
    return r


@dataclass
class UnitMatching:
    """How the units of one layer of A map onto the units of one layer of B."""

    corr: np.ndarray  # [p, q], float32 for float16/32 input (NaN for dead units)
    best_b: np.ndarray  # int64 [p]: best unit of B for each unit of A (-1 if dead)
    best_b_corr: np.ndarray  # float64 [p]
    best_a: np.ndarray  # int64 [q]: best unit of A for each unit of B (-1 if dead)
    best_a_corr: np.ndarray  # float64 [q]
    buddies: np.ndarray  # int64 [m, 2]: (unit of A, unit of B) mutual best matches
    assign_a: np.ndarray  # int64 [k]: optimal one-to-one assignment, k = min(p, q) ...
    assign_b: np.ndarray  # int64 [k]: ... unit assign_a[i] of A <-> unit assign_b[i] of B
    assign_corr: np.ndarray  # float64 [k]
    floor: float  # chance level of a unit's best correlation (permutation control)
    unmatched_a: np.ndarray  # int64: live units of A whose best correlation is at or below the floor

    def top_pairs(self, n: int = 10) -> list[tuple[int, int, float]]:
        """The n assigned pairs with the highest correlation, best first."""
        order = np.argsort(-np.nan_to_num(self.assign_corr, nan=-np.inf), kind="stable")[:n]
        return [(int(self.assign_a[i]), int(self.assign_b[i]), float(self.assign_corr[i])) for i in order]

    def summary(self) -> dict:
        """Headline numbers (JSON-able)."""
        live = ~np.isnan(self.best_b_corr)
        return {
            "units_a": int(self.corr.shape[0]),
            "units_b": int(self.corr.shape[1]),
            "floor": _num(self.floor),
            "mean_best_corr": _num(np.nanmean(self.best_b_corr)) if live.any() else None,
            "mean_assigned_corr": _num(np.nanmean(self.assign_corr)) if self.assign_corr.size and
            not np.isnan(self.assign_corr).all() else None,
            "buddies": int(len(self.buddies)),
            "unmatched_a": int(len(self.unmatched_a)),
            "dead_a": int((~live).sum()),
            "dead_b": int(np.isnan(self.best_a_corr).sum()),
        }


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


def _best(filled: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Argmax/max along an axis of a table whose NaNs were replaced by -inf; -1/NaN where all are -inf."""
    other = filled.shape[1 - axis]
    if filled.shape[axis] == 0:
        return np.full(other, -1, dtype=np.int64), np.full(other, np.nan)
    idx = np.argmax(filled, axis=axis).astype(np.int64)
    val = np.take_along_axis(filled, np.expand_dims(idx, axis), axis=axis).squeeze(axis).astype(np.float64)
    dead = np.isinf(val)
    idx[dead] = -1
    val[dead] = np.nan
    return idx, val


def chance_floor(a: np.ndarray, b: np.ndarray, seed: int, n_perm: int | None = None, q: float = 0.95,
                 standardized=None) -> float:
    """What a unit of A's best correlation with B reaches when images are shuffled (seeded).

    The q-quantile over units and shuffles of max_j corr(a_i, b_j[perm]). Each shuffle uses at most
    256 (seeded) units of A; by default as many shuffles as give about 512 samples (at most 8),
    so a wide layer pair costs a quarter of its correlation table more, not a whole one.
    """
    rng = np.random.default_rng(seed)
    za, da = _standardize(a) if standardized is None else standardized[0]
    zb, db = _standardize(b) if standardized is None else standardized[1]
    za, zb = za[:, ~da], zb[:, ~db]
    if za.shape[1] == 0 or zb.shape[1] == 0:
        return float("nan")
    rows = min(za.shape[1], 256)
    if n_perm is None:
        n_perm = int(min(8, -(-512 // rows)))
    maxes = []
    for _ in range(max(1, n_perm)):
        pick = np.sort(rng.choice(za.shape[1], size=rows, replace=False)) if rows < za.shape[1] else slice(None)
        sub = za[:, pick]
        c = sub[rng.permutation(sub.shape[0])].T @ zb
        maxes.append(c.max(axis=1).astype(np.float64))
    return float(np.quantile(np.concatenate(maxes), q))


def match_units(a: np.ndarray, b: np.ndarray, seed: int = 0, n_perm: int | None = None) -> UnitMatching:
    """Match the units of a [n, p] to those of b [n, q] (same images, same row order)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ScopeError(f"unit matching needs [images, units] matrices on the same images, "
                         f"got {a.shape} and {b.shape}")
    sa, sb = _standardize(a), _standardize(b)
    c = _correlate(sa, sb)
    filled = np.where(np.isnan(c), -np.inf, c)
    best_b, best_b_corr = _best(filled, axis=1)
    best_a, best_a_corr = _best(np.ascontiguousarray(filled.T), axis=1)
    pa = np.nonzero(best_b >= 0)[0]
    mutual = pa[best_a[best_b[pa]] == pa]
    buddies = np.stack([mutual, best_b[mutual]], axis=1).astype(np.int64) if len(mutual) else \
        np.zeros((0, 2), dtype=np.int64)
    # Hungarian on the live units only; dead units cannot be matched meaningfully.
    live_a = np.nonzero(best_b >= 0)[0]
    live_b = np.nonzero(best_a >= 0)[0]
    if len(live_a) and len(live_b):
        sub = c[np.ix_(live_a, live_b)]
        ra, rb = linear_sum_assignment(np.nan_to_num(sub, nan=0.0), maximize=True)
        assign_a, assign_b = live_a[ra].astype(np.int64), live_b[rb].astype(np.int64)
        assign_corr = c[assign_a, assign_b].astype(np.float64)
    else:
        assign_a = assign_b = np.zeros(0, dtype=np.int64)
        assign_corr = np.zeros(0)
    floor = chance_floor(a, b, seed=seed, n_perm=n_perm, standardized=(sa, sb))
    unmatched = live_a[best_b_corr[live_a] <= floor] if not np.isnan(floor) else np.zeros(0, dtype=np.int64)
    return UnitMatching(c, best_b, best_b_corr, best_a, best_a_corr, buddies, assign_a, assign_b,
                        assign_corr, floor, unmatched.astype(np.int64))
