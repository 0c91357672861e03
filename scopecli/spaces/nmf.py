"""NMF unit space: x - b_pre ≈ z H with z, H >= 0 (Lee & Seung's multiplicative updates, Frobenius loss).

NMF needs non-negative data. A layer that is not (a linear bottleneck, a residual sum) is refused with
why, or, with `shift=True`, shifted by a stated rule: b_pre = each channel's minimum over the fit rows,
so x - b_pre >= 0 there. The stored encoder is linear-then-ReLU like every unit space's:
z = relu(pinv(H)ᵀ (x - b_pre)), the ReLU pseudo-inverse, which approximates the non-negative least-squares
projection argmin_{z>=0} |x - b_pre - z H|; the fit quality reports both (r2: the stored encoder;
r2_nnls: the NNLS projection on up to NNLS_ROWS held-out rows, scipy.optimize.nnls per row).
Directions (rows of H) are scaled to unit norm and ordered by their mean contribution, largest first.
"""

from __future__ import annotations

import numpy as np
import torch

from scopecli.core.errors import ScopeError

MAX_ITER = 400
TOL = 1e-5  # stop when the relative loss change over 10 iterations is below this
NNLS_ROWS = 2000
EPS = 1e-10
ENCODER_NOTE = ("encoder = ReLU pseudo-inverse of the NMF basis H: z = relu(pinv(H)^T (x - b_pre)), an "
                "approximation of the non-negative least-squares projection (r2_nnls reports the projection)")


def max_k(n_rows: int, width: int) -> int:
    return min(n_rows, width)


def nmf_shift(x: np.ndarray, layer: str, shift: bool) -> np.ndarray:
    """b_pre [C]: zeros for non-negative rows; each channel's minimum with `shift`; else a one-line refusal."""
    lo = x.min(axis=0)
    if (lo >= 0).all():
        return np.zeros(x.shape[1], np.float32)
    if not shift:
        frac = float((x < 0).mean())
        raise ScopeError(f"NMF needs non-negative activations, and layer {layer} has negative ones ({100 * frac:.0f}% "
                         f"of sampled values, min {float(lo.min()):.3g}); pass --shift to subtract each channel's "
                         "sample minimum first (stored as the space's pre_bias), or use pca or sae")
    return np.minimum(lo, 0).astype(np.float32)


def fit_nmf(x: np.ndarray, k: int, seed: int, device: torch.device, progress=None) -> tuple[np.ndarray, int]:
    """(H float32 [k, C] with unit-norm rows, ordered by contribution; iterations run) for rows x >= 0."""
    n, c = x.shape
    if not 1 <= k <= max_k(n, c):
        raise ScopeError(f"--k {k}: NMF of {n} sample rows of {c} channels has at most {max_k(n, c)} components")
    g = torch.Generator().manual_seed(int(seed))
    X = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    scale = float(np.sqrt(max(float(x.mean()), EPS) / k))
    W = (torch.rand(n, k, generator=g, dtype=torch.float32) * scale).to(device)
    H = (torch.rand(k, c, generator=g, dtype=torch.float32) * scale).to(device)
    last = None
    it = 0
    for it in range(1, MAX_ITER + 1):
        H *= (W.T @ X) / ((W.T @ W) @ H + EPS)
        W *= (X @ H.T) / (W @ (H @ H.T) + EPS)
        if progress is not None:
            progress.advance(1)
        if it % 10 == 0:
            loss = float(((X - W @ H) ** 2).sum())
            if last is not None and abs(last - loss) <= TOL * max(last, EPS):
                break
            last = loss
    if progress is not None and it < MAX_ITER:
        progress.advance(MAX_ITER - it)
    norms = H.norm(dim=1).clamp(min=EPS)
    contribution = (W * norms).mean(dim=0)
    order = torch.argsort(contribution, descending=True, stable=True)
    H = (H / norms[:, None])[order]
    return H.cpu().numpy().astype(np.float32), it


def relu_pinv_encoder(h: np.ndarray) -> np.ndarray:
    """encoder [k, C] = pinv(H)ᵀ: z = relu(encoder @ (x - b_pre))."""
    return np.linalg.pinv(h.astype(np.float64)).T.astype(np.float32)


def nnls_r2(h: np.ndarray, x: np.ndarray, b_pre: np.ndarray, mean: np.ndarray) -> float:
    """R² of the NNLS projection (argmin_{z>=0} |x - b_pre - z H|) over up to NNLS_ROWS rows of x."""
    from scipy.optimize import nnls

    rows = np.asarray(x[:NNLS_ROWS], np.float64)
    a = h.astype(np.float64).T  # [C, k]
    err = tot = 0.0
    for r in rows:
        z, _ = nnls(a, r - b_pre)
        err += float(((r - b_pre - a @ z) ** 2).sum())
        tot += float(((r - mean) ** 2).sum())
    return 1.0 - err / tot if tot > 0 else float("nan")
