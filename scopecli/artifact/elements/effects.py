"""Element `effects` [scope.unit-effects] (format 1.3): what each unit of a layer votes for in the model's output,
written by `scope effects` or `scope collect --effects` (`scopecli/views/effects.py`).

Stored per layer: for every class that had images, the sum over its images of each unit's attribution to the
class's logit (gradient x activation, summed over positions) and the image count, so shards merge exactly (sums
with counts). From them, and stored too for readers without scope: each unit's top-16 positive and top-16
negative classes by mean attribution, and each class's top-32 units with their share of the class's total
positive attribution (LENS-style importance). Optionally the ablation check of each class's top units: the drop
in the class's logit and accuracy on its images when its top-k units are set to their dataset mean at every
position, next to the same for k random units of the layer (several seeded draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scopecli.artifact.h5io import (attr_int, attr_text, check_element, get_dataset, read_numeric, read_strings,
    set_encoding, write_array, write_strings)
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.fileio import did_you_mean

UNIT_K = 16  # classes per sign kept per unit
CLASS_K = 32  # units kept per class
TARGETS = ("label", "predicted", "norm", "index")
METHOD = ("gradient x activation of each unit, summed over positions, of the logit of each image's class "
          "(its label, or the model's prediction), summed per class")


@dataclass
class Ablation:
    """Each checked class (a row of the effects' classes) with its top-k units set to their dataset mean, and k
    random units of the layer in `draws` seeded draws: mean logit drop and accuracy on the class's images."""

    rows: np.ndarray  # int32 [A]: class rows checked (classes with at least `min_images` images)
    units: np.ndarray  # int64 [A, k]: the ablated top units of each
    base_logit: np.ndarray  # float32 [A]: mean logit of the class on its images, nothing ablated
    top_drop: np.ndarray  # float32 [A]: mean logit drop with the top units ablated
    random_drop: np.ndarray  # float32 [A, draws]: the same for random units, per draw
    base_acc: np.ndarray  # float32 [A]: share of the class's images predicted as the class
    top_acc: np.ndarray  # float32 [A]
    random_acc: np.ndarray  # float32 [A, draws]
    k: int = 16
    seed: int = 0
    min_images: int = 3

    def row_of(self, class_row: int) -> int | None:
        hit = np.flatnonzero(self.rows == class_row)
        return int(hit[0]) if len(hit) else None


@dataclass
class EffectsBlock:
    """A layer's class x unit attribution sums (what `scope effects` computes and `pack` adds up)."""

    classes: np.ndarray  # int64 [K]: model output index of each class row, ascending
    class_names: list[str]  # [K]
    images: np.ndarray  # int64 [K]: images of each class
    sums: np.ndarray  # float64 [K, units]: summed attribution
    target: str = "label"  # what each image's class is: its label, the model's prediction, or a scalar output
    ablation: Ablation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        """[K, units] mean attribution per image of the class."""
        return self.sums / np.maximum(self.images, 1)[:, None]

    def unit_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """([units, 2*UNIT_K] class rows, [units, 2*UNIT_K] mean attribution): per unit its top positive classes
        (largest first), then its top negative ones (most negative first); -1 / NaN where there are fewer."""
        mean = self.mean
        n_units = mean.shape[1]
        rows = np.full((n_units, 2 * UNIT_K), -1, np.int32)
        vals = np.full((n_units, 2 * UNIT_K), np.nan, np.float32)
        if mean.shape[0] == 0:
            return rows, vals
        k = min(UNIT_K, mean.shape[0])
        order = np.argsort(-mean, axis=0, kind="stable")[:k]  # [k, units]
        low = np.argsort(mean, axis=0, kind="stable")[:k]
        for j in range(k):
            pos, neg = order[j], low[j]
            pv, nv = mean[pos, np.arange(n_units)], mean[neg, np.arange(n_units)]
            ok_p, ok_n = pv > 0, nv < 0
            rows[ok_p, j], vals[ok_p, j] = pos[ok_p], pv[ok_p]
            rows[ok_n, UNIT_K + j], vals[ok_n, UNIT_K + j] = neg[ok_n], nv[ok_n]
        return rows, vals

    def class_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """([K, CLASS_K] units, [K, CLASS_K] share): per class its units by positive attribution, with their share
        of the class's total positive attribution; -1 / NaN where fewer units attribute positively."""
        pos = np.clip(self.sums, 0, None)
        total = pos.sum(axis=1, keepdims=True)
        share = np.divide(pos, total, out=np.zeros_like(pos), where=total > 0)
        k = min(CLASS_K, pos.shape[1])
        units = np.full((pos.shape[0], CLASS_K), -1, np.int64)
        shares = np.full((pos.shape[0], CLASS_K), np.nan, np.float32)
        if pos.shape[0] and k:
            order = np.argsort(-share, axis=1, kind="stable")[:, :k]
            got = np.take_along_axis(share, order, axis=1)
            keep = got > 0
            units[:, :k] = np.where(keep, order, -1)
            shares[:, :k] = np.where(keep, got, np.nan)
        return units, shares


@dataclass
class EffectRow:
    """One class a unit votes for (attribution > 0) or against (< 0): mean attribution over the class's images."""

    class_name: str
    class_index: int  # the model's output index
    attribution: float
    images: int


@dataclass
class ClassUnit:
    """One of a class's top units: its share of the class's positive attribution, and its mean attribution."""

    unit: int
    share: float
    attribution: float


@dataclass
class ClassEffects:
    """A class page's content for one layer: its top units, and the ablation evidence (None: not checked)."""

    layer: str
    class_name: str
    class_index: int
    images: int
    units: list[ClassUnit]
    target: str
    ablation: dict | None = None  # base_logit, top_drop, random_drop (list), base_acc, top_acc, random_acc, k

    def sentence(self) -> str:
        """'ablating these 16 units lowers golden retriever's logit by 5.2 (random 16: 0.4 ± 0.2)'."""
        a = self.ablation
        if not a:
            return ""
        r = np.asarray(a["random_drop"], float)
        return (f"ablating these {a['k']} units lowers {self.class_name}'s logit by {a['top_drop']:.3g} "
                f"(random {a['k']}: {r.mean():.3g} ± {r.std():.2g})")


class UnitEffects(list):
    """A unit's EffectRows: votes for (largest first), then against (most negative first)."""

    target: str = ""

    @property
    def votes_for(self) -> list[EffectRow]:
        return [r for r in self if r.attribution > 0]

    @property
    def votes_against(self) -> list[EffectRow]:
        return [r for r in self if r.attribution < 0]


def _check_block(b: EffectsBlock, units: int, where: str) -> None:
    k = len(b.classes)
    if b.target not in TARGETS:
        raise ScopeError(f"{where}: target must be one of {', '.join(TARGETS)}, got {b.target!r}")
    if b.sums.shape != (k, units) or b.images.shape != (k,) or len(b.class_names) != k:
        raise ScopeError(f"{where}: classes, class_names, images and sums [classes, {units}] disagree in shape")
    if k and ((np.diff(b.classes) <= 0).any() or (b.classes < 0).any()):
        raise ScopeError(f"{where}/classes: negative or not strictly increasing")
    if (b.images < 0).any() or not np.isfinite(b.sums).all():
        raise ScopeError(f"{where}: negative image counts or non-finite sums")
    a = b.ablation
    if a is not None:
        n = len(a.rows)
        shapes = [a.units.shape == (n, a.k), a.random_drop.shape[0] == n, a.random_acc.shape == a.random_drop.shape]
        shapes += [x.shape == (n,) for x in (a.base_logit, a.top_drop, a.base_acc, a.top_acc)]
        if not all(shapes) or (n and ((a.rows < 0).any() or (a.rows >= k).any() or (a.units < -1).any()
                                      or (a.units >= units).any())):
            raise ScopeError(f"{where}/ablation: rows, units or measures out of range or of the wrong shape")


class EffectsSection:
    def __init__(self, g, slot):
        where = slot.where + "/effects"
        self.where = where
        check_element(g, EffectsElement.encoding, where)
        classes = read_numeric(get_dataset(g, "classes", where), f"{where}/classes", "i", 1).astype(np.int64)
        names = read_strings(get_dataset(g, "class_names", where), f"{where}/class_names")
        images = read_numeric(get_dataset(g, "images", where), f"{where}/images", "i", 1).astype(np.int64)
        sums = read_numeric(get_dataset(g, "sums", where), f"{where}/sums", "f", 2).astype(np.float64)
        target = attr_text(g, "target", where, "label")
        ablation = None
        if "ablation" in g:
            a, w = g["ablation"], where + "/ablation"

            def arr(name, kind, ndim, dtype):
                return read_numeric(get_dataset(a, name, w), f"{w}/{name}", kind, ndim).astype(dtype)

            ablation = Ablation(arr("rows", "i", 1, np.int32), arr("units", "i", 2, np.int64),
                                arr("base_logit", "f", 1, np.float32), arr("top_drop", "f", 1, np.float32),
                                arr("random_drop", "f", 2, np.float32), arr("base_acc", "f", 1, np.float32),
                                arr("top_acc", "f", 1, np.float32), arr("random_acc", "f", 2, np.float32),
                                k=attr_int(a, "k", w, 1, 1 << 20, 16), seed=attr_int(a, "seed", w, default=0),
                                min_images=attr_int(a, "min_images", w, 1, 1 << 30, 3))
        self.block = EffectsBlock(classes, list(names), images, sums, target, ablation)
        _check_block(self.block, slot.units, where)
        self.unit_rows = read_numeric(get_dataset(g, "unit_classes", where), f"{where}/unit_classes", "i", 2)
        self.unit_vals = read_numeric(get_dataset(g, "unit_attribution", where), f"{where}/unit_attribution", "f", 2)
        self.class_units = read_numeric(get_dataset(g, "class_units", where), f"{where}/class_units", "i", 2)
        self.class_shares = read_numeric(get_dataset(g, "class_shares", where), f"{where}/class_shares", "f", 2)
        k = len(classes)
        if self.unit_rows.shape != (slot.units, 2 * UNIT_K) or self.unit_vals.shape != self.unit_rows.shape \
                or self.class_units.shape != (k, CLASS_K) or self.class_shares.shape != self.class_units.shape:
            raise ScopeError(f"{where}: the unit and class tables do not fit the classes and units")
        if (self.unit_rows >= k).any() or (self.unit_rows < -1).any() or (self.class_units >= slot.units).any() \
                or (self.class_units < -1).any():
            raise ScopeError(f"{where}: a unit or class table refers outside the layer's units or classes")

    def unit_effects(self, unit: int) -> UnitEffects:
        b, out = self.block, UnitEffects()
        out.target = b.target
        for r, v in zip(self.unit_rows[unit], self.unit_vals[unit]):
            if r >= 0:
                out.append(EffectRow(b.class_names[r], int(b.classes[r]), float(v), int(b.images[r])))
        return out

    def find_class(self, name) -> int:
        """The class row of a class name or output index (a one-line error naming close names otherwise)."""
        b = self.block
        if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.strip().isdigit()):
            hit = np.flatnonzero(b.classes == int(name))
            if len(hit):
                return int(hit[0])
        key = str(name).strip().lower().replace(" ", "_")
        norm = [c.lower().replace(" ", "_") for c in b.class_names]
        if key in norm:
            return norm.index(key)
        raise ScopeError(f"no class {name!r} has effects in {self.where}" + did_you_mean(str(name), b.class_names, n=3))

    def class_effects(self, layer: str, name) -> ClassEffects:
        b = self.block
        row = self.find_class(name)
        mean = b.mean[row]
        units = [ClassUnit(int(u), float(s), float(mean[u]))
                 for u, s in zip(self.class_units[row], self.class_shares[row]) if u >= 0]
        ab = None
        a = b.ablation
        if a is not None and (i := a.row_of(row)) is not None:
            ab = {"k": a.k, "base_logit": float(a.base_logit[i]), "top_drop": float(a.top_drop[i]),
                  "random_drop": [float(v) for v in a.random_drop[i]], "base_acc": float(a.base_acc[i]),
                  "top_acc": float(a.top_acc[i]), "random_acc": [float(v) for v in a.random_acc[i]],
                  "units": [int(u) for u in a.units[i] if u >= 0]}
        return ClassEffects(layer, b.class_names[row], int(b.classes[row]), int(b.images[row]), units, b.target, ab)


