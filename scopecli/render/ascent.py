"""The plain optimization loop of the one-shot renders, `scope caricature` (render/caricature.py) and the
atlas cells (render/directions.py): Adam on the image parameterization, one loss per step, and the
progress bar moved in 16 ticks. Shared so the two cannot drift apart; the unit renders of engine.py keep
their own loop, which also records a trace of the objective and redirects ReLU gradients early on."""

from __future__ import annotations

from typing import Callable

import torch

from scopecli.render.reproducible import reproducible


def ascend(param: torch.nn.Module, steps: int, lr: float, loss_at: Callable[[int], torch.Tensor],
           progress=None, images: int = 1) -> None:
    """`steps` Adam steps (learning rate `lr`) on `param.raw`, minimizing `loss_at(step)` (a scalar; the
    negated objective). `progress`, if given, advances by `images` in all over the run."""
    optimizer = torch.optim.Adam([param.raw], lr=lr)
    tick = max(1, steps // 16)
    with reproducible(param.raw.device):
        for step in range(steps):
            (grad,) = torch.autograd.grad(loss_at(step), [param.raw])
            param.raw.grad = grad
            optimizer.step()
            if progress is not None and (step + 1) % tick == 0:
                progress.advance(images * tick / steps)
    if progress is not None and steps % tick:
        progress.advance(images * (steps % tick) / steps)
