"""The one layer adapter: a layer's output tensor -> units x positions, whatever its layout.

Why one place: channels-first grids, channels-last grids (Swin, ConvNeXt internals), token sequences
with class/register tokens (ViT, CLIP) and vectors all reach render, collect and the rest as the same
canonical views, so no other module assumes (N, C, H, W). Layouts come from tracing the model
(`model/receptive.py`), not from names.

    grid(t, layout)    -> (N, C, rows, cols) for grid layouts, (N, C) for vectors (prefix tokens dropped)
    units(t, layout)   -> (N, C, P): P positions in row-major grid order (1 for vectors)
    prefix(t, layout)  -> (N, C, prefix): the class/register tokens of a token layer
"""

from __future__ import annotations

import torch

from scopecli.core.errors import ScopeError
from scopecli.model.receptive import tensors
from scopecli.core.records import LayerLayout


def canonical(t: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """The output with its dims in (batch, channel, spatial...) order (a view when possible)."""
    if t.dim() != len(layout.perm):
        raise ScopeError(f"layer output has {t.dim()} dimensions; its recorded layout ({layout.kind}) has "
                         f"{len(layout.perm)}: the model changed since the layout was traced")
    return t.permute(*layout.perm) if tuple(layout.perm) != tuple(range(t.dim())) else t


def grid(t: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """(N, C, rows, cols) of grid positions, or (N, C) for a vector layer."""
    x = canonical(t, layout)
    n, c = x.shape[0], x.shape[1]
    if layout.kind == "vector":
        return x.reshape(n, c)
    if layout.kind == "tokens":
        x = x[:, :, layout.prefix:]
    return x.reshape(n, c, layout.grid[0], layout.grid[1])


def units(t: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """(N, C, P): every unit's value at every grid position (P = 1 for vectors)."""
    g = grid(t, layout)
    return g.unsqueeze(2) if g.dim() == 2 else g.flatten(2)


def prefix(t: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """(N, C, k): the k class/register tokens of a token layer (k = 0 otherwise)."""
    x = canonical(t, layout)
    if layout.kind != "tokens":
        return x.new_zeros(x.shape[0], x.shape[1], 0)
    return x[:, :, : layout.prefix]


def module_tensor(output, layer: str = "") -> torch.Tensor:
    """The tensor a module's output stands for: the output itself, or the first tensor of a tuple / list /
    dict (e.g. an attention module's (output, weights)); a layer with no tensor output is refused."""
    if isinstance(output, torch.Tensor):
        return output
    first = next(tensors(output), None)
    if first is None:
        raise ScopeError(f"layer {layer or '?'} returns {type(output).__name__}, which holds no tensor; pick another layer")
    return first


def replace_tensor(output, old: torch.Tensor, new: torch.Tensor):
    """A module's output with its tensor `old` replaced by `new` (what a forward hook returns to substitute it):
    the tensor itself, or the same tuple/list with that element swapped."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, (tuple, list)):
        items = [new if x is old else x for x in output]
        return type(output)(items) if isinstance(output, tuple) else items
    raise ScopeError("this needs a layer whose output is a tensor or a tuple/list of tensors")


def output_note(output) -> str | None:
    """For `scope layers`: which element of a non-tensor output is used (None for a plain tensor)."""
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(output, (list, tuple)):
        i = next((i for i, x in enumerate(output) if isinstance(x, torch.Tensor)), None)
        return None if i is None else f"element {i} of a {type(output).__name__}"
    if isinstance(output, dict):
        k = next((k for k, x in output.items() if isinstance(x, torch.Tensor)), None)
        return None if k is None else f"key {k!r} of a dict"
    return None
