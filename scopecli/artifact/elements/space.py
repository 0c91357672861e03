"""Element `space` [scope.unit-space] (format 1.1): the encoder and decoder of a unit space, on its own layer.

Why a layer of its own: a unit space (PCA, NMF, a sparse autoencoder, an imported dictionary) fitted on
layer L is stored as the layer `L@NAME`, with k units on L's grid and receptive field, so renders,
examples, statistics, probes, heatmaps and label profiles of its units are the ordinary elements of that
layer and every command reads them unchanged. This element holds what makes the layer a space:
z = f(encoder @ (x - pre_bias) + bias) at every position of L, its decoder (the directions), and where it
came from (method, seed, hash of the sample it was fitted on, fit quality).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from scopecli.artifact.h5io import (attr_float, attr_int, attr_str, check_element, get_dataset, read_numeric,
    set_encoding, write_array)
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.records import NONLINEARITIES, UnitSpace
from scopecli.core.units import split_space

QUALITY_ATTRS = ("explained_variance", "r2", "dead_fraction", "fit_seconds")  # also as attributes, for h5dump


def _json_attr(group, key: str, where: str) -> dict:
    text = attr_str(group, key, where)
    try:
        value = json.loads(text)
    except ValueError:
        raise ScopeError(f"{where}@{key}: invalid JSON")
    if not isinstance(value, dict):
        raise ScopeError(f"{where}@{key}: not a JSON object")
    return value


def read_space(g, slot) -> UnitSpace:
    where = slot.where + "/space"
    check_element(g, SpaceElement.encoding, where)
    base, name = split_space(slot.name)
    if name is None:
        raise ScopeError(f"{where}: a unit space must sit on a layer named BASE@SPACE, not {slot.name!r}")
    stored_base = attr_str(g, "base", where)
    if stored_base != base:
        raise ScopeError(f"{where}@base is {stored_base!r}, but the layer name says {base!r}")
    arrays = {}
    for key, ndim in (("encoder", 2), ("pre_bias", 1), ("bias", 1), ("decoder", 2)):
        arrays[key] = read_numeric(get_dataset(g, key, where), f"{where}/{key}", "f", ndim).astype(np.float32)
    k, c = arrays["encoder"].shape
    if k != slot.units or arrays["decoder"].shape != (k, c) or arrays["pre_bias"].shape != (c,) \
            or arrays["bias"].shape != (k,):
        raise ScopeError(f"{where}: encoder, decoder [{slot.units}, C], pre_bias [C] and bias [{slot.units}] disagree "
                         "in shape")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise ScopeError(f"{where}: encoder or decoder holds NaN or infinite values")
    nonlinearity = attr_str(g, "nonlinearity", where)
    if nonlinearity not in NONLINEARITIES:
        raise ScopeError(f"{where}@nonlinearity: {nonlinearity!r} is not one of {', '.join(NONLINEARITIES)}")
    k_active = attr_int(g, "k_active", where, 0, k)
    if nonlinearity == "topk" and k_active < 1:
        raise ScopeError(f"{where}@k_active: a topk space keeps at least one latent per position")
    quality = _json_attr(g, "quality_json", where)
    return UnitSpace(base=base, name=name, **arrays, nonlinearity=nonlinearity, k_active=k_active,
                     method=attr_str(g, "method", where), seed=attr_int(g, "seed", where),
                     data_sha256=attr_str(g, "data_sha256", where),
                     quality={key: math.nan if v is None else v for key, v in quality.items()},
                     params=_json_attr(g, "params_json", where), note=attr_str(g, "note", where))


def _number(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


@register_layer_element
class SpaceElement(LayerElement):
    """Staged: a holder of one UnitSpace (written whole by `scope decompose`)."""

    name = "space"
    encoding = "scope.unit-space"
    features = ()  # a 1.0 reader shows a space layer as a layer of k channels named L@NAME: nothing is misread
    unit_field = "direction"

    def read(self, group, slot) -> UnitSpace:
        return read_space(group, slot)

    def present(self, group, slot, section=None):
        return np.ones(slot.units, bool)

    def info(self, group, slot, section=None) -> dict:
        if group is None:
            return {}
        sp = section or self.read(group, slot)
        return {"space": {"base": sp.base, "method": sp.method, "k": sp.k, "nonlinearity": sp.nonlinearity,
                          "k_active": sp.k_active,
                          "quality": {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None)
                                      for k, v in sp.quality.items()}}}

    def unit_value(self, section: UnitSpace | None, unit, slot, art):
        """A space unit's decoder row (float32 [C], its direction in the base layer); None for a channel."""
        return None if section is None else section.decoder[unit].copy()

    # -- write
    def new(self) -> "SpaceStage":
        return SpaceStage()

    def stage(self, section: UnitSpace, slot) -> "SpaceStage":
        return SpaceStage(section)

    def put(self, staged: "SpaceStage", value: UnitSpace, slot, **options) -> None:
        if value.layer != slot.name:
            raise ScopeError(f"unit space {value.layer} cannot be stored on layer {slot.name}")
        if value.k != slot.units:
            raise ScopeError(f"unit space {value.layer} has {value.k} units, its layer {slot.units}")
        for key in ("encoder", "pre_bias", "bias", "decoder"):
            if not np.isfinite(np.asarray(getattr(value, key), np.float64)).all():
                raise ScopeError(f"unit space {value.layer}: {key} holds NaN or infinite values")
        if value.nonlinearity not in NONLINEARITIES:
            raise ScopeError(f"unit space {value.layer}: nonlinearity must be one of {', '.join(NONLINEARITIES)}")
        staged.space = value

    def is_empty(self, staged: "SpaceStage") -> bool:
        return staged.space is None

    def write(self, group, staged: "SpaceStage", slot) -> None:
        sp = staged.space
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        g.attrs["base"] = sp.base
        g.attrs["method"] = str(sp.method)
        g.attrs["nonlinearity"] = sp.nonlinearity
        g.attrs["k_active"] = np.int64(sp.k_active)
        g.attrs["seed"] = np.int64(sp.seed)
        g.attrs["data_sha256"] = str(sp.data_sha256)
        g.attrs["note"] = str(sp.note)
        for key in QUALITY_ATTRS:
            g.attrs[key] = np.float64(_number(sp.quality.get(key)))
        quality = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in sp.quality.items()}
        g.attrs["quality_json"] = json.dumps(quality, sort_keys=True, allow_nan=False)
        g.attrs["params_json"] = json.dumps(sp.params, sort_keys=True, allow_nan=False, default=str)
        write_array(g, "encoder", sp.encoder, np.float32)
        write_array(g, "pre_bias", sp.pre_bias, np.float32)
        write_array(g, "bias", sp.bias, np.float32)
        write_array(g, "decoder", sp.decoder, np.float32)

    def check(self, section: UnitSpace, slot, art, quick):
        problems = []
        if section.base not in art.layers:
            problems.append(f"unit space {slot.name}: its layer {section.base} is not in the file")
        elif art.layer(section.base).units != section.width:
            problems.append(f"unit space {slot.name}: width {section.width}, but layer {section.base} has "
                            f"{art.layer(section.base).units} units")
        for key in QUALITY_ATTRS:  # attributes mirror the JSON
            g = art.element_group(slot.name, self.name)
            a, b = _number(attr_float(g, key, slot.where)), _number(section.quality.get(key))
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                problems.append(f"unit space {slot.name}: attribute {key} ({a}) disagrees with quality_json ({b})")
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> "SpaceStage":
        first = inputs[0].section
        for inp in inputs[1:]:
            sp = inp.section
            same = all(np.array_equal(getattr(first, key), getattr(sp, key))
                       for key in ("encoder", "pre_bias", "bias", "decoder")) \
                and (first.nonlinearity, first.k_active) == (sp.nonlinearity, sp.k_active)
            if not same:
                if plan.prefer == "last":
                    first = sp
                    continue
                plan.conflict(f"unit space {slot.name} differs between {plan.names[inputs[0].index]} and {inp.name}")
        return SpaceStage(first)


@dataclass
class SpaceStage:
    space: UnitSpace | None = None
