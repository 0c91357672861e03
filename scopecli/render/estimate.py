"""How long a render will take, known before it starts: one timed step per layer, summed over the batches.

A batch's cost is set by its deepest layer (the forward pass stops there), so the first batch of a
default plan (the earliest, cheapest layer) says little about the rest: on EfficientNet-Lite0 a step on
`_blocks.15` costs ~4x one on `_blocks.0`. So before optimizing, each batch's deepest layer gets one timed
forward+backward (and one forward, for the evidence passes) at the batch size the run uses, and the plan's
cost is the sum over batches. The same per-target costs weight the progress bar, so its ETA and the
printed estimate agree. The clock is injectable: tests check the arithmetic with a fake one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from scopecli.model.inputspec import input_channels
from scopecli.core.devices import as_input, autocast
from scopecli.model.capture import LayerTap


@dataclass(frozen=True)
class LayerCost:
    """Seconds for one batch of `batch` samples on a layer: one optimisation step, one forward-only pass."""

    step_s: float
    forward_s: float


@dataclass
class RenderEstimate:
    """Predicted seconds per batch and per target of a render plan."""

    batch_seconds: list[float]  # one per batch, in run order
    target_seconds: list[float]  # one per target, in run order (its batch's cost shared equally)

    @property
    def total_s(self) -> float:
        return float(sum(self.batch_seconds))


def batch_cost(cost: LayerCost, steps: int, evidence_passes: int) -> float:
    """Seconds for one batch: `steps` optimisation steps and `evidence_passes` forward passes."""
    return steps * cost.step_s + evidence_passes * cost.forward_s


def estimate_plan(chunks, layer_order, costs: dict[str, LayerCost], steps: int, evidence_passes: int) -> RenderEstimate:
    """Sum of batch costs; each batch costs what its deepest layer (last in `layer_order`) costs."""
    rank = {name: i for i, name in enumerate(layer_order)}
    per_batch, per_target = [], []
    for chunk in chunks:
        deepest = max((t.layer for t in chunk), key=lambda name: rank[name])
        seconds = batch_cost(costs[deepest], steps, evidence_passes)
        per_batch.append(seconds)
        per_target.extend([seconds / len(chunk)] * len(chunk))
    return RenderEstimate(per_batch, per_target)


def deepest_layers(chunks, layer_order) -> list[str]:
    """The distinct deepest layers of the batches (the only ones that need timing), in `layer_order`."""
    rank = {name: i for i, name in enumerate(layer_order)}
    found = {max((t.layer for t in chunk), key=lambda name: rank[name]) for chunk in chunks}
    return [name for name in layer_order if name in found]


def time_layer(module, normalize, layer: str, batch: int, size: int, device, amp: bool = False,
               clock=time.perf_counter, repeats: int = 2) -> LayerCost:
    """Best of `repeats` timed steps (forward to `layer` + backward to the input) and forward passes,
    after one untimed warm-up, on a random batch: what one render step costs there (channels-last input, as
    the engine feeds it)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, input_channels(module), size, size, generator=gen).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step():
        xr = x.clone().requires_grad_(True)
        with autocast(device, amp):
            act = tap(as_input(normalize(xr), device))[layer]
        torch.autograd.grad(act.float().mean(), [xr])

    def forward():
        with torch.no_grad(), autocast(device, amp):
            tap(as_input(normalize(x), device))

    best = {}
    with LayerTap(module, [layer]) as tap:
        for name, fn in (("step", step), ("forward", forward)):
            fn()  # warm-up: kernel selection, allocator
            times = []
            for _ in range(max(1, repeats)):
                sync()
                t0 = clock()
                fn()
                sync()
                times.append(clock() - t0)
            best[name] = max(min(times), 0.0)
    return LayerCost(best["step"], best["forward"])


def fmt_duration(seconds: float) -> str:
    """'42 s', '3.5 min' or '2.1 h'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
