"""Element `stats` [scope.stats]: per-unit activation statistics over every position of every image.

The reported fields are derived from a mergeable sketch (`sketch/*`, see `scopecli.core.sketch`), so shards
merge to exactly what one run reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from scopecli.artifact.blobs import present_mask
from scopecli.artifact.h5io import check_element, get_dataset, get_group, read_attr, read_numeric, set_encoding, write_array
from scopecli.artifact.layout import ENC_DICT
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.records import QUANTILES, StatsBlock
from scopecli.core.sketch import merge_stats

FIELDS = ("count", "mean", "std", "min", "max", "frac_pos", "quantiles")
ROW_ARRAYS = ("units",) + FIELDS


def subset(st: StatsBlock, units) -> StatsBlock:
    """The rows of the given units (which must be stored), in that order."""
    have = np.asarray(st.units, np.int64)
    order = np.argsort(have, kind="stable")
    idx = order[np.searchsorted(have[order], np.asarray(list(units), np.int64))]
    return StatsBlock(**{f: np.asarray(getattr(st, f))[idx] for f in ROW_ARRAYS},
                      sketch={k: np.asarray(v)[idx] for k, v in st.sketch.items()}, sketch_attrs=dict(st.sketch_attrs))


def concat(blocks: list[StatsBlock]) -> StatsBlock:
    """One block of the rows of several (disjoint units), sorted by unit."""
    blocks = [b for b in blocks if len(b.units)]
    if not blocks:
        return StatsBlock(units=np.zeros(0, np.int64), count=np.zeros(0, np.int64), mean=np.zeros(0),
                          std=np.zeros(0), min=np.zeros(0), max=np.zeros(0), frac_pos=np.zeros(0),
                          quantiles=np.zeros((0, len(QUANTILES))))
    keys = sorted(set().union(*(b.sketch for b in blocks)))
    out = StatsBlock(**{f: np.concatenate([np.asarray(getattr(b, f)) for b in blocks]) for f in ROW_ARRAYS},
                     sketch={k: np.concatenate([np.asarray(b.sketch[k]) for b in blocks]) for k in keys},
                     sketch_attrs=dict(blocks[0].sketch_attrs))
    return subset(out, np.sort(out.units))


def read_stats(g: h5py.Group, units: int, where: str) -> StatsBlock:
    check_element(g, StatsElement.encoding, where, h5py.Group)
    u = read_numeric(get_dataset(g, "units", where), f"{where}/units", "i", 1).astype(np.int64)
    n = len(u)
    if n and ((u < 0).any() or (u >= units).any() or (n > 1 and (np.diff(u) <= 0).any())):
        raise ScopeError(f"{where}/units: out of range or not strictly increasing")
    out = {"units": u}
    out["count"] = read_numeric(get_dataset(g, "count", where), f"{where}/count", "i", 1).astype(np.int64)
    for k in ("mean", "std", "min", "max", "frac_pos"):
        out[k] = read_numeric(get_dataset(g, k, where), f"{where}/{k}", "f", 1).astype(np.float64)
    out["quantiles"] = read_numeric(get_dataset(g, "quantiles", where), f"{where}/quantiles", "f", 2).astype(np.float64)
    for k, v in out.items():
        if v.shape[0] != n:
            raise ScopeError(f"{where}/{k}: has {v.shape[0]} rows, expected {n}")
    if out["quantiles"].shape[1] != len(QUANTILES):
        raise ScopeError(f"{where}/quantiles: {out['quantiles'].shape[1]} columns, expected {len(QUANTILES)}")
    sketch, sketch_attrs = {}, {}
    sg = get_group(g, "sketch", where, required=False)
    if sg is not None:
        check_element(sg, ENC_DICT, f"{where}/sketch")
        for name in sg:
            ds = get_dataset(sg, name, f"{where}/sketch")
            if ds.dtype.kind not in "iuf" or ds.ndim < 1 or ds.shape[0] != n:
                raise ScopeError(f"{where}/sketch/{name}: expected a numeric array with {n} rows")
            sketch[name] = read_numeric(ds, f"{where}/sketch/{name}", ds.dtype.kind, ds.ndim)
        for key in sg.attrs:
            if key in ("encoding-type", "encoding-version"):
                continue
            val = read_attr(sg, key, f"{where}/sketch")
            if isinstance(val, bytes):
                val = val.decode("utf-8", "replace")
            elif isinstance(val, np.generic):
                val = val.item()
            if isinstance(val, (str, int, float)):
                sketch_attrs[key] = val
    return StatsBlock(sketch=sketch, sketch_attrs=sketch_attrs, **out)


@dataclass
class StatsStage:
    """The writer's statistics of a layer: one block, rows sorted by unit (None: nothing yet)."""

    block: StatsBlock | None = None