PANEL_ROWS = 8  # classes per sign a unit page lists
TARGET_TEXT = {"label": "its label", "predicted": "the model's prediction", "norm": "the output's norm",
               "index": "one output"}


@dataclass
class VoteRow:
    """A class on a unit page's votes: mean attribution over its images, and its class page (None: no link)."""

    class_name: str
    class_index: int
    attribution: float
    images: int
    url: str | None = None


@dataclass
class EffectsPanel:
    """A unit's votes as its page shows them: the classes it votes for (largest first) and against."""

    target: str
    votes_for: list[VoteRow]
    votes_against: list[VoteRow]

    @property
    def target_text(self) -> str:
        return TARGET_TEXT.get(self.target, self.target)


@register_layer_element
class EffectsElement(LayerElement):
    name = "effects"
    encoding = "scope.unit-effects"
    since = "1.3"
    features = ()  # optional: a reader that ignores it reads everything else correctly
    unit_field = "effects"
    uses_images = False
    panel = "effects"

    def panel_context(self, value, links):
        """The unit's votes for and against (top PANEL_ROWS each), each class linked to its class page where the
        gallery has one (`links.class_page(index)`); None (no panel) for a unit without effects."""
        if not value:
            return None
        page = getattr(links, "class_page", None)

        def rows(items):
            return [VoteRow(r.class_name, r.class_index, r.attribution, r.images,
                            page(r.class_index) if page is not None else None) for r in items[:PANEL_ROWS]]
        return {"effects": EffectsPanel(getattr(value, "target", "") or "label", rows(value.votes_for),
                                        rows(value.votes_against))}

    def read(self, group, slot):
        return EffectsSection(group, slot)

    def present(self, group, slot, section=None):
        sec = section or self.read(group, slot)
        return (sec.block.sums != 0).any(axis=0) if len(sec.block.classes) else np.zeros(slot.units, bool)

    def info(self, group, slot, section=None):
        if group is None:
            return {}
        b = (section or self.read(group, slot)).block
        return {"effects_classes": int(len(b.classes)), "effects_target": b.target,
                "ablation_classes": int(len(b.ablation.rows)) if b.ablation is not None else 0}

    def unit_value(self, section, unit, slot, art) -> UnitEffects:
        return UnitEffects() if section is None else section.unit_effects(unit)

    # -- write: staged = {"block": the layer's EffectsBlock or None}
    def new(self) -> dict:
        return {"block": None}

    def stage(self, section: EffectsSection, slot) -> dict:
        return {"block": section.block}

    def put(self, staged: dict, value: EffectsBlock, slot, **options) -> None:
        """A new block replaces the layer's effects (a rerun computes them over the whole data again)."""
        _check_block(value, slot.units, f"effects of {slot.name}")
        staged["block"] = value

    def is_empty(self, staged: dict) -> bool:
        return staged["block"] is None

    def write(self, group, staged: dict, slot) -> None:
        staged = staged["block"]
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        g.attrs["target"] = staged.target
        g.attrs["method"] = METHOD
        write_array(g, "classes", staged.classes, np.int64)
        write_strings(g, "class_names", staged.class_names)
        write_array(g, "images", staged.images, np.int64)
        write_array(g, "sums", staged.sums, np.float64)
        rows, vals = staged.unit_tables()
        write_array(g, "unit_classes", rows, np.int32)
        write_array(g, "unit_attribution", vals, np.float32)
        units, shares = staged.class_tables()
        write_array(g, "class_units", units, np.int64)
        write_array(g, "class_shares", shares, np.float32)
        a = staged.ablation
        if a is not None:
            ag = g.create_group("ablation")
            set_encoding(ag, "scope.ablation-check", "1.0")
            ag.attrs["k"], ag.attrs["seed"], ag.attrs["min_images"] = np.int64(a.k), np.int64(a.seed), np.int64(a.min_images)
            ag.attrs["method"] = ("each class's top-k units (by share of its positive attribution), then k random units "
                                  "of the layer per draw, set to their dataset mean at every position")
            write_array(ag, "rows", a.rows, np.int32)
            write_array(ag, "units", a.units, np.int64)
            for name in ("base_logit", "top_drop", "random_drop", "base_acc", "top_acc", "random_acc"):
                write_array(ag, name, getattr(a, name), np.float32)

    def check(self, section: EffectsSection, slot, art, quick):
        b, problems = section.block, []
        rows, vals = b.unit_tables()
        units, shares = b.class_tables()
        if not (np.array_equal(rows, section.unit_rows) and np.allclose(vals, section.unit_vals, equal_nan=True)
                and np.array_equal(units, section.class_units)
                and np.allclose(shares, section.class_shares, equal_nan=True)):
            problems.append(f"layer {slot.name}: effects' unit or class tables do not follow from their sums")
        if art is not None and b.target == "label" and art.dataset is not None and len(b.classes):
            have = len(art.dataset.paths)
            if int(b.images.sum()) > have:
                problems.append(f"layer {slot.name}: effects count {int(b.images.sum())} images; the table has {have}")
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan):
        """Shards add up exactly (sums with counts over disjoint images). The ablation check depends on the merged
        top units, so it is kept only when a single input has effects (rerun `scope effects --ablate` after)."""
        blocks = [inp.section.block for inp in inputs]
        if len(blocks) == 1:
            return {"block": blocks[0]}
        targets = {b.target for b in blocks}
        if len(targets) > 1:
            plan.conflict(f"{slot.name} effects computed for different targets ({', '.join(sorted(targets))})")
            return {"block": blocks[-1]}
        classes = np.unique(np.concatenate([b.classes for b in blocks]))
        names = {}
        sums = np.zeros((len(classes), slot.units))
        images = np.zeros(len(classes), np.int64)
        for b in blocks:
            at = np.searchsorted(classes, b.classes)
            sums[at] += b.sums
            images[at] += b.images
            for c, n in zip(b.classes, b.class_names):
                names.setdefault(int(c), n)
        return {"block": EffectsBlock(classes, [names[int(c)] for c in classes], images, sums, blocks[0].target, None)}
