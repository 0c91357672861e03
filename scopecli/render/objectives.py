"""Objectives: per-sample scores to maximize, as composable values.

An `Objective` maps the captured activations {layer: tensor with the batch first} to a vector with one
score per batch row. Objectives add, subtract, negate and scale (`channel(...) - 0.5 * diversity(...)`),
so the engine optimizes the SUM of per-row scores: since each row's score depends only on its own image
(diversity couples only the rows of one unit's group, which always share a batch), a unit renders the
same alone or in any batch. The built-ins are vectorized over rows: a batch where every row has its own
unit (even of different layers) costs one gather per layer, not one op per row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scopecli.errors import ScopeError

OBJECTIVES = ("channel", "neuron", "negative", "deepdream")


class Objective:
    """A per-row score: `obj(acts) -> Tensor[batch]` (float32). Compose with +, -, unary -, * float."""

    layers: tuple[str, ...] = ()

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum((self, other))

    __radd__ = __add__  # so sum([...]) works

    def __neg__(self):
        return Scaled(self, -1.0)

    def __sub__(self, other):
        return self + (-other)

    def __mul__(self, factor):
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return Scaled(self, float(factor))

    __rmul__ = __mul__


class Sum(Objective):
    def __init__(self, parts):
        flat = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, Sum) else [part])
        self.parts = tuple(flat)
        self.layers = tuple(dict.fromkeys(layer for part in self.parts for layer in part.layers))

    def __call__(self, acts):
        total = self.parts[0](acts)
        for part in self.parts[1:]:
            total = total + part(acts)
        return total

    def __repr__(self):
        return " + ".join(repr(p) for p in self.parts)


class Scaled(Objective):
    def __init__(self, inner: Objective, factor: float):
        self.inner, self.factor = inner, factor
        self.layers = inner.layers

    def __call__(self, acts):
        return self.inner(acts) * self.factor

    def __repr__(self):
        return f"{self.factor:g} * ({self.inner!r})"


def _rows(rows, batch: int) -> torch.Tensor:
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= batch):
        raise ScopeError(f"objective rows {rows.tolist()} do not fit a batch of {batch}")
    return rows


def _scatter(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    values = values.float()
    out = values.new_zeros(batch)
    return out.index_add(0, rows, values)


class _DeviceCache:
    """Index tensors moved to the activations' device once, not once per step (no host sync)."""

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_device_cache", {})
        key = (name, str(device))
        if key not in cache:
            cache[key] = getattr(self, name).to(device)
        return cache[key]


