"""Element `faithfulness` [scope.render-faithfulness] (format 1.3): does a render drive its unit through the
same path as photos do? (Geirhos et al. 2023, "Don't trust your eyes: on the (un)reliability of feature
visualizations"), written by `scopecli.views.faithfulness`.

One row per measured render, keyed like the render rows (unit, objective, diversity_index). For each layer
L' of `layer_names` (this layer and the artifact's layers that run before it), `per_layer` holds the
Spearman rank correlation between the render's channel vector at L' and the mean channel vector of the
unit's top-k dataset examples at L', both taken at the L' position that corresponds to the unit's maximum
(NaN where not measured). `similarity` is their mean over the layers measured; `baseline` the same figure
against the examples of another unit (`baseline_unit`, drawn with `seed`); `flagged` = similarity <=
baseline: the picture may not show how the unit responds to photos. `render_sha256` is the sha256 of the
render's PNG bytes that were measured: a render replaced since (same key, other pixels) reads as not
measured.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from scopecli.artifact.blobs import present_mask
from scopecli.artifact.h5io import (attr_int, attr_text, check_element, get_dataset, read_numeric, read_strings,
    set_encoding, write_array, write_strings)
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError

METHOD = ("Spearman rank correlation between the render's channel vector and the mean channel vector of the unit's "
          "top-k dataset examples, both at the position of the unit's maximum mapped through the receptive fields, "
          "in this layer and every earlier layer of the artifact, averaged over those layers")
MAX_K = 100_000
_TOL = 1e-6  # a rank correlation computed in floating point may pass 1 by rounding
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class PathEvidence:
    """The faithfulness evidence of one render: `similarity` (mean over `per_layer`), `baseline` (the same
    against `baseline_unit`'s examples), `flagged` (similarity <= baseline). NaN: not measured."""

    unit: int
    objective: str
    diversity_index: int
    similarity: float
    baseline: float
    baseline_unit: int
    flagged: bool
    per_layer: dict[str, float] = field(default_factory=dict)  # layer -> rank correlation (NaN: not measured)
    render_sha256: str = ""  # sha256 of the measured PNG bytes ("" unknown: matches any render of the key)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.unit, self.objective, self.diversity_index)

    def same(self, other: "PathEvidence") -> bool:
        if self.key != other.key or self.baseline_unit != other.baseline_unit or self.flagged != other.flagged \
                or self.render_sha256 != other.render_sha256 or set(self.per_layer) != set(other.per_layer):
            return False
        a = [self.similarity, self.baseline] + [self.per_layer[n] for n in sorted(self.per_layer)]
        b = [other.similarity, other.baseline] + [other.per_layer[n] for n in sorted(self.per_layer)]
        return bool(np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True))


@dataclass
class FaithfulnessBlock:
    """The path-similarity evidence of one layer's renders, as `put` takes it and the reader gives it back.

    Row r belongs to the render (unit[r], objective[r], diversity_index[r]); `per_layer[r, j]` is the rank
    correlation at layer `layer_names[j]` (NaN where not measured)."""

    unit: np.ndarray  # int64 [R]
    objective: list[str]
    diversity_index: np.ndarray  # int32 [R]
    similarity: np.ndarray  # float64 [R]
    baseline: np.ndarray  # float64 [R]
    baseline_unit: np.ndarray  # int64 [R], -1: no other unit with examples
    flagged: np.ndarray  # bool [R]
    layer_names: list[str]
    per_layer: np.ndarray  # float32 [R, Lp]
    render_sha256: list[str]
    k: int = 8
    seed: int = 0
    method: str = METHOD

    def __len__(self) -> int:
        return len(self.unit)

    def row(self, r: int) -> PathEvidence:
        return PathEvidence(int(self.unit[r]), str(self.objective[r]), int(self.diversity_index[r]),
                            float(self.similarity[r]), float(self.baseline[r]), int(self.baseline_unit[r]),
                            bool(self.flagged[r]),
                            {n: float(self.per_layer[r, j]) for j, n in enumerate(self.layer_names)},
                            str(self.render_sha256[r]))

    def rows(self) -> list[PathEvidence]:
        return [self.row(r) for r in range(len(self))]

    @classmethod
    def from_rows(cls, rows: list[PathEvidence], k: int, seed: int, method: str = METHOD,
                  layer_names: list[str] | None = None) -> "FaithfulnessBlock":
        """A block of rows sorted by key; `layer_names` (default: every layer the rows name, first seen first)."""
        rows = sorted(rows, key=lambda e: e.key)
        if layer_names is None:
            layer_names = list(dict.fromkeys(n for e in rows for n in e.per_layer))
        per = np.full((len(rows), len(layer_names)), np.nan, np.float32)
        col = {n: j for j, n in enumerate(layer_names)}
        for r, e in enumerate(rows):
            for n, v in e.per_layer.items():
                per[r, col[n]] = v
        return cls(np.array([e.unit for e in rows], np.int64).reshape(-1), [e.objective for e in rows],
                   np.array([e.diversity_index for e in rows], np.int32).reshape(-1),
                   np.array([e.similarity for e in rows], np.float64).reshape(-1),
                   np.array([e.baseline for e in rows], np.float64).reshape(-1),
                   np.array([e.baseline_unit for e in rows], np.int64).reshape(-1),
                   np.array([e.flagged for e in rows], bool).reshape(-1), list(layer_names), per,
                   [e.render_sha256 for e in rows], int(k), int(seed), method)


