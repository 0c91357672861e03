"""Element `inputs` [scope.unit-inputs] (format 1.1): each unit's strongest inputs from an earlier layer
(the Circuits view), written by `scope circuits` or `scope collect --circuits`.

Per unit u of the layer: the units v of an earlier layer L' with the largest positive and the largest
negative attribution(v -> u), the mean over u's top dataset examples of activation(v) x d(u's maximum)/d v,
summed over positions (gradient x input, `scopecli/views/circuits.py`). For a plain conv -> conv pair that is
the weight table (kernel sums) times the input's activation. A unit that never fires on the data (no
top example above 0) has no attribution: it is stored with `examples` 0 and no rows, and says so.

Stored per unit row: which L' (`source`, an index into `source_layers`), how many examples were averaged,
and 2k columns: k positive inputs by decreasing attribution, then k negative ones, most negative first
(-1 / NaN where there are fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scopecli.artifact.blobs import present_mask
from scopecli.artifact.h5io import (attr_int, check_element, get_dataset, read_numeric, read_strings, set_encoding,
    write_array, write_strings)
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.records import INPUTS_K, InputsBlock, UnitInputs

METHOD = "gradient x input at the unit's maximum position, summed over positions, mean over its top examples"


class InputsSection:
    def __init__(self, g, slot):
        where = slot.where + "/inputs"
        check_element(g, InputsElement.encoding, where)
        units = read_numeric(get_dataset(g, "units", where), f"{where}/units", "i", 1).astype(np.int64)
        names = read_strings(get_dataset(g, "source_layers", where), f"{where}/source_layers")
        source = read_numeric(get_dataset(g, "source", where), f"{where}/source", "i", 1).astype(np.int32)
        examples = read_numeric(get_dataset(g, "examples", where), f"{where}/examples", "i", 1).astype(np.int32)
        unit = read_numeric(get_dataset(g, "unit", where), f"{where}/unit", "i", 2).astype(np.int64)
        att = read_numeric(get_dataset(g, "attribution", where), f"{where}/attribution", "f", 2).astype(np.float32)
        k = attr_int(g, "k", where, 0, 1 << 20, default=INPUTS_K)
        n = len(units)
        if source.shape != (n,) or examples.shape != (n,) or unit.shape != att.shape or unit.shape[0] != n \
                or unit.shape[1] != 2 * k:
            raise ScopeError(f"{where}: units, source, examples, unit and attribution disagree in shape")
        if n and ((units < 0).any() or (units >= slot.units).any() or (np.diff(units) <= 0).any()):
            raise ScopeError(f"{where}/units: out of range or not strictly increasing")
        if n and ((source < 0).any() or (source >= len(names)).any()):
            raise ScopeError(f"{where}/source: index out of range of source_layers")
        if unit.size and (unit < -1).any():
            raise ScopeError(f"{where}/unit: negative unit index")
        self.block = InputsBlock(units, list(names), source, examples, unit, att, k)
        self._row = {int(u): i for i, u in enumerate(units)}

    def inputs_of(self, unit: int) -> UnitInputs | None:
        row = self._row.get(unit)
        return None if row is None else self.block.rows_of(row)


@dataclass
class InputCard:
    """One strongest input on a unit page: the input unit, its signed attribution, and its page and thumbnail
    where the gallery shows that unit (else None)."""

    label: str
    attribution: float
    url: str | None
    thumb: str | None
    width: int
    height: int


@dataclass
class InputsPanel:
    """A unit's strongest inputs as its page shows them (the Circuits view), positive first, then negative."""

    source_layer: str
    examples: int
    note: str
    cards: list[InputCard]

    @property
    def positive(self) -> list[InputCard]:
        return [c for c in self.cards if c.attribution > 0]

    @property
    def negative(self) -> list[InputCard]:
        return [c for c in self.cards if c.attribution < 0]


