"""Render from Python with your own objective, parameterization and transforms (Lucid's `render_vis` spirit).

    from scopecli.render.api import obj, render
    o = obj("layer4.2:3") + 0.5 * obj("layer4.2:7")          # composable: +, -, unary -, * number
    o = obj("layer3", kind="deepdream") - obj.direction("layer4", v)
    o = obj.function(lambda acts: acts["layer4"][:, 3].mean(dim=(1, 2)), layers=["layer4"], label="my probe")
    records = render(loaded, o, n=2, settings=RenderSettings(steps=128), out="mine.h5")

Why a second front door to the same engine: the CLI renders named units in large batches; a researcher wants
one picture of *their* objective (a sum of two units, a probe direction, a function of the activations) without
editing scopecli. The step loop, the transforms, the evidence (activation on the final image and under random
transforms) and storage are the engine's own (`render/engine.py`). What was optimized is stored in the render
row's `objective`: the formula of a composite (`channel(layer4.2:3) + 0.5*channel(layer4.2:7)`), or
`custom:LABEL` for a function, never silently as a plain channel.

An `Obj` is a weighted sum of terms, each scoring every image of the batch the same way (`bind(n)` makes the
engine's per-row `Objective`, `render/objectives.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from scopecli.artifact import ArtifactWriter
from scopecli.core.errors import ScopeError
from scopecli.core.records import RenderRecord
from scopecli.core.units import parse_unit_address
from scopecli.model.capture import LayerTap
from scopecli.model.layers import layouts_at, layer_table
from scopecli.render import objectives as O
from scopecli.render import transforms as tf
from scopecli.render.engine import (RenderSettings, _draw_batch, _evidence, _Forward, _Normalize, _optimize, _place,
    _Ticker, derive_seed, resolve_device)
from scopecli.render.reproducible import reproducible
from scopecli.render.schedule import get_schedule


@dataclass(frozen=True)
class _Term:
    """One scored thing: a unit's kind (channel, neuron), a layer's deepdream, a direction, or a function."""

    kind: str  # channel | neuron | deepdream | direction | function
    layer: str
    unit: int = -1
    vector: tuple = ()
    fn: Callable | None = None
    label: str = ""
    layers: tuple = ()

    def describe(self) -> str | None:
        if self.kind in ("channel", "neuron"):
            return f"{self.kind}({self.layer}:{self.unit})"
        if self.kind == "deepdream":
            return f"deepdream({self.layer})"
        if self.kind == "direction":
            return f"direction({self.layer}, {len(self.vector)} channels)"
        return None  # a function: not describable

    def bind(self, n: int) -> O.Objective:
        rows = list(range(n))
        if self.kind in ("channel", "neuron"):
            return O.UnitScore(self.kind, self.layer, rows, [self.unit] * n, n)
        if self.kind == "deepdream":
            return O.UnitScore("deepdream", self.layer, rows, [], n)
        if self.kind == "direction":
            return sum(O.direction(self.layer, self.vector, row=r, batch=n) for r in rows)
        return _Function(self.fn, self.layers, n)


class _Function(O.Objective):
    """A user's function of the captured activations ({layer: (N, C, rows, cols) or (N, C)}) -> [N] scores."""

    def __init__(self, fn, layers, batch: int):
        self.fn, self.layers, self.batch = fn, tuple(layers), batch

    def __call__(self, acts):
        out = self.fn(acts)
        if not isinstance(out, torch.Tensor) or out.shape != (self.batch,):
            raise ScopeError(f"a function objective must return one score per image (a tensor of shape "
                             f"({self.batch},)), got {type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        return out.float()


class Obj:
    """A render objective from Python: a weighted sum of terms; compose with +, -, unary - and * number."""

    def __init__(self, parts: list[tuple[float, _Term]]):
        self.parts = list(parts)

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Obj):
            return NotImplemented
        return Obj(self.parts + other.parts)

    __radd__ = __add__

    def __neg__(self):
        return Obj([(-w, t) for w, t in self.parts])

    def __sub__(self, other):
        return self + (-other)

    def __mul__(self, factor):
        if not isinstance(factor, (int, float)) or not math.isfinite(factor):
            return NotImplemented
        return Obj([(w * float(factor), t) for w, t in self.parts])

    __rmul__ = __mul__

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(layer for _, t in self.parts for layer in (t.layers or (t.layer,))))

    def describe(self, label: str | None = None) -> str:
        """The stored `objective`: the formula, or `custom:LABEL` when a function is part of it."""
        terms = [t.describe() for _, t in self.parts]
        if any(d is None for d in terms):
            labels = [t.label for _, t in self.parts if t.kind == "function" and t.label]
            text = label or ", ".join(labels)
            if not text:
                raise ScopeError("a function objective needs a label (obj.function(fn, layers, label=...)), so the "
                                 "stored render says what it shows")
            return f"custom:{text}"
        out = ""
        for (w, _), d in zip(self.parts, terms):
            sign = "-" if w < 0 else "+"
            mag = abs(w)
            piece = d if mag == 1 else f"{mag:g}*{d}"
            out = (("-" + piece) if sign == "-" else piece) if not out else f"{out} {sign} {piece}"
        return out

    def bind(self, n: int) -> O.Objective:
        """The engine's per-row objective for a batch of n images, all optimizing this."""
        return sum((w * t.bind(n) if w != 1 else t.bind(n)) for w, t in self.parts)

    def __repr__(self) -> str:
        try:
            return f"Obj({self.describe()})"
        except ScopeError:
            return "Obj(custom)"


