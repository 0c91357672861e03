"""Addressable layers of any PyTorch model: names, output shapes, receptive fields, default set.

Layers are PyTorch's dotted module names. One forward pass at the model's input size records each
module's output shape and, traced by model/receptive.py, its receptive field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from scopecli.core.errors import ScopeError
from scopecli.core.fileio import did_you_mean
from scopecli.model.inputspec import input_channels
from scopecli.model import adapter
from scopecli.model.capture import LAYERS_HINT, LayerTap, get_module
from scopecli.model.receptive import annotation, field_ints, layout_of, tensors, tracing
from scopecli.model.spaces import check_base_layout, resolve_space
from scopecli.core.records import LayerLayout, LayerRecord, space_layout
from scopecli.core.units import split_space

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
    """One addressable layer: its units, position grid and layout at the model's input size, and the
    receptive field of its positions (see `LayerLayout.field` for what the numbers are)."""

    name: str
    kind: str
    channels: int
    height: int
    width: int
    rf_size: int
    rf_stride: int
    rf_start: int
    default: bool = False
    layout: LayerLayout | None = None
    output: str | None = None  # which element of a tuple/dict output is used (None: a plain tensor)
    measured: bool = False  # a "measured" field whose rf_* numbers are the gradient support (not yet: whole input)

    def record(self) -> LayerRecord:
        return LayerRecord(
            name=self.name,
            units=self.channels,
            shape=(self.channels, self.height, self.width),
            rf_size=self.rf_size,
            rf_stride=self.rf_stride,
            rf_start=self.rf_start,
            layout=self.layout,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        lay = self.layout
        d["layout"] = None if lay is None else {
            "kind": lay.kind, "grid": list(lay.grid), "prefix_tokens": lay.prefix, "field": lay.field,
            "global_context": lay.global_context, "axes": list(lay.perm)}
        return d


# ---------------------------------------------------------------- default layer set


def _is_block(module: nn.Module) -> bool:
    return any(True for _ in module.children()) and not isinstance(module, _LAYER_TYPES + _ACTIVATIONS)


def _is_conv_stack(module: nn.Module) -> bool:
    """A container of plain layers holding several convolutions (VGG/AlexNet `features`)."""
    children = list(module.children())
    convs = sum(isinstance(c, nn.modules.conv._ConvNd) for c in children)
    return convs >= 2 and not any(_is_block(c) for c in children)


@dataclass
class _Seen:
    """What one forward told about a module: its output's shape, layout, annotation, identity."""

    kind: str
    shape: tuple
    layout: LayerLayout | None
    ann: object
    passthrough: bool  # returns the very tensor a descendant made (a Sequential, a wrapper that only runs
    output: str | None  # its children in turn) rather than computing its own (a residual add, a concat)


def _passthrough(name: str, seen: dict[str, _Seen]) -> bool:
    me = seen.get(name)
    return me is not None and me.passthrough


def _default_names(model: nn.Module, seen: dict[str, _Seen]) -> list[str]:
    """Microscope's choice, by structure: the outputs of a model's blocks (expanding stacks of blocks and
    wrappers that only run a stack of blocks), conv+activation outputs of plain conv stacks, and for
    token blocks (ViT) also the MLP's hidden activation (the "neurons")."""
    names: list[str] = []
    modules = dict(model.named_modules())

    def addressable(name: str) -> bool:
        s = seen.get(name)
        return s is not None and s.layout is not None and s.layout.kind != "vector"

    def deep(module: nn.Module) -> bool:
        """A block made of blocks (a residual unit, an attention layer), not of plain layers."""
        return _is_block(module) and any(_is_block(g) for g in module.children())

    def wrapper_stack(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]] | None:
        """The stack of deep blocks a pure wrapper runs in turn (ViT's encoder, MaxViT's blocks and layers)."""
        if not _passthrough(prefix, seen):
            return None
        for child_name, child in module.named_children():
            kids = list(child.named_children())
            if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(kids) >= 2 and all(deep(m) for _, m in kids):
                return [(f"{prefix}.{child_name}.{n}", m) for n, m in kids]
        return None

    def take(full: str, child: nn.Module) -> None:
        stack = wrapper_stack(full, child)
        if stack:
            for n, m in stack:
                take(n, m)
        elif addressable(full):
            names.append(full)

    def visit(prefix: str, module: nn.Module):
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
                    if addressable(pick) and pick not in names:
                        names.append(pick)
            return
        for child_name, child in children:
            full = f"{prefix}{child_name}"
            if not _is_block(child):
                continue
            grand_blocks = any(_is_block(g) for g in child.children())
            expandable = isinstance(child, (nn.Sequential, nn.ModuleList)) and (grand_blocks or _is_conv_stack(child))
            if expandable:
                visit(full + ".", child)
            else:
                take(full, child)

    visit("", model)
    if not names:  # no blocks: every addressable activation, else every addressable conv
        acts = [n for n, m in modules.items() if isinstance(m, _ACTIVATIONS) and addressable(n)]
        convs = [n for n, m in modules.items() if isinstance(m, nn.modules.conv._ConvNd) and addressable(n)]
        names = acts or convs
    hidden = []
    for block in names:  # a transformer block's MLP hidden units: wider token activations inside it
        lay = seen[block].layout
        if lay.kind != "tokens":
            continue
        width = seen[block].shape[lay.perm[1]]
        for n, m in modules.items():
            s = seen.get(n)
            if n.startswith(block + ".") and isinstance(m, _ACTIVATIONS) and s is not None and s.layout is not None \
                    and s.layout.kind == "tokens" and s.shape[s.layout.perm[1]] > width:
                hidden.append(n)
    order = list(seen)
    return sorted(set(names) | set(hidden), key=order.index)