@register_layer_element
class InputsElement(LayerElement):
    name = "inputs"
    encoding = "scope.unit-inputs"
    features = ()  # optional: a reader that ignores it reads everything else correctly
    unit_field = "inputs"
    panel = "inputs"

    def panel_context(self, value, links):
        if not value and not getattr(value, "note", ""):
            return None
        cards = []
        for r in value:
            got = links.unit(r.layer, r.unit)
            url, thumb, w, h = got if got is not None else (None, None, 0, 0)
            cards.append(InputCard(f"{r.layer}:{r.unit}", r.attribution, url, thumb or None, w, h))
        return {"inputs": InputsPanel(value.source_layer or "", value.examples, value.note, cards)}

    def read(self, group, slot):
        return InputsSection(group, slot)

    def present(self, group, slot, section=None):
        return present_mask(slot.units, (section or self.read(group, slot)).block.units).astype(bool)

    def info(self, group, slot, section=None):
        if group is None:
            return {}
        sec = section or self.read(group, slot)
        return {"inputs": int(len(sec.block.units)), "inputs_from": sorted(set(sec.block.source_layers))}

    def unit_value(self, section, unit, slot, art) -> UnitInputs:
        if section is None:
            return UnitInputs()
        got = section.inputs_of(unit)
        return UnitInputs() if got is None else got

    # -- write: staged = {unit: (source layer, examples, unit row, attribution row, k)}
    def new(self) -> dict:
        return {}

    def stage(self, section: InputsSection, slot) -> dict:
        b = section.block
        return {int(u): (b.source_layers[int(b.source[i])], int(b.examples[i]), b.unit[i].copy(),
                         b.attribution[i].copy(), b.k) for i, u in enumerate(b.units)}

    def put(self, staged: dict, value: InputsBlock, slot, **options) -> None:
        units = np.asarray(value.units, np.int64).reshape(-1)
        n, width = len(units), 2 * int(value.k)
        unit, att = np.asarray(value.unit, np.int64), np.asarray(value.attribution, np.float32)
        if unit.shape != (n, width) or att.shape != (n, width) or len(value.examples) != n or len(value.source) != n:
            raise ScopeError(f"inputs of {slot.name}: unit and attribution must be [units, 2k]")
        if n and ((units < 0).any() or (units >= slot.units).any() or len(set(units.tolist())) != n):
            raise ScopeError(f"inputs of {slot.name}: units must be distinct and within 0..{slot.units - 1}")
        if slot.name in value.source_layers:
            raise ScopeError(f"inputs of {slot.name}: a layer cannot be its own input")
        ks = {v[4] for v in staged.values()}
        if ks and ks != {int(value.k)}:  # one width per element: rows of another k are replaced wholesale
            staged.clear()
        for i, u in enumerate(units):
            staged[int(u)] = (value.source_layers[int(value.source[i])], int(value.examples[i]), unit[i].copy(),
                              att[i].copy(), int(value.k))

    def is_empty(self, staged: dict) -> bool:
        return not staged

    def write(self, group, staged: dict, slot) -> None:
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        units = sorted(staged)
        k = next(iter(staged.values()))[4]
        names = sorted({staged[u][0] for u in units})
        g.attrs["k"] = np.int64(k)
        g.attrs["method"] = METHOD
        write_array(g, "units", units, np.int64)
        write_strings(g, "source_layers", names)
        write_array(g, "source", [names.index(staged[u][0]) for u in units], np.int32)
        write_array(g, "examples", [staged[u][1] for u in units], np.int32)
        write_array(g, "unit", np.stack([staged[u][2] for u in units]).reshape(len(units), 2 * k), np.int64)
        write_array(g, "attribution", np.stack([staged[u][3] for u in units]).reshape(len(units), 2 * k), np.float32)

    def check(self, section: InputsSection, slot, art, quick):
        b, problems = section.block, []
        k = b.k
        for i, u in enumerate(b.units):
            pos, neg = b.attribution[i, :k], b.attribution[i, k:]
            ok_pos, ok_neg = b.unit[i, :k] >= 0, b.unit[i, k:] >= 0
            if (ok_pos & ~(pos > 0)).any() or (ok_neg & ~(neg < 0)).any():
                problems.append(f"layer {slot.name}: inputs of unit {u} have the wrong sign for their column")
            elif (np.diff(pos[ok_pos]) > 0).any() or (np.diff(neg[ok_neg]) < 0).any():
                problems.append(f"layer {slot.name}: inputs of unit {u} are not ordered by attribution")
            if b.examples[i] == 0 and (ok_pos.any() or ok_neg.any()):
                problems.append(f"layer {slot.name}: unit {u} has inputs but no examples were averaged")
        for name in b.source_layers:
            if art is not None and name in art.layers:
                units = art.layer(name).units
                rows = np.isin(b.source, [b.source_layers.index(name)])
                if (b.unit[rows] >= units).any():
                    problems.append(f"layer {slot.name}: an input unit is out of range of layer {name} ({units} units)")
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> dict:
        """Union by unit; the same unit computed differently in two inputs is a conflict (unless prefer=last)."""
        out: dict = {}
        src: dict[int, str] = {}
        for inp in inputs:
            for u, row in self.stage(inp.section, slot).items():
                if u in out and plan.prefer is None and not _same(out[u], row):
                    plan.conflict(f"{slot.name}:{u} strongest inputs in {src[u]} and {inp.name}")
                out[u], src[u] = row, inp.name
        ks = {v[4] for v in out.values()}
        if len(ks) > 1:
            plan.conflict(f"{slot.name} strongest inputs kept with different k ({sorted(ks)})")
        return out


def _same(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[4] == b[4] and np.array_equal(a[2], b[2]) and \
        np.array_equal(a[3], b[3], equal_nan=True)
