"""How well a unit space fits: reconstruction R², explained variance, dead units, sparsity; on held-out rows.

R² = 1 - sum |x - x_hat|² / sum |x - mean|², with x_hat = decode(encode(x)) through the space as stored
(for NMF that is the ReLU pseudo-inverse encoder) and `mean` the fit rows' mean: the share of the layer's
variance the space's units carry. A unit is dead when it is zero on every held-out row.
"""

from __future__ import annotations

import numpy as np

from scopecli.core.records import UnitSpace

CHUNK = 8192


def reconstruction_r2(space: UnitSpace, x: np.ndarray, mean: np.ndarray) -> float:
    """R² of the space's reconstruction of rows x [n, C] against the constant `mean`."""
    err = tot = 0.0
    for i in range(0, len(x), CHUNK):
        xs = np.asarray(x[i:i + CHUNK], np.float64)
        err += float(((xs - space.decode(space.encode(xs))) ** 2).sum())
        tot += float(((xs - mean) ** 2).sum())
    return 1.0 - err / tot if tot > 0 else float("nan")


def activity(space: UnitSpace, x: np.ndarray) -> tuple[float, float]:
    """(dead fraction: units zero on every row, mean number of nonzero units per row) over rows x."""
    alive = np.zeros(space.k, bool)
    l0 = 0.0
    for i in range(0, len(x), CHUNK):
        z = space.encode(x[i:i + CHUNK])
        nz = z != 0
        alive |= nz.any(axis=0)
        l0 += float(nz.sum())
    return float(1.0 - alive.mean()), l0 / max(len(x), 1)


def measure(space: UnitSpace, data, seconds: float, **extra) -> dict:
    """The quality numbers a space records (on the held-out rows of `data`, a FitData)."""
    mean = data.fit.mean(axis=0, dtype=np.float64)
    dead, l0 = activity(space, data.valid)
    out = {"r2": reconstruction_r2(space, data.valid, mean), "dead_fraction": dead, "mean_active": l0,
           "fit_seconds": float(seconds), "explained_variance": float("nan")}
    out.update(data.describe())
    out.update(extra)
    return out