# ---------------------------------------------------------------- table


MEASURE_BATCH = 8  # layers measured together: one backward for this many layers


def _gates_held():
    """During measurement, global reductions (squeeze-excitation's pooling) pass no gradient: the field
    measured is the local one, as the tracer reports it."""
    class Hold(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if isinstance(out, torch.Tensor) and out.dim() == 4 and tuple(out.shape[-2:]) == (1, 1) and args \
                    and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 and args[0].shape[-1] > 1 \
                    and (name.startswith("adaptive_") or name in ("mean", "amax", "sum")):
                return out.detach()
            return out

    return Hold()


def measure_fields(model: nn.Module, infos: list[LayerInfo], input_size: int) -> dict[str, tuple[int, int, int]]:
    """(size, stride, start) of each layer's centre position, from the support of its input gradient.

    One backward measures several layers: batch row i carries a random combination of layer i's units at
    its centre position, so row i's input gradient is exactly that position's dependence (eval mode keeps
    rows independent). The field is then the bounding box of the nonzero gradient, clipped to the input.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    out: dict[str, tuple[int, int, int]] = {}
    was_training = model.training
    model.eval()
    try:
        for k in range(0, len(infos), MEASURE_BATCH):
            chunk = infos[k : k + MEASURE_BATCH]
            x = torch.randn(len(chunk), input_channels(model), input_size, input_size, generator=g).to(device).requires_grad_(True)
            with torch.enable_grad(), _gates_held(), LayerTap(model, [i.name for i in chunk]) as tap:
                acts = tap(x)
                loss = x.new_zeros(())
                for row, info in enumerate(chunk):
                    view = adapter.grid(acts[info.name], info.layout).float()
                    cy, cx = info.height // 2, info.width // 2
                    weights = torch.randn(view.shape[1], generator=g).to(device)
                    loss = loss + (view[row, :, cy, cx] * weights).sum()
                (grad,) = torch.autograd.grad(loss, [x])
            for row, info in enumerate(chunk):
                support = grad[row].abs().sum(0) > 0
                ys, xs = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
                stride = max(1, round(input_size / max(info.height, info.width, 1)))
                if ys.numel() == 0:
                    out[info.name] = (0, stride, 0)
                    continue
                y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
                size = max(y1 - y0, x1 - x0)
                start = min(y0 - (info.height // 2) * stride, x0 - (info.width // 2) * stride)
                out[info.name] = (size, stride, start)
    finally:
        model.train(was_training)
    return out


class _Enough(Exception):
    """Every layer a partial trace needed has run."""


def _trace(model: nn.Module, input_size: int, until=None) -> dict[str, _Seen]:
    """One traced forward at this input size (2 images), hooks on every module; `until` (layer names):
    stop once they have all run, so nothing after them runs."""
    until = set(until) if until else None
    seen: dict[str, _Seen] = {}
    handles = []
    last: list = [None, ""]  # the output of the module whose hook fired last (hooks fire children first)

    def hook_for(name):
        def hook(module, inputs, output):
            tensor = next(tensors(output), None)
            if tensor is None or name in seen:
                return
            ann = annotation(tensor)
            passthrough = tensor is last[0] and last[1].startswith(name + ".")
            seen[name] = _Seen(type(module).__name__, tuple(tensor.shape), layout_of(ann, tensor), ann, passthrough,
                               adapter.output_note(output))
            last[0], last[1] = tensor, name
            if until is not None and until <= seen.keys():
                raise _Enough

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(2, input_channels(model), input_size, input_size, device=device)  # two images: the batch axis stays visible
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracing(x):
            model(x)
    except _Enough:
        pass
    except ScopeError:
        raise
    except Exception as exc:  # a model that cannot run at this size
        raise ScopeError(f"the model does not run on {input_size}x{input_size} inputs: {exc}".splitlines()[0]) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def layer_table(model: nn.Module, input_size: int, measure=None) -> list[LayerInfo]:
    """Every module whose output maps to units x positions, in execution order, with layout and field.

    Fields the tracer cannot follow (windowed attention, cyclic shifts, unknown ops) are measured from the
    gradient support of a centre position for the default layers and for the layers named in `measure`
    ("all": every such layer); the others report the whole input until measured (`ensure_measured`).
    """
    if input_size < 8:
        raise ScopeError(f"input size {input_size} is too small (at least 8 pixels)")
    seen = _trace(model, input_size)
    defaults = set(_default_names(model, seen))
    table = []
    for name, s in seen.items():
        if s.layout is None:
            continue
        lay = s.layout
        channels = s.shape[lay.perm[1]]
        size, stride, start = field_ints(s.ann, lay, input_size)
        table.append(LayerInfo(name, s.kind, int(channels), int(lay.grid[0]), int(lay.grid[1]), size, stride, start,
                               name in defaults, lay, s.output))
    wanted = {i.name for i in table if i.default}
    if measure == "all":
        wanted = {i.name for i in table}
    elif measure:
        wanted |= set(measure)
    return ensure_measured(model, table, input_size, wanted)


def ensure_measured(model: nn.Module, table: list[LayerInfo], input_size: int, names) -> list[LayerInfo]:
    """The table with the measured fields of these layers filled in (others as they are)."""
    names = set(names)
    todo = [i for i in table if i.name in names and i.layout.field == "measured" and not i.measured]
    if not todo:
        return table
    fields = measure_fields(model, todo, input_size)
    out = []
    for info in table:
        if info.name in fields:
            size, stride, start = fields[info.name]
            info = replace(info, rf_size=size, rf_stride=stride, rf_start=start, measured=True)
        out.append(info)
    return out


def layouts_at(model: nn.Module, input_size: int, names) -> dict[str, LayerLayout]:
    """The layouts of some layers at an input size (token grids depend on it); one traced forward, no
    measuring. A model that cannot take this size, or a layer that is not units x positions, is refused.
    A unit space `BASE@SPACE` bound to the model gets the space layout on BASE's grid."""
    names = list(names)
    spaces = {n: resolve_space(model, n) for n in names if split_space(n)[1] is not None}
    bases = list(dict.fromkeys(spaces[n].base if n in spaces else n for n in names))
    for name in bases:
        get_module(model, name)  # unknown names get the usual hint
    seen = _trace(model, input_size, until=bases)
    out = {}
    for name in bases:
        s = seen.get(name)
        if s is None:
            raise ScopeError(f"layer {name} produced no tensor at {input_size}x{input_size} inputs")
        if s.layout is None:
            raise ScopeError(f"layer {name} has an output of shape {tuple(s.shape)} that scope cannot map to units x "
                             "positions; pick another layer (`scope layers MODEL` lists them)")
        out[name] = s.layout
    for name, sp in spaces.items():
        check_base_layout(sp, out[sp.base])
        out[name] = space_layout(out[sp.base])
    return {n: out[n] for n in dict.fromkeys(names + bases)}


def select_layers(model: nn.Module, input_size: int, names=None, hint: str = "pass --layer NAME") -> list[LayerInfo]:
    """The layers a command works on: `names` (in that order, unknown ones refused with a hint) or the
    default set, with their fields measured where the tracer could not follow them. A unit space
    `BASE@SPACE` bound to the model (`model.spaces.bind_spaces`) is a layer of k units on BASE's grid."""
    spaces = {n: resolve_space(model, n) for n in (names or []) if split_space(n)[1] is not None}
    bases = [spaces[n].base if n in spaces else n for n in names] if names else None
    table = layer_table(model, input_size, measure=list(dict.fromkeys(bases)) if bases else None)
    names = list(dict.fromkeys(names)) if names else [i.name for i in table if i.default]
    if not names:
        raise ScopeError(f"the model has no default layers; {hint}")
    return [space_info(find_layer(table, spaces[n].base), spaces[n]) if n in spaces else find_layer(table, n)
            for n in names]


def space_info(base: LayerInfo, space) -> LayerInfo:
    """The LayerInfo of a bound unit space on layer `base`: k units, BASE's grid and field, the space layout."""
    if space.space.width != base.channels:
        raise ScopeError(f"unit space {space.name} reads {space.space.width} channels, but layer {base.name} has "
                         f"{base.channels}")
    check_base_layout(space, base.layout)
    return replace(base, name=space.name, kind="unit space", channels=space.k, default=False,
                   layout=space_layout(base.layout), output=None)


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
