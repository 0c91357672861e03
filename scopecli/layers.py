"""Addressable layers of any PyTorch model: names, output shapes, receptive fields, default set.

Layers are PyTorch's dotted module names. Receptive fields are computed analytically and generically:
one forward pass at the model's input size runs under a `TorchFunctionMode` that annotates every
intermediate tensor with the receptive field of its spatial positions (size, stride, start per axis),
propagated through convolutions, pooling and padding, and through element-wise / concatenating ops
as the union of their inputs. Functional code (`F.relu`, `x + y`, `torch.cat`) is seen as well as
modules. Global context (squeeze-excitation gates, global pooling broadcast back onto a feature map)
is not counted: the reported field is the local one that dataset-example crops should cover.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from scopecli.errors import ScopeError
from scopecli.records import LayerRecord

_ATTR = "_scope_rf"
_GLOBAL = "global"

# Leaf-like module types: never treated as "blocks" even when they have children.
_LAYER_TYPES = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.Linear,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.Dropout,
)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
    nn.PReLU,
)


@dataclass
class LayerInfo:
    """One addressable layer: its output at the model's input size and its receptive field."""

    name: str
    kind: str
    channels: int
    height: int
    width: int
    rf_size: int
    rf_stride: int
    rf_start: int
    default: bool = False

    def record(self) -> LayerRecord:
        return LayerRecord(
            name=self.name,
            units=self.channels,
            shape=(self.channels, self.height, self.width),
            rf_size=self.rf_size,
            rf_stride=self.rf_stride,
            rf_start=self.rf_start,
        )

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- module lookup


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The module at a dotted name; unknown names get a one-line error with close suggestions."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `scope layers MODEL` lists them"
    raise ScopeError(f"unknown layer '{name}'{hint}")


# ---------------------------------------------------------------- receptive-field propagation


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


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _FieldTracker(TorchFunctionMode):
    """Annotates each op's output with the receptive field derived from its inputs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors((args, kwargs)) if hasattr(t, _ATTR)]
        if not inputs:
            return out
        field = self._propagate(getattr(func, "__name__", ""), args, kwargs, inputs, out)
        for t in _tensors(out):
            try:
                setattr(t, _ATTR, field)
            except (AttributeError, RuntimeError):
                pass
        return out

    def _propagate(self, name, args, kwargs, inputs, out):
        first = next(_tensors(out), None)
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


def _rf_ints(field, input_size: int) -> tuple[int, int, int]:
    if not isinstance(field, _RF):  # global or unknown: the whole input
        return input_size, input_size, 0
    size = max(field.size)
    stride = max(field.stride)
    start = min(field.start)
    return int(round(size)), max(int(round(stride)), 1), int(math.floor(start))


# ---------------------------------------------------------------- default layer set


def _is_block(module: nn.Module) -> bool:
    return any(True for _ in module.children()) and not isinstance(module, _LAYER_TYPES + _ACTIVATIONS)


def _is_conv_stack(module: nn.Module) -> bool:
    """A container of plain layers holding several convolutions (VGG/AlexNet `features`)."""
    children = list(module.children())
    convs = sum(isinstance(c, nn.modules.conv._ConvNd) for c in children)
    return convs >= 2 and not any(_is_block(c) for c in children)


def _default_names(model: nn.Module, produced: dict[str, tuple]) -> list[str]:
    names: list[str] = []

    def spatial(name):
        shape = produced.get(name)
        return shape is not None and len(shape) == 4

    def visit(prefix: str, module: nn.Module, top: bool):
        children = list(module.named_children())
        if _is_conv_stack(module):
            items = children
            for i, (child_name, child) in enumerate(items):
                full = f"{prefix}{child_name}"
                if isinstance(child, nn.modules.conv._ConvNd):
                    # the activation right after the conv (possibly after a norm), else the conv itself
                    pick = full
                    for later_name, later in items[i + 1 : i + 3]:
                        if isinstance(later, nn.modules.conv._ConvNd):
                            break
                        if isinstance(later, _ACTIVATIONS):
                            pick = f"{prefix}{later_name}"
                            break
                    if spatial(pick) and pick not in names:
                        names.append(pick)
            return
        for child_name, child in children:
            full = f"{prefix}{child_name}"
            if not _is_block(child):
                continue
            grand_blocks = any(_is_block(g) for g in child.children())
            expandable = isinstance(child, (nn.Sequential, nn.ModuleList)) and (grand_blocks or _is_conv_stack(child))
            if expandable:
                visit(full + ".", child, False)
            elif spatial(full):
                names.append(full)

    visit("", model, True)
    if not names:  # no blocks: every spatial activation, else every spatial conv
        acts = [n for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS) and spatial(n)]
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and spatial(n)]
        names = acts or convs
    order = list(produced)
    return sorted(names, key=order.index)


# ---------------------------------------------------------------- table


def layer_table(model: nn.Module, input_size: int) -> list[LayerInfo]:
    """Every module that produces a 2-D or 4-D tensor, in execution order, with shapes and fields."""
    if input_size < 8:
        raise ScopeError(f"input size {input_size} is too small (at least 8 pixels)")
    produced: dict[str, tuple] = {}
    fields: dict[str, object] = {}
    kinds: dict[str, str] = {}
    handles = []

    def hook_for(name):
        def hook(module, inputs, output):
            if name in produced:
                return
            tensor = next(_tensors(output), None)
            if tensor is None or tensor.dim() not in (2, 4):
                return
            produced[name] = tuple(tensor.shape)
            fields[name] = getattr(tensor, _ATTR, None)
            kinds[name] = type(module).__name__

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    setattr(x, _ATTR, _RF((1, 1), (1, 1), (0, 0)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _FieldTracker():
            model(x)
    except ScopeError:
        raise
    except Exception as exc:  # a model that cannot run at this size
        raise ScopeError(f"the model does not run on {input_size}x{input_size} inputs: {exc}".splitlines()[0]) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    defaults = set(_default_names(model, produced))
    table = []
    for name, shape in produced.items():
        channels = shape[1]
        height, width = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
        size, stride, start = _rf_ints(fields[name], input_size)
        table.append(LayerInfo(name, kinds[name], channels, height, width, size, stride, start, name in defaults))
    return table


def default_layers(model: nn.Module, input_size: int) -> list[str]:
    """The Microscope-like default layer set: block outputs, or conv+activation outputs of plain stacks."""
    return [info.name for info in layer_table(model, input_size) if info.default]


def find_layer(table: list[LayerInfo], name: str) -> LayerInfo:
    """The table row for a layer name, or a one-line error with suggestions."""
    for info in table:
        if info.name == name:
            return info
    names = [info.name for info in table]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `scope layers MODEL` lists them"
    raise ScopeError(f"unknown layer '{name}'{hint}")
