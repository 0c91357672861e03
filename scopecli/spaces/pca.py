"""PCA unit space: the k leading principal directions of the centred activations (numpy SVD).

z = V_k (x - mean), no nonlinearity; decoder = encoder = V_k, so the reconstruction is the projection onto
the leading k-dimensional subspace. Signs are fixed so each direction's largest-magnitude entry is
positive (SVD signs are arbitrary; a fixed rule makes refits identical).
"""

from __future__ import annotations

import numpy as np

from scopecli.core.errors import ScopeError


def max_k(n_rows: int, width: int) -> int:
    return min(n_rows, width)


def fit_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(components float32 [k, C], mean float32 [C], explained variance ratio of the k components) of rows x."""
    n, c = x.shape
    if not 1 <= k <= max_k(n, c):
        raise ScopeError(f"--k {k}: PCA of {n} sample rows of {c} channels has at most {max_k(n, c)} components")
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k].copy()
    flip = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1.0, flip)[:, None]
    total = float((s ** 2).sum())
    evr = float((s[:k] ** 2).sum() / total) if total > 0 else float("nan")
    return comps.astype(np.float32), mean.astype(np.float32), evr
