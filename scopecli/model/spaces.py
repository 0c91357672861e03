"""Unit spaces on the model side: capturing `BASE@SPACE` captures BASE and encodes it at every position.

Why bound to the module: render and collect reach a model through several functions (layer tables,
layouts at a render size, the truncated-forward tap), each taking the module. A unit space read from the
artifact is bound to the module for the run (`attach_spaces`), and each of them then treats `BASE@SPACE` as
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

import os

import torch

from scopecli.errors import ScopeError
from scopecli.model import adapter
from scopecli.records import LayerLayout, UnitSpace, space_layout
from scopecli.units import split_space

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


def unbind_spaces(module) -> None:
    if _ATTR in module.__dict__:
        object.__delattr__(module, _ATTR)


def resolve_space(module, name: str) -> BoundSpace:
    """The bound space of layer name `BASE@SPACE`, or a one-line error that says where spaces come from."""
    spaces = bound_spaces(module)
    if name in spaces:
        return spaces[name]
    base, space = split_space(name)
    raise ScopeError(f"layer {name} is a unit space, and none of that name is loaded: render and collect read "
                     f"spaces from the output artifact (-o); fit one there first, e.g. scope decompose OUT.h5 "
                     f"--layer {base} --method pca --k 32 --name {space}")


def load_spaces(path, names, fingerprint: str | None = None) -> list[BoundSpace]:
    """The unit spaces named among `names` (layer names; plain layers are skipped), read from artifact `path`.

    A space must exist there first (`scope decompose`); another model's artifact is refused."""
    wanted = [n for n in dict.fromkeys(names or []) if split_space(n)[1] is not None]
    if not wanted:
        return []
    from scopecli.artifact import open_artifact

    if path is None or not os.path.exists(path):
        first = wanted[0]
        raise ScopeError(f"layer {first} is a unit space, but {path or 'the output artifact'} does not exist: fit the "
                         f"space first with scope decompose, then render or collect into that file with -o")
    out = []
    with open_artifact(path) as art:
        if fingerprint is not None and art.fingerprint != fingerprint:
            raise ScopeError(f"{path} holds another model ({art.model.get('spec', '?')}); its unit spaces do not "
                             "apply to this one")
        for name in wanted:
            base, space = split_space(name)
            if name not in art.layers or art.element_group(name, "space") is None:
                have = [s["name"] for s in art.spaces]
                hint = f" (it has {', '.join(have[:6])})" if have else ""
                raise ScopeError(f"no unit space {name} in {path}{hint}; fit it first: scope decompose {path} "
                                 f"--layer {base} --method pca --k 32 --name {space}")
            sp = art.space(name)
            base_layout = art.layer(base).effective_layout if base in art.layers else None
            if base_layout is None:
                raise ScopeError(f"{path}: unit space {name} sits on layer {base}, which the file does not hold")
            out.append(BoundSpace(sp, base_layout))
    return out


def attach_spaces(loaded, path, names) -> list[str]:
    """Bind to `loaded.module` the unit spaces named among `names`, read from artifact `path`; returns their names."""
    spaces = load_spaces(path, names, loaded.fingerprint)
    if spaces:
        bind_spaces(loaded.module, spaces)
    return [s.name for s in spaces]


def check_base_layout(bound: BoundSpace, live: LayerLayout) -> None:
    """Refuse a space whose stored base layout disagrees with the model's (the model changed since the fit)."""
    old = bound.base_layout
    if (old.kind, tuple(old.perm), old.prefix) != (live.kind, tuple(live.perm), live.prefix):
        raise ScopeError(f"unit space {bound.name}: layer {bound.base} is stored as {old.describe()} but the model "
                         f"gives {live.describe()}; the model changed since the space was fitted")
