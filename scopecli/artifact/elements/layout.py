"""Element `layout` [scope.layout] (format 1.1): how a layer's output maps to units x positions.

Attributes only: `kind` (nchw, nhwc, tokens, vector), `axes` (the output's dims in batch, channel,
spatial order), `grid` (rows, columns of positions), `prefix_tokens` (class/register tokens before the
grid), `field` (local, measured, global: what the layer's rf_* numbers are) and `global_context` (1 when a
global gate also enters). Files without it (format 1.0) are channels-first (`LayerLayout.implied`).
Not a required feature: a 1.0 reader still reads every unit of a 1.1 file correctly.
"""

from __future__ import annotations

import numpy as np

from scopecli.artifact.h5io import attr_int, attr_str, check_element, read_attr, set_encoding
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.records import FIELDS, LAYOUTS, LayerLayout


def _describe(lay: LayerLayout) -> dict:
    return {"kind": lay.kind, "grid": list(lay.grid), "prefix_tokens": lay.prefix, "field": lay.field,
            "global_context": lay.global_context}


@register_layer_element
class LayoutElement(LayerElement):
    name = "layout"
    encoding = "scope.layout"
    version = "1.0"

    def read(self, group, slot) -> LayerLayout:
        where = slot.where + "/layout"
        check_element(group, self.encoding, where)
        kind = attr_str(group, "kind", where)
        field = attr_str(group, "field", where)
        axes = np.asarray(read_attr(group, "axes", where)).reshape(-1)
        grid = np.asarray(read_attr(group, "grid", where)).reshape(-1)
        if kind not in LAYOUTS or field not in FIELDS:
            raise ScopeError(f"{where}: unknown layout kind {kind!r} or field {field!r}")
        if axes.dtype.kind not in "iu" or grid.dtype.kind not in "iu" or grid.shape != (2,) or (grid < 1).any():
            raise ScopeError(f"{where}: bad axes or grid attribute")
        if sorted(axes.tolist()) != list(range(len(axes))) or not 2 <= len(axes) <= 8:
            raise ScopeError(f"{where}: axes {axes.tolist()} is not an order of the output's dims")
        return LayerLayout(kind=kind, perm=tuple(int(x) for x in axes), grid=(int(grid[0]), int(grid[1])),
                           prefix=attr_int(group, "prefix_tokens", where, 0, 1 << 20), field=field,
                           global_context=bool(attr_int(group, "global_context", where, 0, 1)))

    def present(self, group, slot, section=None):
        return np.ones(slot.units, bool)

    def info(self, group, slot, section=None) -> dict:
        if group is None:  # format 1.0 files read exactly as before: no layout key
            return {}
        return {"layout": _describe(section or self.read(group, slot))}

    # -- write: staged = the layer's LayerLayout (or None)
    def new(self):
        return None

    def stage(self, section, slot):
        return section

    def put(self, staged, value: LayerLayout, slot, **options) -> None:
        raise ScopeError("a layer's layout is set with ArtifactWriter.ensure_layer(record)")

    def is_empty(self, staged) -> bool:
        return staged is None

    def write(self, group, staged: LayerLayout, slot) -> None:
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        g.attrs["kind"] = staged.kind
        g.attrs["axes"] = np.asarray(staged.perm, np.int64)
        g.attrs["grid"] = np.asarray(staged.grid, np.int64)
        g.attrs["prefix_tokens"] = np.int64(staged.prefix)
        g.attrs["field"] = staged.field
        g.attrs["global_context"] = np.int64(int(staged.global_context))

    def check(self, section: LayerLayout, slot, art, quick):
        rec = art.layer(slot.name)
        problems = []
        if tuple(section.grid) != tuple(rec.shape[1:]):
            problems.append(f"layer {slot.name}: layout grid {section.grid} disagrees with the shape {rec.shape}")
        if (section.kind == "vector") != (tuple(section.grid) == (1, 1)) or (section.prefix and section.kind != "tokens"):
            problems.append(f"layer {slot.name}: layout {section.kind} with grid {section.grid} and "
                            f"{section.prefix} prefix tokens is inconsistent")
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan):
        first = inputs[0].section
        for inp in inputs[1:]:
            if inp.section != first:
                plan.conflict(f"{slot.name} layout in {plan.names[inputs[0].index]} and {inp.name} differ")
        return first
