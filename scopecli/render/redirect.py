"""Redirected ReLU gradients for the first steps of a render (Lucid's fix for dead units).

At a random start, a deep unit is often inactive for the whole image: every ReLU on its path passes zero
gradient and the optimizer never moves. Lucid's remedy: while a sample's true ReLU gradient is zero
everywhere, let through the gradient components that would push a negative input UP toward the active
side (and, for ReLU6, a saturated one down), so the unit can come alive; once it is active the true
gradient is used unchanged.

`RedirectedReLU()` is a `TorchFunctionMode`: inside it, every ReLU the model calls is swapped for the
redirected one — `nn.ReLU` / `nn.ReLU6` modules (they call `F.relu` / `F.hardtanh`), `F.relu`,
`F.relu6`, `F.hardtanh`, `torch.relu`, `Tensor.relu` and their in-place forms. The forward values are
identical; in-place forms return a new tensor (the model uses the returned value, as all torchvision
models do).

Where it cannot apply (documented limits): activations written as `torch.clamp`/`torch.maximum`/
`x * (x > 0)`, ReLUs inside TorchScript or compiled graphs, and ReLU-free models (GELU, SiLU) — there
the render simply runs with true gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _RedirectedClamp(torch.autograd.Function):
    """y = clamp(x, lo, hi) (hi may be None) with Lucid's per-sample redirected backward."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.lo, ctx.hi
        inside = x > lo
        if hi is not None:
            inside = inside & (x < hi)
        true_grad = torch.where(inside, grad, 0.0)
        if x.dim() == 0:
            alive = true_grad != 0
        else:
            alive = (true_grad != 0).flatten(1).any(dim=1)
        # On the CPU a host check is free: skip the redirect work when every sample is alive.
        if x.device.type == "cpu" and bool(alive.all()):
            return true_grad, None, None
        # grad is d(loss)/dy with loss minimized: grad > 0 means descent pushes y down.
        blocked = (x <= lo) & (grad > 0)
        if hi is not None:
            blocked = blocked | ((x >= hi) & (grad < 0))
        redirected = torch.where(blocked, 0.0, grad)
        if x.dim() > 0:
            alive = alive.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(alive, true_grad, redirected), None, None


def _arg(args, kwargs, index, name, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


class RedirectedReLU(TorchFunctionMode):
    """Within this mode, ReLU / ReLU6 / hardtanh calls use redirected gradients."""

    _RELU = {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_, F.relu_}
    _RELU6 = {F.relu6}
    _HARDTANH = {F.hardtanh, F.hardtanh_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point():
            if func in self._RELU:
                return _RedirectedClamp.apply(x, 0.0, None)
            if func in self._RELU6:
                return _RedirectedClamp.apply(x, 0.0, 6.0)
            if func in self._HARDTANH:
                lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
                hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
                return _RedirectedClamp.apply(x, lo, hi)
        return func(*args, **kwargs)
