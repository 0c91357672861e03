"""The gallery's comparison page: one page per `scope export --diff` file.

Why: a diff file used to add only matched-unit links to unit pages, so the gallery never showed the
comparison itself, although the CKA table (the classic diagonal band when two networks learn alike) is
the most telling picture `scope diff` makes. The page shows, from the diff file alone: linear and
debiased CKA heatmaps with their permutation floors marked, the best layer of B for each layer of A,
per layer pair the unit-matching summary with its best pairs linked to both units' pages, and (same
architecture) the units that changed most. Both models' pages link to it.

Heatmaps are PNGs drawn with the `scope diff --png` code (compare/drawing.py), one per CKA kind.
Links go only to pages that exist in this export: a unit with no page (nothing stored, or its model
not exported) is named as text.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from scopecli.export.names import slug
from scopecli.compare.drawing import cka_panel, colour_bar

TOP_PAIRS = 8  # best one-to-one pairs listed per layer pair
CHANGED = 6  # units listed as changed most per layer (same architecture)


@dataclass
class UnitRef:
    """A unit named on the comparison page: its label and its page (None: no page in this export)."""

    label: str
    url: str | None


@dataclass
class LayerRef:
    """A layer named on the comparison page and its grid page (None: no page in this export)."""

    name: str
    url: str | None

    @property
    def label(self) -> str:
        return self.name


@dataclass
class BestRow:
    """One layer of A, its best layer of B by debiased CKA, both CKA kinds beside their floors."""

    layer_a: LayerRef
    layer_b: LayerRef | None
    linear: float
    linear_floor: float
    debiased: float
    debiased_floor: float
    same_name: float | None  # debiased CKA with B's layer of the same name, when B has one

    @property
    def above(self) -> bool | None:
        if not (_finite(self.debiased) and _finite(self.debiased_floor)):
            return None
        return self.debiased > self.debiased_floor


@dataclass
class PairSummary:
    """Unit matching between a layer of A and a layer of B (Pearson r over the shared probe images)."""

    layer_a: LayerRef
    layer_b: LayerRef
    units_a: int
    floor: float
    mean_best: float
    mean_assigned: float
    buddies: int
    unmatched: int
    top: list[tuple[UnitRef, UnitRef, float, bool]] = field(default_factory=list)  # (a, b, r, mutual best)


@dataclass
class ChangeSummary:
    """Same architecture: how unit i of A and unit i of B agree, per layer."""

    layer: LayerRef
    median_r: float
    mean_jaccard: float | None
    changed: list[tuple[UnitRef, UnitRef, float]] = field(default_factory=list)


@dataclass
class Heatmap:
    title: str
    src: str
    width: int
    height: int


@dataclass
class ComparisonView:
    """Everything the comparison page shows; `url` is relative to the site root."""

    index: int
    slug: str
    file: str
    a: object  # pages.DiffSide
    b: object
    shared_images: int = 0
    cka_images: int = 0
    permutations: int = 0
    seed: int = 0
    same_architecture: bool = False
    heatmaps: list[Heatmap] = field(default_factory=list)
    best: list[BestRow] = field(default_factory=list)
    pairs: list[PairSummary] = field(default_factory=list)
    changes: list[ChangeSummary] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"d/{self.slug}/index.html"

    @property
    def title(self) -> str:
        return f"{self.a.name} vs {self.b.name}"


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def comparison_slug(index: int, path: str, count: int) -> str:
    from pathlib import Path

    width = max(2, len(str(count)))
    return f"{index + 1:0{width}d}-{slug(Path(path).stem)}"


def heatmap_png(values: np.ndarray, floor: np.ndarray, rows: list[str], cols: list[str], title: str) -> tuple[bytes, int, int]:
    """One CKA panel (a cross where the score does not beat its floor, a frame on each row's best) with
    a colour bar, as PNG bytes, width, height."""
    from PIL import Image

    cell = int(np.clip(720 // max(len(rows), len(cols), 1), 10, 48))
    panel = cka_panel(np.asarray(values, np.float64), np.asarray(floor, np.float64), rows, cols, title, cell)
    bar = colour_bar(panel.height)
    img = Image.new("RGB", (panel.width + bar.width + 10, panel.height), "white")
    img.paste(panel, (0, 0))
    img.paste(bar, (panel.width + 10, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), img.width, img.height


def _mean(values) -> float:
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def build(view: ComparisonView, data: dict, unit_ref, layer_ref, write_image) -> None:
    """Fill `view` from a diff file read by `read_diff` (`data`).

    unit_ref(side, layer, unit) -> UnitRef and layer_ref(side, layer) -> LayerRef name things on the
    page (side "a" or "b"); write_image(name, bytes) stores a picture next to the page.
    """
    la, lb = list(data["layers_a"]), list(data["layers_b"])
    view.shared_images = int(data.get("shared_images", 0))
    view.cka_images = int(data.get("cka_images", view.shared_images))
    view.permutations = int(data.get("permutations", 0))
    view.seed = int(data.get("seed", 0))
    view.same_architecture = bool(data.get("same_architecture", False))
    shape = (len(la), len(lb))
    mats = {k: np.asarray(data[k], np.float64) for k in ("linear", "debiased", "linear_floor", "debiased_floor")}
    if la and lb and all(m.shape == shape for m in mats.values()):
        for kind in ("linear", "debiased"):
            png, w, h = heatmap_png(mats[kind], mats[f"{kind}_floor"], la, lb, f"{kind} CKA")
            name = f"cka-{kind}.png"
            write_image(name, png)
            view.heatmaps.append(Heatmap(f"{kind} CKA", name, w, h))
        for i, name in enumerate(la):
            row = mats["debiased"][i]
            j = -1 if np.isnan(row).all() else int(np.nanargmax(row))
            same = float(mats["debiased"][i, lb.index(name)]) if name in lb else None
            if j < 0:
                view.best.append(BestRow(layer_ref("a", name), None, math.nan, math.nan, math.nan, math.nan, same))
                continue
            view.best.append(BestRow(layer_ref("a", name), layer_ref("b", lb[j]),
                                     float(mats["linear"][i, j]), float(mats["linear_floor"][i, j]),
                                     float(mats["debiased"][i, j]), float(mats["debiased_floor"][i, j]), same))
    for m in data.get("matching", []):
        a_name, b_name = str(m["layer_a"]), str(m["layer_b"])
        best_b = np.asarray(m.get("best_b", []), np.int64).reshape(-1)
        best_c = np.asarray(m.get("best_b_corr", []), np.float64).reshape(-1)
        assign_a = np.asarray(m.get("assign_a", []), np.int64).reshape(-1)
        assign_b = np.asarray(m.get("assign_b", []), np.int64).reshape(-1)
        assign_c = np.asarray(m.get("assign_corr", []), np.float64).reshape(-1)
        buddies = {(int(x), int(y)) for x, y in np.asarray(m.get("buddies", np.zeros((0, 2))), np.int64).reshape(-1, 2)}
        n = min(len(assign_a), len(assign_b), len(assign_c))
        order = np.argsort(-np.nan_to_num(assign_c[:n], nan=-np.inf), kind="stable")[:TOP_PAIRS]
        top = [(unit_ref("a", a_name, int(assign_a[i])), unit_ref("b", b_name, int(assign_b[i])), float(assign_c[i]),
                (int(assign_a[i]), int(assign_b[i])) in buddies) for i in order if np.isfinite(assign_c[i])]
        view.pairs.append(PairSummary(
            layer_ref("a", a_name), layer_ref("b", b_name), units_a=len(best_b), floor=float(m.get("floor", math.nan)),
            mean_best=_mean(best_c), mean_assigned=_mean(assign_c[:n]), buddies=len(buddies),
            unmatched=int(np.asarray(m.get("unmatched_a", [])).size), top=top))
    for ch in data.get("changes", []):
        layer = str(ch["layer"])
        r = np.asarray(ch.get("self_corr", []), np.float64).reshape(-1)
        jac = ch.get("jaccard")
        finite = np.where(np.isfinite(r), r, np.inf)
        worst = [int(u) for u in np.argsort(finite, kind="stable")[:CHANGED] if np.isfinite(finite[u])]
        view.changes.append(ChangeSummary(
            layer_ref("a", layer), float(np.median(r[np.isfinite(r)])) if np.isfinite(r).any() else math.nan,
            _mean(jac) if jac is not None else None,
            [(unit_ref("a", layer, u), unit_ref("b", layer, u), float(r[u])) for u in worst]))