class UnitScore(Objective, _DeviceCache):
    """channel / neuron / deepdream score of given units in given rows (zero in the other rows).

    channel: the unit's mean over all spatial positions; neuron: its value at the center position;
    deepdream: the mean squared activation of the whole layer (units ignored). For layers with vector
    outputs (N, C), channel and neuron are the unit's value.
    """

    def __init__(self, kind: str, layer: str, rows, units, batch: int):
        if kind not in ("channel", "neuron", "deepdream"):
            raise ScopeError(f"unknown objective '{kind}': choose one of {', '.join(OBJECTIVES)}")
        self.kind, self.layer, self.batch = kind, layer, batch
        self.rows = _rows(rows, batch)
        self.units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        if kind != "deepdream" and self.units.shape != self.rows.shape:
            raise ScopeError("objective needs one unit per row")
        self.layers = (layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        rows = self._on("rows", a.device)
        if self.kind == "deepdream":
            values = a[rows].float().pow(2).flatten(1).mean(dim=1)
            return _scatter(values, rows, self.batch)
        if self.units.numel() and int(self.units.max()) >= a.shape[1]:
            raise ScopeError(f"unit {int(self.units.max())} is out of range: {self.layer} has units 0..{a.shape[1] - 1}")
        units = self._on("units", a.device)
        picked = a[rows, units]  # (n, *spatial)
        if picked.dim() == 1:
            values = picked
        elif self.kind == "channel":
            values = picked.float().flatten(1).mean(dim=1)
        else:  # neuron: center position
            idx = tuple(s // 2 for s in picked.shape[1:])
            values = picked[(slice(None),) + idx]
        return _scatter(values, rows, self.batch)

    def __repr__(self):
        return f"{self.kind}({self.layer}, rows={self.rows.tolist()}, units={self.units.tolist()})"


def channel(layer: str, unit: int, row: int = 0, batch: int = 1) -> UnitScore:
    """Mean activation of channel `unit` of `layer` in batch row `row`."""
    return UnitScore("channel", layer, [row], [unit], batch)


def neuron(layer: str, unit: int, row: int = 0, batch: int = 1) -> UnitScore:
    """Activation of channel `unit` at the center position."""
    return UnitScore("neuron", layer, [row], [unit], batch)


def deepdream(layer: str, row: int = 0, batch: int = 1) -> UnitScore:
    """Mean squared activation of the whole layer (DeepDream)."""
    return UnitScore("deepdream", layer, [row], [], batch)


class Diversity(Objective, _DeviceCache):
    """Minus the mean cosine similarity of each row's Gram matrix to the others' in its group.

    Groups are the K images of one unit (`--diversity K`); a row's score is
    -weight * scale_g * mean_{j != i} cos(G_i, G_j), where G is the channel Gram matrix of `layer` and
    scale_g the (detached) mean |score| of the group's main objective, so the weight is relative to
    how strongly the unit fires rather than to the layer's arbitrary activation scale.
    """

    def __init__(self, layer: str, groups: list[list[int]], batch: int, weight: float = 1.0,
                 reference: Objective | None = None):
        self.layer, self.batch, self.weight, self.reference = layer, batch, float(weight), reference
        self.groups = [list(g) for g in groups if len(g) > 1]
        for i, g in enumerate(self.groups):
            setattr(self, f"group{i}", torch.tensor(g, dtype=torch.long))
        self.layers = (layer,)

    def __call__(self, acts):
        a = acts[self.layer].float()
        out = a.new_zeros(self.batch)
        if not self.groups:
            return out
        ref = self.reference(acts).detach().abs() if self.reference is not None else None
        for i, group in enumerate(self.groups):
            rows = self._on(f"group{i}", a.device)
            feats = a[rows]
            if feats.dim() == 2:
                feats = feats[:, :, None]
            feats = feats.flatten(2)  # (K, C, P)
            grams = torch.bmm(feats, feats.transpose(1, 2)).flatten(1)
            grams = F.normalize(grams, dim=1, eps=1e-10)
            sim = grams @ grams.T
            k = len(group)
            others = (sim.sum(dim=1) - sim.diagonal()) / (k - 1)
            scale = ref[rows].mean() if ref is not None else 1.0
            out = out.index_add(0, rows, -self.weight * scale * others)
        return out


@dataclass(frozen=True)
class RenderTarget:
    """One image to render: a unit of a layer (unit -1 for deepdream) under an objective."""

    layer: str
    unit: int
    objective: str = "channel"
    diversity_index: int = 0


def batch_objectives(targets: list[RenderTarget], diversity_weight: float = 1.0) -> tuple[Objective, Objective]:
    """(loss objective, measure) for a batch whose row i renders targets[i].

    The measure is what the records report as the unit's activation: the channel mean for channel and
    negative objectives (the latter is minimized), the center value for neuron, the mean square for
    deepdream. The objective is the measure with negative rows negated, plus a diversity term when a
    unit has several images in the batch.
    """
    batch = len(targets)
    by_kind: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row, t in enumerate(targets):
        if t.objective not in OBJECTIVES:
            raise ScopeError(f"unknown objective '{t.objective}': choose one of {', '.join(OBJECTIVES)}")
        base = "channel" if t.objective == "negative" else t.objective
        by_kind[(base, t.layer)].append(row)
    measure_parts = [
        UnitScore(base, layer, rows, [targets[r].unit for r in rows] if base != "deepdream" else [], batch)
        for (base, layer), rows in by_kind.items()
    ]
    measure = sum(measure_parts)
    sign = torch.tensor([-1.0 if t.objective == "negative" else 1.0 for t in targets])
    objective: Objective = _Signed(measure, sign)
    groups: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    for row, t in enumerate(targets):
        groups[(t.layer, t.unit, t.objective)].append(row)
    by_layer: dict[str, list[list[int]]] = defaultdict(list)
    for (layer, _unit, _obj), rows in groups.items():
        if len(rows) > 1:
            by_layer[layer].append(rows)
    for layer, layer_groups in by_layer.items():
        objective = objective + Diversity(layer, layer_groups, batch, diversity_weight, reference=measure)
    return objective, measure


class _Signed(Objective, _DeviceCache):
    """Per-row sign flip (negative objective rows are minimized)."""

    def __init__(self, inner: Objective, sign: torch.Tensor):
        self.inner, self.sign = inner, sign
        self.layers = inner.layers

    def __call__(self, acts):
        values = self.inner(acts)
        return values * self._on("sign", values.device)
