"""Element `strongest` [scope.strongest-images] (format 1.1): each unit's top 1 % of images by spatial maximum,
and the label profiles built from it.

A label profile says what a unit fires on, in words: over its top-k examples and over its strongest
images (the top 1 % of the dataset, at least one), the classes that dominate, each with its fraction,
the class's base rate in the dataset and their ratio, the lift (NetDissect's idea with the image labels
the user already has). Limits, said where they are shown: one label per image, so a unit that fires on
a part (an eye) is described by the classes of the photos the part appears in; with one class in the
dataset every lift is 1 and the profile says it is uninformative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scopecli.artifact.blobs import present_mask
from scopecli.artifact.h5io import attr_float, attr_int, check_element, get_dataset, read_numeric, set_encoding, write_array
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element, remap_images
from scopecli.core.errors import ScopeError
from scopecli.core.records import LabelProfile, LabelRow, Strongest
from scopecli.core.sketch import merge_ranked, take_ranked

MAX_ROWS = 5  # classes a profile lists


def base_rates(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of the labelled images."""
    lab = labels[labels >= 0]
    counts = np.bincount(lab, minlength=n_classes).astype(np.float64)
    return counts / max(len(lab), 1)


def profile_rows(image_index: np.ndarray, labels: np.ndarray, class_names: list[str], base: np.ndarray) -> tuple[list[LabelRow], int]:
    """Rows (by count, then lift) of the classes of these images, and how many labelled images counted."""
    ii = np.asarray(image_index)
    ii = ii[ii >= 0]
    lab = labels[ii]
    lab = lab[lab >= 0]
    if len(lab) == 0:
        return [], 0
    counts = np.bincount(lab, minlength=len(class_names))
    rows = []
    for c in np.flatnonzero(counts):
        frac = counts[c] / len(lab)
        b = float(base[c])
        rows.append(LabelRow(class_names[c], int(counts[c]), float(frac), b, float(frac / b) if b > 0 else math.inf))
    rows.sort(key=lambda r: (-r.count, -r.lift, r.class_name))
    return rows[:MAX_ROWS], len(lab)


def lift_score(count: int, n: int, base: float) -> float:
    """Lift shrunk toward 1 for small counts: (count + 1) / (n + 1 / base) / base, the posterior mean with
    the base rate as prior worth one image. Ranks a class seen 8 times in 8 above one seen once in 1."""
    if base <= 0 or n <= 0:
        return 0.0
    return (count + 1) / (n + 1 / base) / base


def unit_profile(labels: np.ndarray, class_names: list[str], top: np.ndarray | None, strongest: np.ndarray | None) -> LabelProfile:
    """The label profile of one unit from its top-k and strongest image indices."""
    if not len(class_names) or labels is None or not (labels >= 0).any():
        return LabelProfile()
    base = base_rates(labels, len(class_names))
    note = ""
    if (base > 0).sum() <= 1:
        note = "uninformative: the dataset has one class"
    rows, n_top = profile_rows(top if top is not None else np.zeros(0, np.int64), labels, class_names, base)
    srows, n_str = profile_rows(strongest if strongest is not None else np.zeros(0, np.int64), labels, class_names, base)
    if not note and n_top > 1 and rows and all(r.count == 1 for r in rows):
        # e.g. one photo per class, or labels that name the photo while --per-source keeps one view of each
        note = "uninformative: no class repeats among its top examples"
    return LabelProfile(rows, srows, (n_top, n_str), note)


class StrongestSection:
    def __init__(self, g, slot):
        where = slot.where + "/strongest"
        check_element(g, StrongestElement.encoding, where)
        self.units = read_numeric(get_dataset(g, "units", where), f"{where}/units", "i", 1).astype(np.int64)
        self.score = read_numeric(get_dataset(g, "score", where), f"{where}/score", "f", 2).astype(np.float32)
        self.image_index = read_numeric(get_dataset(g, "image_index", where), f"{where}/image_index", "i", 2).astype(np.int64)
        u = len(self.units)
        if self.score.shape[0] != u or self.image_index.shape != self.score.shape:
            raise ScopeError(f"{where}: units, score and image_index disagree in shape")
        if u and ((self.units < 0).any() or (self.units >= slot.units).any() or (np.diff(self.units) <= 0).any()):
            raise ScopeError(f"{where}/units: out of range or not strictly increasing")
        hi = slot.n_images or 0
        if self.image_index.size and ((self.image_index < -1) | (self.image_index >= hi)).any():
            raise ScopeError(f"{where}/image_index: index out of range of the image table ({hi} images)")
        self.fraction = attr_float(g, "fraction", where, 0.01)
        self.per_source = attr_int(g, "per_source", where, 0, default=0)
        self._row = {int(x): i for i, x in enumerate(self.units)}

    def images_of(self, unit: int) -> np.ndarray | None:
        row = self._row.get(unit)
        return None if row is None else self.image_index[row]