def _make(address: str, kind: str = "channel") -> Obj:
    """`obj("layer:unit")` (channel or neuron), or `obj("layer", kind="deepdream")`."""
    if kind == "deepdream":
        return Obj([(1.0, _Term("deepdream", str(address)))])
    if kind not in ("channel", "neuron"):
        raise ScopeError(f"obj(...): kind must be channel, neuron or deepdream, got {kind!r}")
    layer, unit = parse_unit_address(address)
    return Obj([(1.0, _Term(kind, layer, int(unit)))])


def _direction(layer: str, vector) -> Obj:
    """The mean dot product of `layer`'s activations with `vector` (one value per channel)."""
    v = tuple(float(x) for x in np.asarray(vector, np.float64).reshape(-1))
    if not v or not all(math.isfinite(x) for x in v):
        raise ScopeError("obj.direction: the vector must be finite numbers, one per channel")
    return Obj([(1.0, _Term("direction", layer, vector=v))])


def _function(fn: Callable, layers, label: str) -> Obj:
    """A function of the captured activations of `layers` ({layer: (N, C, rows, cols)}) returning [N] scores."""
    if not callable(fn):
        raise ScopeError("obj.function needs a callable")
    layers = tuple(layers) if not isinstance(layers, str) else (layers,)
    if not layers:
        raise ScopeError("obj.function needs the layers its function reads")
    return Obj([(1.0, _Term("function", layers[0], fn=fn, label=str(label or ""), layers=layers))])


class _Factory:
    """`obj("L:u")`, `obj("L", kind="deepdream")`, `obj.direction(L, v)`, `obj.function(fn, layers, label)`."""

    __call__ = staticmethod(_make)
    direction = staticmethod(_direction)
    function = staticmethod(_function)


obj = _Factory()


def render(loaded, objective: Obj, n: int = 1, settings: RenderSettings | None = None, param=None,
           transforms: tf.TransformSpec | None = None, out: str | None = None, label: str | None = None,
           progress=None) -> list[RenderRecord]:
    """Optimize `n` images for `objective` (different seeds) and return their RenderRecords; with `out`, store them
    in that artifact (on the objective's first layer, unit -1 unless it is one unit's term, objective = the
    description). `param`: a callable (size, generators) -> ImageParam, instead of `settings.param`; `transforms`:
    a TransformSpec instead of the input size's Lucid transforms."""
    if not isinstance(objective, Obj):
        raise ScopeError("render(...) takes an objective made with obj(...) (see scopecli.render.api)")
    if int(n) < 1:
        raise ScopeError(f"n must be at least 1, got {n}")
    pre = loaded.preprocess
    settings = settings or RenderSettings(size=pre.crop)
    settings.check()
    settings.for_input(pre)
    if transforms is not None:
        settings.transforms = transforms
    description = objective.describe(label)
    module, size, n = loaded.module, int(settings.size), int(n)
    device = resolve_device(settings.device)
    layers = objective.layers
    layouts = layouts_at(module, size, layers)
    normalize = _Normalize(pre.mean, pre.std)
    seeds = [derive_seed(settings.seed, loaded.fingerprint, description, -1, i) for i in range(n)]
    was = module.training
    t0 = time.perf_counter()
    _place(module, device)
    try:
        with reproducible(device, bool(settings.deterministic)):
            draws = _draw_batch(settings, seeds, device, param)
            bound = objective.bind(n)
            with LayerTap(module, layers) as tap:
                forward = _Forward(tap, normalize, layouts, layers, device, settings.amp)
                trace = _optimize(draws, forward, bound, bound, settings, n,
                                  _Ticker(progress, n, int(settings.steps), float(n)))
                ev = _evidence(draws, forward, bound, settings.transforms.pad_value, int(settings.bit_depth))
    finally:
        module.train(was)
    seconds = (time.perf_counter() - t0) / n
    single = objective.parts[0][1] if len(objective.parts) == 1 else None
    unit = single.unit if single is not None and single.kind in ("channel", "neuron") else -1
    kind = getattr(draws.param, "kind", "custom") if param is not None else settings.param
    records = []
    for i in range(n):
        final, robust = float(ev.final[i]), float(ev.robust[i])
        if not (bool(ev.finite_image[i]) and math.isfinite(final) and math.isfinite(robust)):
            raise ScopeError(f"the render of {description} (image {i}) diverged (NaN); try a smaller lr")
        records.append(RenderRecord(
            unit=unit, objective=description, diversity_index=i, image=tf.stored_pixels(ev.pixels[i].cpu()),
            seed=seeds[i], steps=int(settings.steps), size=size, param=str(kind), lr=settings.learning_rate,
            schedule=get_schedule(settings.schedule).name, act_final=final, act_robust=robust,
            act_trace=trace[:, i].detach().cpu().numpy().astype(np.float32), time_s=seconds,
            dataset_max_ratio=math.nan))
    if out is not None:
        store(loaded, records, layers[0], out, settings, description)
    return records


def store(loaded, records: list[RenderRecord], layer: str, out: str, settings: RenderSettings, description: str) -> None:
    """Add the records to artifact `out` under `layer` (created or extended), with what was optimized."""
    info = next((i for i in layer_table(loaded.module, loaded.preprocess.crop) if i.name == layer), None)
    if info is None:
        raise ScopeError(f"layer {layer} is not an addressable layer of {loaded.name}")
    params = dict(settings.describe(), objective=description, source="python")
    with ArtifactWriter(out, loaded.info(), "render", params) as w:
        w.ensure_layer(info.record())
        w.put_renders(layer, records)


__all__ = ["Obj", "obj", "render", "store"]