def _in_range(x: np.ndarray) -> bool:
    """Rank correlations: within [-1, 1] (rounding aside) or NaN; never infinite."""
    x = np.asarray(x, np.float64)
    return bool(not np.isinf(x).any() and not (np.abs(x[~np.isnan(x)]) > 1 + _TOL).any())


def _check_rows(keys: list[tuple], units: np.ndarray, div: np.ndarray, objective: list[str], n_units: int,
                where: str) -> None:
    if len(units) and ((units < 0).any() or (units >= n_units).any()):
        raise ScopeError(f"{where}/unit: unit index out of range 0..{n_units - 1}")
    if len(div) and (div < 0).any():
        raise ScopeError(f"{where}/diversity_index: negative")
    if any(not o for o in objective):
        raise ScopeError(f"{where}/objective: empty objective name")
    if any(b <= a for a, b in zip(keys, keys[1:])):
        raise ScopeError(f"{where}: rows are not sorted by (unit, objective, diversity_index) or repeat a key")


class FaithfulnessSection:
    """One layer's faithfulness rows, parsed and checked (small tables only)."""

    def __init__(self, g, slot):
        where = slot.where + "/faithfulness"
        check_element(g, FaithfulnessElement.encoding, where)
        self.where = where
        unit = read_numeric(get_dataset(g, "unit", where), f"{where}/unit", "i", 1).astype(np.int64)
        objective = read_strings(get_dataset(g, "objective", where), f"{where}/objective")
        div = read_numeric(get_dataset(g, "diversity_index", where), f"{where}/diversity_index", "i", 1).astype(np.int32)
        sim = read_numeric(get_dataset(g, "similarity", where), f"{where}/similarity", "f", 1).astype(np.float64)
        base = read_numeric(get_dataset(g, "baseline", where), f"{where}/baseline", "f", 1).astype(np.float64)
        bunit = read_numeric(get_dataset(g, "baseline_unit", where), f"{where}/baseline_unit", "i", 1).astype(np.int64)
        flagged = read_numeric(get_dataset(g, "flagged", where), f"{where}/flagged", "u", 1)
        names = read_strings(get_dataset(g, "layer_names", where), f"{where}/layer_names")
        per = read_numeric(get_dataset(g, "per_layer", where), f"{where}/per_layer", "f", 2).astype(np.float32)
        sha = read_strings(get_dataset(g, "render_sha256", where), f"{where}/render_sha256")
        k = attr_int(g, "k", where, 1, MAX_K)
        seed = attr_int(g, "seed", where)
        method = attr_text(g, "method", where)
        if not isinstance(method, str):
            raise ScopeError(f"{where}: missing or non-string attribute 'method'")
        n = len(unit)
        if len(objective) != n or div.shape != (n,) or sim.shape != (n,) or base.shape != (n,) \
                or bunit.shape != (n,) or flagged.shape != (n,) or len(sha) != n or per.shape != (n, len(names)):
            raise ScopeError(f"{where}: unit, objective, diversity_index, similarity, baseline, baseline_unit, "
                             "flagged, render_sha256 and per_layer [rows, layer_names] disagree in shape")
        keys = list(zip(unit.tolist(), objective, div.tolist()))
        _check_rows(keys, unit, div, objective, slot.units, where)
        if n and ((bunit < -1).any() or (bunit >= slot.units).any() or (bunit == unit).any()):
            raise ScopeError(f"{where}/baseline_unit: out of range -1..{slot.units - 1} or the row's own unit")
        if n and (flagged > 1).any():
            raise ScopeError(f"{where}/flagged: values other than 0 and 1")
        for name, arr in (("similarity", sim), ("baseline", base), ("per_layer", per)):
            if not _in_range(arr):
                raise ScopeError(f"{where}/{name}: a rank correlation outside [-1, 1] (or infinite)")
        if len(set(names)) != len(names) or any(not x for x in names):
            raise ScopeError(f"{where}/layer_names: empty or repeated layer name")
        if any(s and not _HEX64.fullmatch(s) for s in sha):
            raise ScopeError(f"{where}/render_sha256: not a lowercase hex sha256 (or empty)")
        self.block = FaithfulnessBlock(unit, list(objective), div, sim, base, bunit, flagged.astype(bool),
                                       list(names), per, list(sha), k, seed, method)
        self._row = {key: r for r, key in enumerate(keys)}

    def evidence(self, key: tuple[int, str, int]) -> PathEvidence | None:
        """The evidence stored for the render of that key (None: none)."""
        r = self._row.get((int(key[0]), str(key[1]), int(key[2])))
        return None if r is None else self.block.row(r)