@register_layer_element
class StrongestElement(LayerElement):
    name = "strongest"
    encoding = "scope.strongest-images"
    features = ()  # a 1.0 reader that ignores it reads everything else correctly
    unit_field = "label_profile"
    uses_images = True
    panel = "label_profile"

    def panel_context(self, value, links):
        if value is None or not (value.rows or value.strongest or value.note):
            return None
        return {"profile": value}

    def read(self, group, slot):
        return StrongestSection(group, slot)

    def present(self, group, slot, section=None):
        return present_mask(slot.units, (section or self.read(group, slot)).units).astype(bool)

    def unit_value(self, section, unit, slot, art) -> LabelProfile:
        labels = art.image_labels() if section is not None else None
        if labels is None or not labels[1]:
            return LabelProfile()
        ex = art.section(slot.name, "examples")
        top = ex.set("top") if ex is not None else None
        row = top.row_of(unit) if top is not None else None
        return unit_profile(labels[0], labels[1], top.image_index[row] if row is not None else None,
                            section.images_of(unit))

    def info(self, group, slot, section=None):
        return {}

    # -- write: staged = a holder of one Strongest block (a collect run writes it whole)
    def new(self) -> "StrongestStage":
        return StrongestStage()

    def stage(self, section: StrongestSection, slot) -> "StrongestStage":
        return StrongestStage(Strongest(section.units.copy(), section.score.copy(), section.image_index.copy(),
                                        section.fraction, section.per_source))

    def put(self, staged: "StrongestStage", value: Strongest, slot, **options) -> None:
        units = np.asarray(value.units, np.int64).reshape(-1)
        score, ii = np.asarray(value.score, np.float32), np.asarray(value.image_index, np.int64)
        if score.ndim != 2 or score.shape[0] != len(units) or ii.shape != score.shape:
            raise ScopeError(f"strongest images of {slot.name}: score and image_index must be [units, k]")
        if len(units) and ((units < 0).any() or (units >= slot.units).any() or len(set(units.tolist())) != len(units)):
            raise ScopeError(f"strongest images of {slot.name}: units must be distinct and within 0..{slot.units - 1}")
        staged.block = Strongest(units, score, ii, float(value.fraction), int(value.per_source))

    def is_empty(self, staged: "StrongestStage") -> bool:
        return staged.block is None or len(staged.block.units) == 0

    def check_references(self, staged: "StrongestStage", slot) -> None:
        n = slot.n_images
        b = staged.block
        if b is not None and b.image_index.size and (b.image_index.max() >= (n or 0)):
            raise ScopeError(f"strongest images of {slot.name} refer to images beyond the image table ({n or 0} images)")

    def write(self, group, staged: "StrongestStage", slot) -> None:
        b = staged.block
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        g.attrs["fraction"] = float(b.fraction)
        g.attrs["per_source"] = np.int64(b.per_source)
        order = np.argsort(b.units)
        write_array(g, "units", b.units[order], np.int64)
        write_array(g, "score", b.score[order], np.float32)
        write_array(g, "image_index", b.image_index[order], np.int64)

    def check(self, section, slot, art, quick):
        return [], set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> "StrongestStage":
        """Disjoint image sets (shards) merge exactly into the top `fraction` of the merged images; inputs
        over the same images must agree, unless prefer=last."""
        first = inputs[0].section
        n = len(plan.image_paths)
        k = max(1, math.ceil(first.fraction * n)) if n else first.score.shape[1]
        units = sorted(set().union(*(set(inp.section.units.tolist()) for inp in inputs)))
        pos = {u: i for i, u in enumerate(units)}
        score = np.full((len(units), 0), np.nan, np.float32)
        ii = np.full((len(units), 0), -1, np.int64)
        for j, inp in enumerate(inputs):
            sec = inp.section
            s = np.full((len(units), sec.score.shape[1]), np.nan, np.float32)
            m = np.full((len(units), sec.score.shape[1]), -1, np.int64)
            rows = [pos[int(u)] for u in sec.units]
            s[rows], m[rows] = sec.score, remap_images(sec.image_index, inp.image_map)
            if not all(plan.disjoint(o.index, inp.index) for o in inputs[:j]):
                if plan.prefer == "last":
                    score, ii = s, m
                    continue
                plan.conflict(f"{slot.name} strongest images in {inp.name} and an input over the same images")
            score, ii = np.concatenate([score, s], 1), np.concatenate([ii, m], 1)
        picks = merge_ranked(score, ii, k, True, plan.image_groups, first.per_source)
        return StrongestStage(Strongest(np.asarray(units, np.int64), take_ranked(score, picks, np.nan).astype(np.float32),
                                        take_ranked(ii, picks, -1).astype(np.int64), first.fraction, first.per_source))


@dataclass
class StrongestStage:
    block: Strongest | None = None
