"""Monosemanticity, measured with image labels: how much a layer's units each fire on one class.

Why: researchers choosing between neurons and learned features (PCA, NMF, sparse autoencoder latents) ask
whether the features are more monosemantic than the channels. With a labelled dataset, a unit's top-8
examples give two numbers (the label profile's, see `artifact/elements/strongest.py`):

    purity  the share of its top-8 images that carry its most common label
    lift    that class's shrunk lift over its base rate, `lift_score(count, n, base)` (1 = no preference)

A layer reports the median of each over its units. Only examples where the unit fires above its median
(its p50 over all positions; 0 when no statistics) count, and a unit with fewer than `min_examples` such
images is left out (a sparse latent that fires on 3 images has no top-8; its zero-score "examples" are
arbitrary images) and counted as `left_out`. One label per image: a unit for a part (an eye) is
described by the classes of the photos it appears in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from scopecli.artifact.elements.strongest import base_rates, lift_score
from scopecli.data.dataset import read_labels

TOP = 8
MIN_EXAMPLES = 4


@dataclass
class LayerPurity:
    layer: str
    units: int
    counted: int  # units with at least min_examples firing examples
    left_out: int
    median_purity: float
    median_lift: float
    mean_purity: float
    mean_lift: float

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def unit_purity(labels: np.ndarray, base: np.ndarray, images: np.ndarray, scores: np.ndarray, threshold: float,
                top: int = TOP, min_examples: int = MIN_EXAMPLES) -> tuple[float, float] | None:
    """(purity, lift) of one unit from its ranked example images and scores; None when it fires too rarely."""
    keep = (images >= 0) & np.isfinite(scores) & (scores > threshold)
    ii = images[keep][:top]
    lab = labels[ii]
    lab = lab[lab >= 0]
    if len(lab) < min_examples:
        return None
    counts = np.bincount(lab, minlength=len(base))
    lifts = np.array([lift_score(int(counts[c]), len(lab), float(base[c])) if counts[c] else 0.0
                      for c in range(len(base))])
    best = max(np.flatnonzero(counts), key=lambda c: (counts[c], lifts[c], -c))
    return float(counts[best] / len(lab)), float(lifts[best])


def labels_from_file(art, path) -> tuple[np.ndarray, list[str]]:
    """(label per image-table row, class names) from a TSV/CSV file -> label mapping (as `collect --labels`
    reads one), matched to the artifact's image paths; rows it does not name get -1. Lets purity be
    measured under other labels than the ones collected (e.g. coarser superclasses)."""
    mapping, names = read_labels(path)
    table = art.dataset
    if table is None:
        return np.zeros(0, np.int64), names
    by_name = {}
    for key, v in mapping.items():
        by_name.setdefault(key.replace("\\", "/").rsplit("/", 1)[-1], v)
    lab = [mapping.get(p, by_name.get(p.rsplit("/", 1)[-1], -1)) for p in table.paths]
    return np.asarray(lab, np.int64), names


def layer_purity(art, layer: str, top: int = TOP, min_examples: int = MIN_EXAMPLES,
                 labels: tuple[np.ndarray, list[str]] | None = None) -> LayerPurity | None:
    """The layer's median top-`top` purity and lift; None without labels or top examples. `labels`:
    (label per image row, class names) to use instead of the artifact's (`labels_from_file`)."""
    got = labels if labels is not None else art.image_labels()
    ex = art.examples(layer, "top")
    if got is None or ex is None or not got[1] or not (got[0] >= 0).any():
        return None
    labels, names = got
    base = base_rates(labels, len(names))
    stats = art.stats(layer)
    p50 = {}
    if stats is not None:
        for u, q in zip(stats.units, stats.quantiles):
            p50[int(u)] = float(q[0])
    purity, lift = [], []
    units = art.layer(layer).units
    for row, u in enumerate(np.asarray(ex.units)):
        res = unit_purity(labels, base, ex.image_index[row], ex.score[row], p50.get(int(u), 0.0), top, min_examples)
        if res is not None:
            purity.append(res[0])
            lift.append(res[1])
    nan = float("nan")
    return LayerPurity(layer, units, len(purity), units - len(purity),
                       float(np.median(purity)) if purity else nan, float(np.median(lift)) if lift else nan,
                       float(np.mean(purity)) if purity else nan, float(np.mean(lift)) if lift else nan)


def spaces_report(art, layers) -> list[dict]:
    """For every unit space among `layers` (and the base layers they sit on, once): method, k, fit quality
    and label purity; what `scope diff` prints beside its tables."""
    rows, seen = [], set()
    space_layers = [s for s in art.spaces if s["name"] in set(layers)]
    for s in space_layers:
        for name, sp in ((s["base"], None), (s["name"], s)):
            if name in seen or name not in art.layers:
                continue
            seen.add(name)
            pur = layer_purity(art, name)
            q = sp["quality"] if sp else {}
            rows.append({"layer": name, "kind": sp["method"] if sp else "channels", "units": art.layer(name).units,
                         "r2": _f(q.get("r2")), "explained_variance": _f(q.get("explained_variance")),
                         "dead_fraction": _f(q.get("dead_fraction")),
                         "purity": pur.to_json() if pur is not None else None})
    return rows


def _f(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None
