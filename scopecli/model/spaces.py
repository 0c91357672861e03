"""Unit spaces on the model side: capturing `BASE@SPACE` captures BASE and encodes it at every position.

Why bound to the module: render and collect reach a model through several functions (layer tables,
layouts at a render size, the truncated-forward tap), each taking the module. A unit space read from the
artifact is handed to the model layer and bound to the module for the run (`bind_spaces`; reading it from
the file is the job's part, `jobs.bind`), and each of them then treats `BASE@SPACE` as
a layer of k units on BASE's grid: the tap hooks BASE and hands back z = f(W (x - b_pre) + b) per position
in the space's layout (channels first; a token sequence without class tokens; a vector), so renders,
examples, statistics, probes and heatmaps of z come from the same code as those of channels. The binding
is a plain attribute, not a submodule: the model's state dict and fingerprint are unchanged.

While rendering (gradients on), relu and topk spaces pass gradients straight through to the
pre-activation: z itself is unchanged, but a latent that is zero on the starting image (a negative
pre-activation, or outside the top k) still gets a gradient that raises it, where the true gradient
would be zero and the render would never start (Lucid's redirected-ReLU problem, for a sparse code).
"""

from __future__ import annotations

import torch

from scopecli.core.errors import ScopeError
from scopecli.model import adapter
from scopecli.core.records import LayerLayout, UnitSpace, space_layout
from scopecli.core.units import split_space

_ATTR = "_scope_unit_spaces"


class BoundSpace:
    """A unit space ready to run on one model: the encoder as tensors (moved to each device once)."""

    def __init__(self, space: UnitSpace, base_layout: LayerLayout):
        self.space = space
        self.name = space.layer
        self.base = space.base
        self.base_layout = base_layout
        self.layout = space_layout(base_layout)
        self._weights = {
            "encoder": torch.from_numpy(space.encoder.astype("float32")),
            "pre_bias": torch.from_numpy(space.pre_bias.astype("float32")),
            "bias": torch.from_numpy(space.bias.astype("float32")),
            "decoder": torch.from_numpy(space.decoder.astype("float32")),
        }
        self._on: dict = {}

    @property
    def k(self) -> int:
        return self.space.k

    def weights(self, device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            self._on[key] = {k: v.to(device) for k, v in self._weights.items()}
        return self._on[key]

    def canonical_base(self, raw: torch.Tensor) -> torch.Tensor:
        """BASE's output as (N, C, positions...) with class tokens dropped: what the encoder reads."""
        x = adapter.canonical(raw, self.base_layout)
        if self.base_layout.kind == "tokens":
            x = x[:, :, self.base_layout.prefix:]
        return x

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        """z (N, k, positions...) from BASE's raw output (any layout), in the space's layout."""
        return self.encode_canonical(self.canonical_base(raw))

    def encode_canonical(self, x: torch.Tensor) -> torch.Tensor:
        """z (N, k, ...) from activations (N, C, ...) with channels on dim 1."""
        w = self.weights(x.device)
        c = w["encoder"].shape[1]
        if x.shape[1] != c:
            raise ScopeError(f"unit space {self.name} reads {c} channels; the layer gives {x.shape[1]}")
        xs = x.float().movedim(1, -1) - w["pre_bias"]
        h = xs @ w["encoder"].T + w["bias"]
        nl = self.space.nonlinearity
        if nl != "none":
            z = h.clamp(min=0) if nl == "relu" else self._topk(h)
            # rendering: z forward, the pre-activation's gradient backward (straight-through), so a latent
            # that is zero on the starting image (negative, or outside the top k) still gets pushed up
            h = h + (z - h).detach() if h.requires_grad else z
        return h.movedim(-1, 1)

    def _topk(self, h: torch.Tensor) -> torch.Tensor:
        vals, idx = h.detach().topk(min(self.space.k_active, h.shape[-1]), dim=-1)
        return torch.zeros_like(h).scatter(-1, idx, vals.clamp(min=0))

    def direction(self, unit: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder row of `unit` [C], pre_bias [C]): the unit's direction in BASE and where it starts."""
        w = self.weights(device)
        return w["decoder"][unit], w["pre_bias"]


def bound_spaces(module) -> dict[str, BoundSpace]:
    """The unit spaces bound to a module ({BASE@SPACE: BoundSpace}; empty when none)."""
    return getattr(module, _ATTR, None) or {}


def bind_spaces(module, spaces) -> None:
    """Bind unit spaces (BoundSpace, or {name: BoundSpace}) to a module, next to those already bound."""
    items = spaces.values() if isinstance(spaces, dict) else spaces
    merged = dict(bound_spaces(module))
    for sp in items:
        merged[sp.name] = sp
    object.__setattr__(module, _ATTR, merged)


def resolve_space(module, name: str) -> BoundSpace:
    """The bound space of layer name `BASE@SPACE`, or a one-line error that says where spaces come from."""
    spaces = bound_spaces(module)
    if name in spaces:
        return spaces[name]
    base, space = split_space(name)
    raise ScopeError(f"layer {name} is a unit space, and none of that name is loaded: render and collect read "
                     f"spaces from the output artifact (-o); fit one there first, e.g. scope decompose OUT.h5 "
                     f"--layer {base} --method pca --k 32 --name {space}")


def check_base_layout(bound: BoundSpace, live: LayerLayout) -> None:
    """Refuse a space whose stored base layout disagrees with the model's (the model changed since the fit)."""
    old = bound.base_layout
    if (old.kind, tuple(old.perm), old.prefix) != (live.kind, tuple(live.perm), live.prefix):
        raise ScopeError(f"unit space {bound.name}: layer {bound.base} is stored as {old.describe()} but the model "
                         f"gives {live.describe()}; the model changed since the space was fitted")
