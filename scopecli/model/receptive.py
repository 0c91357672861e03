"""Receptive fields of any PyTorch model's intermediate tensors, traced analytically in one forward pass.

The forward runs under a `TorchFunctionMode` that annotates every intermediate tensor with the receptive
field of its spatial positions (size, stride, start per axis), propagated through convolutions, pooling
and padding, and through element-wise / concatenating ops as the union of their inputs. Functional code
(`F.relu`, `x + y`, `torch.cat`) is seen as well as modules. Global context (squeeze-excitation gates,
global pooling broadcast back onto a feature map) is not counted: the reported field is the local one
that dataset-example crops should cover. Self-contained so new ops (permute, reshape, attention) are
taught here and nowhere else.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

_ATTR = "_scope_rf"
_GLOBAL = "global"


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return (int(v), int(v))


class _RF:
    """Receptive field of every position of a 4-D tensor, per axis (h, w); floats for exactness."""

    __slots__ = ("size", "stride", "start")

    def __init__(self, size, stride, start):
        self.size, self.stride, self.start = tuple(size), tuple(stride), tuple(start)

    def window(self, kernel, stride, padding, dilation) -> "_RF":
        size = tuple(s + (k - 1) * d * j for s, k, d, j in zip(self.size, kernel, dilation, self.stride))
        start = tuple(a - p * j for a, p, j in zip(self.start, padding, self.stride))
        new_stride = tuple(j * s for j, s in zip(self.stride, stride))
        return _RF(size, new_stride, start)

    @staticmethod
    def union(fields: list["_RF"]) -> "_RF":
        start = tuple(min(f.start[i] for f in fields) for i in range(2))
        end = tuple(max(f.start[i] + f.size[i] for f in fields) for i in range(2))
        stride = tuple(max(f.stride[i] for f in fields) for i in range(2))
        return _RF(tuple(e - s for e, s in zip(end, start)), stride, start)


def _arg(args, kwargs, index, name, default):
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


def tensors(obj):
    """Every tensor inside a (nested) module output or argument list."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)


class _FieldTracker(TorchFunctionMode):
    """Annotates each op's output with the receptive field derived from its inputs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tensors((args, kwargs)) if hasattr(t, _ATTR)]
        if not inputs:
            return out
        field = self._propagate(getattr(func, "__name__", ""), args, kwargs, inputs, out)
        for t in tensors(out):
            try:
                setattr(t, _ATTR, field)
            except (AttributeError, RuntimeError):
                pass
        return out

    def _propagate(self, name, args, kwargs, inputs, out):
        first = next(tensors(out), None)
        source = inputs[0]
        src = getattr(source, _ATTR)
        if first is None or first.dim() != 4:
            return _GLOBAL
        if name.startswith("conv2d") or name == "_conv_forward":
            if not isinstance(src, _RF):
                return src
            weight = _arg(args, kwargs, 1, "weight", None)
            kernel = tuple(weight.shape[-2:]) if isinstance(weight, torch.Tensor) else (1, 1)
            stride = _pair(_arg(args, kwargs, 3, "stride", 1))
            dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
            padding = _arg(args, kwargs, 4, "padding", 0)
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                else:  # 'same': total padding d*(k-1), the smaller half on the leading side
                    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
            return src.window(kernel, stride, _pair(padding), dilation)
        if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"):
            if not isinstance(src, _RF):
                return src
            if name == "lp_pool2d":
                kernel = _pair(_arg(args, kwargs, 2, "kernel_size", 1))
                stride = _arg(args, kwargs, 3, "stride", None)
                padding, dilation = (0, 0), (1, 1)
            else:
                kernel = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
                stride = _arg(args, kwargs, 2, "stride", None)
                padding = _pair(_arg(args, kwargs, 3, "padding", 0))
                dilation = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name.startswith("max") else (1, 1)
            stride = kernel if stride in (None, [], ()) else _pair(stride)
            return src.window(kernel, stride, padding, dilation)
        if name.startswith("adaptive_"):
            if not isinstance(src, _RF):
                return src
            in_hw, out_hw = source.shape[-2:], first.shape[-2:]
            if tuple(out_hw) == (1, 1) and tuple(in_hw) != (1, 1):
                return _GLOBAL
            kernel = tuple(math.ceil(i / o) for i, o in zip(in_hw, out_hw))
            stride = tuple(max(i // o, 1) for i, o in zip(in_hw, out_hw))
            return src.window(kernel, stride, (0, 0), (1, 1))
        if name == "pad":
            if not isinstance(src, _RF):
                return src
            pad = list(_arg(args, kwargs, 1, "pad", ())) + [0, 0, 0, 0]
            left, top = pad[0], pad[2]
            return _RF(src.size, src.stride, (src.start[0] - top * src.stride[0], src.start[1] - left * src.stride[1]))
        if name in ("interpolate", "upsample", "upsample_bilinear2d", "upsample_nearest2d"):
            if not isinstance(src, _RF):
                return src
            scale = tuple(i / o for i, o in zip(source.shape[-2:], first.shape[-2:]))
            return _RF(src.size, tuple(j * s for j, s in zip(src.stride, scale)), src.start)
        # Element-wise, normalization, concatenation along channels, gating: union of the local
        # fields of inputs with the output's spatial size; broadcast global context is ignored.
        out_hw = tuple(first.shape[-2:])
        local = [
            getattr(t, _ATTR)
            for t in inputs
            if t.dim() == 4 and tuple(t.shape[-2:]) == out_hw and isinstance(getattr(t, _ATTR), _RF)
        ]
        if local:
            return _RF.union(local) if len(local) > 1 else local[0]
        if all(getattr(t, _ATTR) is _GLOBAL for t in inputs):
            return _GLOBAL
        return None  # an op we cannot follow: field unknown


def field_ints(field, input_size: int) -> tuple[int, int, int]:
    """(size, stride, start) in whole input pixels; the whole input for a global or unknown field."""
    if not isinstance(field, _RF):  # global or unknown: the whole input
        return input_size, input_size, 0
    size = max(field.size)
    stride = max(field.stride)
    start = min(field.start)
    return int(round(size)), max(int(round(stride)), 1), int(math.floor(start))


@contextmanager
def tracing_fields(x: torch.Tensor):
    """Mark `x` as the model input (each position sees one pixel) and follow the ops run inside."""
    setattr(x, _ATTR, _RF((1, 1), (1, 1), (0, 0)))
    with _FieldTracker():
        yield


def field_of(tensor: torch.Tensor):
    """The field traced onto a tensor (None when no traced op produced it)."""
    return getattr(tensor, _ATTR, None)