@register_layer_element
class StatsElement(LayerElement):
    name = "stats"
    encoding = "scope.stats"
    features = ("stats",)
    uses_images = True
    unit_field = "stats"

    def read(self, group, slot):
        return read_stats(group, slot.units, slot.where + "/stats")

    def present(self, group, slot, section=None):
        if section is not None:
            m = np.zeros(slot.units, bool)
            m[section.units] = True
            return m
        where = slot.where + "/stats"
        check_element(group, self.encoding, where)
        m = read_numeric(get_dataset(group, "present", where), f"{where}/present", "u", 1).astype(bool)
        if m.shape != (slot.units,):
            raise ScopeError(f"{where}/present: shape {m.shape}, expected ({slot.units},)")
        return m

    def info(self, group, slot, section=None):
        return {"stats": 0 if group is None else int(self.present(group, slot, section).sum())}

    def unit_value(self, section, unit, slot, art) -> dict:
        if section is None:
            return {}
        i = int(np.searchsorted(section.units, unit))
        if not (i < len(section.units) and section.units[i] == unit):
            return {}
        st = section
        out = {"count": int(st.count[i]), "mean": float(st.mean[i]), "std": float(st.std[i]),
               "min": float(st.min[i]), "max": float(st.max[i]), "frac_pos": float(st.frac_pos[i])}
        for q, v in zip(QUANTILES, st.quantiles[i]):
            out[f"p{q * 100:g}"] = float(v)
        return out

    # -- write
    def new(self) -> StatsStage:
        return StatsStage()

    def stage(self, section, slot) -> StatsStage:
        return StatsStage(section)

    def put(self, staged: StatsStage, value: StatsBlock, slot, **options) -> None:
        st, layer = value, slot.name
        units = np.asarray(st.units, np.int64).reshape(-1)
        n = len(units)
        if n and ((units < 0).any() or (units >= slot.units).any() or len(set(units.tolist())) != n):
            raise ScopeError(f"stats {layer}: units must be distinct and within 0..{slot.units - 1}")
        for f in FIELDS:
            a = np.asarray(getattr(st, f))
            if a.shape[:1] != (n,):
                raise ScopeError(f"stats {layer}: {f} has {a.shape[:1]} rows, expected {n}")
        if np.asarray(st.quantiles).shape != (n, len(QUANTILES)):
            raise ScopeError(f"stats {layer}: quantiles must be [units, {len(QUANTILES)}]")
        for k, v in st.sketch.items():
            if not k or "/" in k or k in (".", ".."):
                raise ScopeError(f"stats {layer}: sketch name {k!r} cannot be stored (no '/', not empty)")
            a = np.asarray(v)
            if a.dtype.kind not in "iuf" or a.ndim < 1 or a.shape[0] != n:
                raise ScopeError(f"stats {layer}: sketch {k!r} must be numeric with {n} rows")
        for k, v in st.sketch_attrs.items():
            if not isinstance(v, (int, float, str, np.integer, np.floating)):
                raise ScopeError(f"stats {layer}: sketch attribute {k!r} must be a number or string")
        old = staged.block
        if old is not None and len(old.units):
            if tuple(sorted(old.sketch)) != tuple(sorted(st.sketch)):
                raise ScopeError(f"stats sketch arrays {tuple(sorted(st.sketch))} differ from the stored ones "
                                 f"{tuple(sorted(old.sketch))}")
            if dict(old.sketch_attrs) != dict(st.sketch_attrs):
                raise ScopeError("stats sketch settings differ from the stored ones (e.g. histogram bins); "
                                 "recollect the layer")
            keep = [int(u) for u in old.units if int(u) not in set(units.tolist())]
            staged.block = concat([subset(old, keep), subset(_as_block(st), np.sort(units))])
        else:
            staged.block = subset(_as_block(st), np.sort(units))

    def is_empty(self, staged: StatsStage) -> bool:
        return staged.block is None or len(staged.block.units) == 0

    def write(self, group, staged: StatsStage, slot) -> None:
        st = staged.block
        sg = group.create_group(self.name)
        set_encoding(sg, self.encoding, self.version)
        sg.attrs["quantile_levels"] = np.asarray(QUANTILES, np.float64)
        write_array(sg, "present", present_mask(slot.units, st.units), np.uint8)
        write_array(sg, "units", st.units, np.int64)
        write_array(sg, "count", st.count, np.int64)
        for f in ("mean", "std", "min", "max", "frac_pos"):
            write_array(sg, f, getattr(st, f), np.float64)
        write_array(sg, "quantiles", st.quantiles, np.float64)
        kg = sg.create_group("sketch")
        set_encoding(kg, ENC_DICT)
        for key in sorted(st.sketch):
            arr = np.asarray(st.sketch[key])
            write_array(kg, key, arr, arr.dtype)
        for key, val in st.sketch_attrs.items():
            kg.attrs[key] = val.item() if isinstance(val, np.generic) else val

    # -- validate
    def check(self, section, slot, art, quick):
        problems = []
        group = art.element_group(slot.name, self.name)
        if not np.array_equal(self.present(group, slot), self.present(group, slot, section)):
            problems.append(f"layer {slot.name}: stats/present disagrees with stats/units")
        return problems, set(self.features)

    # -- merge: disjoint image sets merge through the sketch; overlaps are conflicts unless prefer=last
    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> StatsStage:
        current: StatsBlock | None = None
        src: dict[int, list[int]] = {}
        for inp in inputs:
            st = inp.section
            if current is None:
                current, src = st, {int(u): [inp.index] for u in st.units}
                continue
            cur_units = {int(u) for u in current.units}
            merge_u, replace_u = [], []
            for u in (int(u) for u in st.units if int(u) in cur_units):
                if all(plan.disjoint(j, inp.index) for j in src[u]):
                    merge_u.append(u)
                elif plan.prefer == "last":
                    replace_u.append(u)
                else:
                    a, b = subset(current, [u]), subset(st, [u])
                    if not (np.array_equal(a.count, b.count) and np.allclose(a.mean, b.mean, equal_nan=True)):
                        plan.conflict(f"{slot.name}:{u} stats in {plan.names[src[u][-1]]} and {inp.name} "
                                      "(overlapping images)")
            gone = set(merge_u) | set(replace_u)
            parts = [subset(current, [int(u) for u in current.units if int(u) not in gone])]
            if merge_u:
                parts.append(merge_stats(subset(current, merge_u), subset(st, merge_u)))
                for u in merge_u:
                    src[u].append(inp.index)
            new_u = sorted([int(u) for u in st.units if int(u) not in cur_units] + replace_u)
            if new_u:
                parts.append(subset(st, new_u))
                for u in new_u:
                    src[u] = [inp.index]
            current = concat(parts)
        return StatsStage(current)


def _as_block(st: StatsBlock) -> StatsBlock:
    """A copy with plain numpy columns of the stored dtypes (so blocks from any source concatenate)."""
    return StatsBlock(
        units=np.asarray(st.units, np.int64).reshape(-1), count=np.asarray(st.count, np.int64),
        mean=np.asarray(st.mean, np.float64), std=np.asarray(st.std, np.float64), min=np.asarray(st.min, np.float64),
        max=np.asarray(st.max, np.float64), frac_pos=np.asarray(st.frac_pos, np.float64),
        quantiles=np.asarray(st.quantiles, np.float64), sketch={k: np.asarray(v) for k, v in st.sketch.items()},
        sketch_attrs=dict(st.sketch_attrs),
    )
