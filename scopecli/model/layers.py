"""Addressable layers of any PyTorch model: names, output shapes, receptive fields, default set.

Layers are PyTorch's dotted module names. One forward pass at the model's input size records each
module's output shape and, traced by model/receptive.py, its receptive field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from scopecli.errors import ScopeError
from scopecli.fileio import did_you_mean
from scopecli.model.receptive import field_ints, field_of, tensors, tracing_fields
from scopecli.records import LayerRecord

LAYERS_HINT = "`scope layers MODEL` lists them"

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
    raise ScopeError(f"unknown layer '{name}'" + did_you_mean(name, names, listing=LAYERS_HINT))


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
            tensor = next(tensors(output), None)
            if tensor is None or tensor.dim() not in (2, 4):
                return
            produced[name] = tuple(tensor.shape)
            fields[name] = field_of(tensor)
            kinds[name] = type(module).__name__

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracing_fields(x):
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
        size, stride, start = field_ints(fields[name], input_size)
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
    raise ScopeError(f"unknown layer '{name}'" + did_you_mean(name, names, listing=LAYERS_HINT))
