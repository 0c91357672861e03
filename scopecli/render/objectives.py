"""Objectives: per-sample scores to maximize, as composable values, and the registry of objective kinds.

A kind (`--objective NAME`) is one decorated function that scores a batch of rows of a layer's
activations (the spirit of Lucid's `wrap_objective`):

    @objective("channel", "mean over positions")
    def channel_score(unit_acts):            # [rows, *spatial]: each row's own unit
        return unit_acts.float().flatten(1).mean(dim=1)

`per_layer=True` kinds get the whole layer's rows ([rows, C, *spatial]) and render one image per layer
(unit -1); `reads="direction"` kinds get the rows of the layer the unit's direction lives in, centred
([rows, C, *spatial] minus the space's pre_bias), and each row's direction ([rows, C]): a unit space's
decoder row (`BASE@SPACE:i` reads BASE), or the unit's own axis on a plain layer; `signed_objective` registers a kind that optimizes another kind's score times a sign (negative
is a minimized channel, measured as a channel). OBJECTIVES and `scope render --help` list the registry.

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
from typing import Callable

import torch
import torch.nn.functional as F

from scopecli.core.errors import ScopeError
from scopecli.core.units import split_space


@dataclass(frozen=True)
class ObjectiveKind:
    """A registered `--objective`: how it scores rows, what the records report, and its sign."""

    name: str
    score: Callable[[torch.Tensor], torch.Tensor]  # rows of a unit ([n, *spatial]) or a layer -> [n]
    help: str
    per_layer: bool = False  # scores the whole layer: one image per layer, unit -1
    measured_as: str | None = None  # the kind whose score the records report (None: this one)
    sign: float = 1.0  # the objective optimizes sign * score of `measured_as`
    reads: str = "unit"  # unit: the unit's rows; layer: the whole layer (per_layer); direction: see above

    @property
    def direction(self) -> bool:
        return self.reads == "direction"


OBJECTIVE_KINDS: dict[str, ObjectiveKind] = {}
OBJECTIVES = OBJECTIVE_KINDS.keys()  # every registered name, in registration order (a live view)


def objective(name: str, help: str, per_layer: bool = False, reads: str | None = None):
    """Register the decorated function as the score of objective kind `name` (`help`: a few words).

    reads: "unit" (default), "layer" (same as per_layer=True) or "direction" (score(acts, directions))."""
    reads = reads or ("layer" if per_layer else "unit")
    if reads not in ("unit", "layer", "direction"):
        raise ValueError(f"objective '{name}': reads must be unit, layer or direction")

    def register(score):
        _add_kind(ObjectiveKind(name, score, help, reads == "layer", reads=reads))
        return score

    return register


def signed_objective(name: str, of: str, help: str, sign: float = -1.0) -> None:
    """Register kind `name` as `sign` times kind `of` (records report `of`'s score)."""
    base = OBJECTIVE_KINDS[of]
    _add_kind(ObjectiveKind(name, base.score, help, base.per_layer, of, sign, base.reads))


def _add_kind(kind: ObjectiveKind) -> None:
    if kind.name in OBJECTIVE_KINDS:
        raise ValueError(f"objective '{kind.name}' is already registered")
    OBJECTIVE_KINDS[kind.name] = kind


def objective_kind(name: str) -> ObjectiveKind:
    """The registered kind `name`, or a one-line error listing the registered ones."""
    if name not in OBJECTIVE_KINDS:
        raise ScopeError(f"unknown objective '{name}': choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVE_KINDS[name]


def objectives_help() -> str:
    """'channel (mean over positions), neuron (…) or deepdream (…)': the registry for `--objective`'s help."""
    items = [f"{kind.name} ({kind.help})" for kind in OBJECTIVE_KINDS.values()]
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


@objective("channel", "mean over positions")
def channel_score(unit_acts: torch.Tensor) -> torch.Tensor:
    """The unit's mean over all spatial positions."""
    return unit_acts.float().flatten(1).mean(dim=1)


@objective("neuron", "center position")
def neuron_score(unit_acts: torch.Tensor) -> torch.Tensor:
    """The unit's value at the center position."""
    idx = tuple(s // 2 for s in unit_acts.shape[1:])
    return unit_acts[(slice(None),) + idx]


signed_objective("negative", of="channel", help="channel minimized")


@objective("deepdream", "mean square of the whole layer", per_layer=True)
def deepdream_score(layer_acts: torch.Tensor) -> torch.Tensor:
    """The mean squared activation of the whole layer (DeepDream)."""
    return layer_acts.float().pow(2).flatten(1).mean(dim=1)


COSSIM_POW = 2.0  # direction-cos: dot x cos^2 (Lucid's direction_neuron_cossim with cossim_pow=2, as in Activation Atlas)
COS_FLOOR = 0.1  # cos below this counts as 0.1, so an image that starts pointing away still gets a gradient


@objective("direction", "dot product with the unit's direction, mean over positions", reads="direction")
def direction_score(acts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """<x - pre_bias, d> at every position, averaged: d is a unit space's decoder row (Lucid's direction)."""
    x = acts.float().flatten(2) if acts.dim() > 2 else acts.float().unsqueeze(2)
    return torch.einsum("ncp,nc->np", x, directions.float()).mean(dim=1)


@objective("direction-cos", "dot x cos^2 with the unit's direction, mean over positions", reads="direction")
def direction_cos_score(acts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """dot * max(cos, 0.1)^2 at every position, averaged (Lucid's cossim variant): favours activations
    that point along the direction over ones that are merely large."""
    x = acts.float().flatten(2) if acts.dim() > 2 else acts.float().unsqueeze(2)
    d = directions.float()
    dot = torch.einsum("ncp,nc->np", x, d)
    cos = dot / (x.norm(dim=1) * d.norm(dim=1, keepdim=True) + 1e-8)
    return (dot * cos.clamp(min=COS_FLOOR) ** COSSIM_POW).mean(dim=1)


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
    """The score of a registered (unsigned) kind for given units in given rows (zero in the other rows).

    Per-layer kinds ignore the units. For layers with vector outputs (N, C), a per-unit kind's score is
    the unit's value.
    """

    def __init__(self, kind: str, layer: str, rows, units, batch: int):
        if kind not in OBJECTIVE_KINDS or OBJECTIVE_KINDS[kind].measured_as is not None:
            raise ScopeError(f"unknown objective '{kind}': choose one of {', '.join(OBJECTIVES)}")
        self.kind, self.layer, self.batch = kind, layer, batch
        self._score = OBJECTIVE_KINDS[kind]
        self.rows = _rows(rows, batch)
        self.units = torch.as_tensor(units, dtype=torch.long).reshape(-1)
        if not self._score.per_layer and self.units.shape != self.rows.shape:
            raise ScopeError("objective needs one unit per row")
        self.layers = (layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        rows = self._on("rows", a.device)
        if self._score.per_layer:
            return _scatter(self._score.score(a[rows]), rows, self.batch)
        if self.units.numel() and int(self.units.max()) >= a.shape[1]:
            raise ScopeError(f"unit {int(self.units.max())} is out of range: {self.layer} has units 0..{a.shape[1] - 1}")
        units = self._on("units", a.device)
        picked = a[rows, units]  # (n, *spatial)
        values = picked if picked.dim() == 1 else self._score.score(picked)
        return _scatter(values, rows, self.batch)

    def __repr__(self):
        return f"{self.kind}({self.layer}, rows={self.rows.tolist()}, units={self.units.tolist()})"


class DirectionScore(Objective, _DeviceCache):
    """The score of a direction kind in given rows: each row's activations of `layer` (the layer its
    direction lives in) minus `pre_bias`, against that row's direction."""

    def __init__(self, kind: str, layer: str, rows, directions: torch.Tensor, pre_bias: torch.Tensor, batch: int):
        if kind not in OBJECTIVE_KINDS or not OBJECTIVE_KINDS[kind].direction:
            raise ScopeError(f"objective '{kind}' does not follow a direction")
        self.kind, self.layer, self.batch = kind, layer, batch
        self._score = OBJECTIVE_KINDS[kind]
        self.rows = _rows(rows, batch)
        self.directions = torch.as_tensor(directions, dtype=torch.float32).detach().cpu()
        self.pre_bias = torch.as_tensor(pre_bias, dtype=torch.float32).detach().cpu()
        if self.directions.shape[0] != self.rows.shape[0] or self.pre_bias.shape != self.directions.shape:
            raise ScopeError("a direction objective needs one direction and pre-bias per row")
        self.layers = (layer,)

    def __call__(self, acts):
        a = acts[self.layer]
        rows = self._on("rows", a.device)
        if a.shape[1] != self.directions.shape[1]:
            raise ScopeError(f"direction of {self.directions.shape[1]} channels for layer {self.layer} of {a.shape[1]}")
        x = a[rows].float()
        shift = self._on("pre_bias", a.device).view(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
        return _scatter(self._score.score(x - shift, self._on("directions", a.device)), rows, self.batch)

    def __repr__(self):
        return f"{self.kind}({self.layer}, rows={self.rows.tolist()})"


def direction(layer: str, vector, row: int = 0, batch: int = 1, pre_bias=None, cos: bool = False) -> DirectionScore:
    """Mean dot product (cos=True: times cos^2) of `layer`'s activations in row `row` with `vector` [C]."""
    v = torch.as_tensor(vector, dtype=torch.float32).reshape(1, -1)
    b = torch.zeros_like(v) if pre_bias is None else torch.as_tensor(pre_bias, dtype=torch.float32).reshape(1, -1)
    return DirectionScore("direction-cos" if cos else "direction", layer, [row], v, b, batch)


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
    """One image to render: a unit of a layer (unit -1 for deepdream) under an objective.

    position: "" (the layer's grid; neuron = its centre), "cls" (a token layer's first class/register
    token) or "y,x" (one grid position): the objective then sees only that position."""

    layer: str
    unit: int
    objective: str = "channel"
    diversity_index: int = 0
    position: str = ""

    @property
    def view(self) -> str:
        """The activation view the objective reads: the layer, `layer|position`, or for a direction
        objective on a unit space `BASE@SPACE` the layer BASE its direction lives in."""
        if objective_kind(self.objective).direction:
            return split_space(self.layer)[0]
        return f"{self.layer}|{self.position}" if self.position else self.layer

    @property
    def stored_objective(self) -> str:
        """What the artifact records as the objective (`neuron@cls` for a positioned neuron)."""
        return f"{self.objective}@{self.position}" if self.position else self.objective


def batch_objectives(targets: list[RenderTarget], diversity_weight: float = 1.0,
                     directions=None) -> tuple[Objective, Objective]:
    """(loss objective, measure) for a batch whose row i renders targets[i].

    directions(layer, unit) -> (direction [C], pre_bias [C]) of a unit, for direction objectives.

    The measure is what the records report as the unit's activation: each row's kind's score, or for a
    signed kind (negative) the score of the kind it signs (channel). The objective is the measure times
    each row's sign, plus a diversity term when a unit has several images in the batch.
    """
    batch = len(targets)
    kinds = [objective_kind(t.objective) for t in targets]
    by_kind: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row, (t, kind) in enumerate(zip(targets, kinds)):
        by_kind[(kind.measured_as or kind.name, t.view)].append(row)
    measure_parts = []
    for (base, layer), rows in by_kind.items():
        if OBJECTIVE_KINDS[base].direction:
            if directions is None:
                raise ScopeError(f"objective '{base}' needs the units' directions")
            pairs = [directions(targets[r].layer, targets[r].unit) for r in rows]
            measure_parts.append(DirectionScore(base, layer, rows, torch.stack([torch.as_tensor(d) for d, _ in pairs]),
                                                torch.stack([torch.as_tensor(b) for _, b in pairs]), batch))
        else:
            measure_parts.append(UnitScore(base, layer, rows, [] if OBJECTIVE_KINDS[base].per_layer
                                           else [targets[r].unit for r in rows], batch))
    measure = sum(measure_parts)
    sign = torch.tensor([kind.sign for kind in kinds])
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


class DotCompare(Objective, _DeviceCache):
    """Lucid's caricature objective: dot(a, r) * max(cos(a, r), 0.1) ** power for each row, where a is the
    row's activation of its layer (the whole layer, every position) and r the reference activation the
    caller provides under `acts[f"{layer}@reference"]` (the photo's, under the same transform).

    Rows may belong to different layers (one `DotCompare` per layer, summed); the cosine weight keeps the
    image from trading the photo's pattern for sheer magnitude (power 0: plain dot product)."""

    def __init__(self, layer: str, rows, batch: int, power: float = 1.0):
        self.layer, self.batch, self.power = layer, batch, float(power)
        self.rows = _rows(rows, batch)
        self.layers = (layer,)

    def __call__(self, acts):
        rows = self._on("rows", acts[self.layer].device)
        a = acts[self.layer][rows].float().flatten(1)
        r = acts[f"{self.layer}@reference"][rows].float().flatten(1)
        dot = (a * r).sum(dim=1)
        cos = dot / (a.norm(dim=1) * r.norm(dim=1) + 1e-8)
        return _scatter(dot * cos.clamp(min=0.1) ** self.power, rows, self.batch)

    def __repr__(self):
        return f"dot_compare({self.layer}, rows={self.rows.tolist()}, power={self.power:g})"


class CellDirectionScore(Objective, _DeviceCache):
    """A direction in a layer's activation space (activation atlases): each row's mean over positions of
    dot(a, d) * max(cos(a, d), 0.1) ** power, d the row's direction (Lucid's direction_neuron_cossim).

    `directions` [rows, C] (one per row of `rows`); a vector layer (N, C) is its one position."""

    def __init__(self, layer: str, rows, directions, batch: int, power: float = 1.0):
        self.layer, self.batch, self.power = layer, batch, float(power)
        self.rows = _rows(rows, batch)
        d = torch.as_tensor(directions, dtype=torch.float32).reshape(len(self.rows), -1)
        self.directions = d / d.norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.layers = (layer,)

    def __call__(self, acts):
        x = acts[self.layer]
        rows = self._on("rows", x.device)
        a = x[rows].float()
        a = a.unsqueeze(2) if a.dim() == 2 else a.flatten(2)  # (n, C, P)
        d = self._on("directions", x.device).unsqueeze(2)  # (n, C, 1)
        dot = (a * d).sum(dim=1)  # (n, P)
        cos = dot / (a.norm(dim=1) + 1e-8)
        return _scatter((dot * cos.clamp(min=0.1) ** self.power).mean(dim=1), rows, self.batch)

    def __repr__(self):
        return f"direction({self.layer}, rows={self.rows.tolist()}, power={self.power:g})"
