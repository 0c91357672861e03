"""TopK sparse autoencoder unit space (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

z = relu(TopK(W_enc (x - b_pre) + b_enc)), x_hat = b_pre + z W_dec: each position is explained by at most
k_active of k directions, with no L1 penalty to tune. Trained with torch (CPU or GPU) on the fit rows of
the activation sample, standardised by one scalar (the rows' RMS after removing their mean, folded back
into the stored weights), Adam, decoder rows kept at unit norm (their gradient's parallel part removed),
encoder initialised to the decoder. Dead latents (none fired over the last epoch's rows) get the AuxK
loss: the residual is also fitted by the top k_aux dead latents, weighted 1/32, which pulls them back
toward data they could explain. Early stopping on the held-out rows' MSE (patience PATIENCE epochs); the
best epoch's weights are kept. Latents are ordered by mean contribution, largest first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scopecli.core.errors import ScopeError

MAX_EPOCHS = 200
PATIENCE = 8  # epochs without a better held-out loss before stopping
MIN_GAIN = 1e-4  # relative improvement that counts as better
BATCH = 1024
LR = 3e-3
AUX_WEIGHT = 1 / 32


def default_k_active(width: int) -> int:
    """Latents kept per position when not given: an eighth of the layer's channels, at least 1."""
    return max(1, width // 8)


def _topk_codes(h: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = h.topk(k, dim=-1)
    return torch.zeros_like(h).scatter(-1, idx, torch.relu(vals))


class _TopKSAE(torch.nn.Module):
    def __init__(self, width: int, k: int, k_active: int, generator: torch.Generator):
        super().__init__()
        dec = torch.randn(k, width, generator=generator)
        dec /= dec.norm(dim=1, keepdim=True).clamp(min=1e-8)
        self.W_dec = torch.nn.Parameter(dec)
        self.W_enc = torch.nn.Parameter(dec.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(k))
        self.b_pre = torch.nn.Parameter(torch.zeros(width))
        self.k_active = k_active

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_pre) @ self.W_enc.T + self.b_enc

    def forward(self, x: torch.Tensor):
        h = self.pre(x)
        z = _topk_codes(h, self.k_active)
        return h, z, z @ self.W_dec + self.b_pre

    @torch.no_grad()
    def fix_decoder(self) -> None:
        """Unit-norm decoder rows; called after every step (the gradient's parallel part is removed before)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8)

    @torch.no_grad()
    def drop_parallel_grad(self) -> None:
        if self.W_dec.grad is not None:
            w = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * w).sum(dim=1, keepdim=True) * w


def _mse(model: _TopKSAE, x: torch.Tensor) -> float:
    """Mean squared error per value over rows x (standardised units: about 1 - R²)."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 8192):
            xs = x[i:i + 8192]
            total += float(((model(xs)[2] - xs) ** 2).sum())
    return total / max(x.numel(), 1)


def fit_sae(fit: np.ndarray, valid: np.ndarray, k: int, k_active: int, seed: int, device: torch.device,
            progress=None, max_epochs: int = MAX_EPOCHS, batch: int = BATCH, lr: float = LR) -> dict:
    """Train a TopK SAE on rows `fit`, stopping early on rows `valid`. Returns encoder [k, C], pre_bias [C],
    bias [k], decoder [k, C] (float32, in the data's units) and how the training went."""
    n, c = fit.shape
    if k < 1:
        raise ScopeError("--k must be at least 1")
    if k > n:
        raise ScopeError(f"--k {k}: a sparse autoencoder with more latents than the {n} sample rows it is fitted on "
                         "cannot be fitted; collect a larger --sample or ask for fewer latents")
    if not 1 <= k_active <= k:
        raise ScopeError(f"--k-active {k_active} must be between 1 and --k {k}")
    g = torch.Generator().manual_seed(int(seed))
    mean = fit.mean(axis=0, dtype=np.float64)
    scale = float(np.sqrt(((fit - mean) ** 2).sum(axis=1).mean() / c)) or 1.0
    xf = torch.from_numpy(((fit - mean) / scale).astype(np.float32)).to(device)
    xv = torch.from_numpy(((valid - mean) / scale).astype(np.float32)).to(device)
    model = _TopKSAE(c, k, k_active, g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    k_aux = max(1, min(c // 2, k))
    since_fired = torch.zeros(k, dtype=torch.long, device=device)
    per_epoch = math.ceil(n / batch)
    best, best_state, best_epoch, stale, epoch = math.inf, None, 0, 0, 0
    aux_steps = 0
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, batch):
            xb = xf[order[i:i + batch]]
            h, z, xh = model(xb)
            resid = xb - xh
            loss = (resid ** 2).sum(dim=1).mean() / c
            fired = (z > 0).any(dim=0)
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + len(xb))
            dead = since_fired >= n
            if bool(dead.any()):
                aux_steps += 1
                h_dead = h.masked_fill(~dead, -math.inf)
                kk = min(k_aux, int(dead.sum()))
                e_hat = _topk_codes(h_dead, kk).nan_to_num(0.0) @ model.W_dec
                loss = loss + AUX_WEIGHT * ((resid.detach() - e_hat) ** 2).sum(dim=1).mean() / c
            opt.zero_grad(set_to_none=True)
            loss.backward()
            model.drop_parallel_grad()
            opt.step()
            model.fix_decoder()
        if progress is not None:
            progress.advance(per_epoch)
        v = _mse(model, xv)
        if v < best * (1 - MIN_GAIN):
            best, best_epoch, stale = v, epoch, 0
            best_state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    if progress is not None and epoch < max_epochs:
        progress.advance((max_epochs - epoch) * per_epoch)
    model.load_state_dict(best_state)
    with torch.no_grad():
        enc = model.W_enc.double().cpu().numpy() / scale
        dec = model.W_dec.double().cpu().numpy() * scale
        pre = mean + scale * model.b_pre.double().cpu().numpy()
        b = model.b_enc.double().cpu().numpy()
        contribution = np.zeros(k)
        for i in range(0, n, 8192):
            contribution += model(xf[i:i + 8192])[1].sum(dim=0).double().cpu().numpy()
    order = np.argsort(-contribution, kind="stable")
    return {"encoder": enc[order].astype(np.float32), "pre_bias": pre.astype(np.float32),
            "bias": b[order].astype(np.float32), "decoder": dec[order].astype(np.float32),
            "epochs": epoch, "best_epoch": best_epoch, "stopped_early": epoch < max_epochs,
            "valid_mse_standardised": best, "aux_steps": aux_steps, "scale": scale}