def png_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@register_layer_element
class FaithfulnessElement(LayerElement):
    name = "faithfulness"
    encoding = "scope.render-faithfulness"
    since = "1.3"
    features = ()  # optional: a reader that ignores it reads everything else correctly
    unit_field = None  # shown on the render views (`RenderView.path_similarity`), not as a unit field

    def read(self, group, slot):
        return FaithfulnessSection(group, slot)

    def present(self, group, slot, section=None):
        return present_mask(slot.units, (section or self.read(group, slot)).block.unit).astype(bool)

    def info(self, group, slot, section=None):
        if group is None:
            return {}
        b = (section or self.read(group, slot)).block
        return {"faithfulness": len(b), "faithfulness_flagged": int(b.flagged.sum())}

    # -- write: staged = {"k": k, "seed": seed, "method": str, "rows": {key: PathEvidence}, "layers": [names]}
    def new(self) -> dict:
        return {"k": None, "seed": None, "method": METHOD, "rows": {}, "layers": []}

    def stage(self, section: FaithfulnessSection, slot) -> dict:
        b = section.block
        return {"k": b.k, "seed": b.seed, "method": b.method, "rows": {e.key: e for e in b.rows()},
                "layers": list(b.layer_names)}

    def put(self, staged: dict, value: FaithfulnessBlock, slot, **options) -> None:
        n = len(value.unit)
        if len(value.objective) != n or len(value.diversity_index) != n or len(value.similarity) != n \
                or len(value.baseline) != n or len(value.baseline_unit) != n or len(value.flagged) != n \
                or len(value.render_sha256) != n or np.shape(value.per_layer) != (n, len(value.layer_names)):
            raise ScopeError(f"faithfulness of {slot.name}: every column must have one entry per row, per_layer "
                             "[rows, layer_names]")
        if not 1 <= int(value.k) <= MAX_K:
            raise ScopeError(f"faithfulness of {slot.name}: k must be within 1..{MAX_K}")
        units = np.asarray(value.unit, np.int64)
        if n and ((units < 0).any() or (units >= slot.units).any()):
            raise ScopeError(f"faithfulness of {slot.name}: units must be within 0..{slot.units - 1}")
        bunit = np.asarray(value.baseline_unit, np.int64)
        if n and ((bunit < -1).any() or (bunit >= slot.units).any() or (bunit == units).any()):
            raise ScopeError(f"faithfulness of {slot.name}: a baseline unit must be another unit of the layer, or -1")
        if len(set(value.layer_names)) != len(value.layer_names):
            raise ScopeError(f"faithfulness of {slot.name}: layer_names repeat a layer")
        for arr in (value.similarity, value.baseline, value.per_layer):
            if not _in_range(arr):
                raise ScopeError(f"faithfulness of {slot.name}: a rank correlation outside [-1, 1]")
        if (staged["k"], staged["seed"]) != (int(value.k), int(value.seed)):
            staged["rows"].clear()  # one k and seed per element: rows measured otherwise are replaced wholesale
            staged["layers"] = []
        staged["k"], staged["seed"], staged["method"] = int(value.k), int(value.seed), str(value.method)
        rows = [FaithfulnessBlock.row(value, r) for r in range(n)]
        keys = [e.key for e in rows]
        if len(set(keys)) != len(keys):
            raise ScopeError(f"faithfulness of {slot.name}: a render key appears twice")
        for e in rows:
            if not e.objective:
                raise ScopeError(f"faithfulness of {slot.name}: unit {e.unit} has an empty objective")
            staged["rows"][e.key] = e
        staged["layers"] = list(dict.fromkeys(list(staged["layers"]) + list(value.layer_names)))

    def is_empty(self, staged: dict) -> bool:
        return not staged["rows"]

    def write(self, group, staged: dict, slot) -> None:
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        rows = [staged["rows"][key] for key in sorted(staged["rows"])]
        used = {n for e in rows for n in e.per_layer}
        names = [n for n in staged["layers"] if n in used] + sorted(used - set(staged["layers"]))
        b = FaithfulnessBlock.from_rows(rows, staged["k"], staged["seed"], staged["method"], names)
        g.attrs["method"] = b.method
        g.attrs["k"] = np.int64(b.k)
        g.attrs["seed"] = np.int64(b.seed)
        write_array(g, "unit", b.unit, np.int64)
        write_strings(g, "objective", b.objective)
        write_array(g, "diversity_index", b.diversity_index, np.int32)
        write_array(g, "similarity", b.similarity, np.float64)
        write_array(g, "baseline", b.baseline, np.float64)
        write_array(g, "baseline_unit", b.baseline_unit, np.int64)
        write_array(g, "flagged", b.flagged, np.uint8)
        write_strings(g, "layer_names", b.layer_names)
        write_array(g, "per_layer", b.per_layer, np.float32)
        write_strings(g, "render_sha256", b.render_sha256)

    # -- validate
    def check(self, section: FaithfulnessSection, slot, art, quick):
        b, problems = section.block, []
        for r in range(len(b)):
            sim, base = b.similarity[r], b.baseline[r]
            what = f"layer {slot.name}: faithfulness of render {b.unit[r]} ({b.objective[r]}, {b.diversity_index[r]})"
            want = bool(np.isfinite(sim) and np.isfinite(base) and sim <= base)
            if bool(b.flagged[r]) != want:
                problems.append(f"{what} is {'' if b.flagged[r] else 'not '}flagged against similarity {sim:.4g} "
                                f"and baseline {base:.4g}")
            measured = b.per_layer[r][~np.isnan(b.per_layer[r])]
            mean = float(measured.astype(np.float64).mean()) if measured.size else math.nan
            if not (np.isnan(mean) and np.isnan(sim)) and not abs(mean - sim) <= 1e-4:
                problems.append(f"{what}: similarity {sim:.4g} is not the mean of its per-layer figures ({mean:.4g})")
            if b.baseline_unit[r] < 0 and not np.isnan(base):
                problems.append(f"{what} has a baseline but no baseline unit")
            if len(problems) >= 50:
                break
        if art is not None:
            missing = [n for n in b.layer_names if n not in art.layers]
            if missing:
                problems.append(f"layer {slot.name}: faithfulness names layers the file does not hold "
                                f"({', '.join(missing)})")
        return problems, set(self.features)

    # -- merge: union by render key; the same key measured differently in two inputs is a conflict
    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> dict:
        """Union by render key; the same key measured differently, or inputs measured with another k or seed,
        conflict (unless prefer=last: the later input wins, and rows of earlier settings are dropped)."""
        out = self.new()
        src: dict = {}  # render key -> input name
        settings_from = ""
        for inp in inputs:
            st = self.stage(inp.section, slot)
            if out["k"] is not None and (out["k"], out["seed"]) != (st["k"], st["seed"]):
                if plan.prefer is None:
                    plan.conflict(f"{slot.name} render faithfulness measured with k={out['k']}, seed={out['seed']} in "
                                  f"{settings_from} and k={st['k']}, seed={st['seed']} in {inp.name}")
                    continue
                out, src = self.new(), {}
            out["k"], out["seed"], out["method"], settings_from = st["k"], st["seed"], st["method"], inp.name
            for key, e in st["rows"].items():
                if key in out["rows"] and plan.prefer is None and not out["rows"][key].same(e):
                    plan.conflict(f"{slot.name}:{key[0]} render faithfulness ({key[1]}, {key[2]}) in {src[key]} and "
                                  f"{inp.name}")
                out["rows"][key], src[key] = e, inp.name
            out["layers"] = list(dict.fromkeys(out["layers"] + st["layers"]))
        return out
