"""`scope query`: find units across artifacts by class label, by likeness to a unit, or by statistics.

Why: with dozens of layers and thousands of units per model, researchers need to ask "which units
respond to dogs?" or "which units of model B behave like this unit of model A?" without opening
each unit. Reads only compact arrays (example indices, labels, statistics, probe activations).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scopecli.compare.probes import MIN_SHARED, NO_PROBE_HINT, ProbeSource, open_checked, shared_rows
from scopecli.errors import ScopeError
from scopecli.units import parse_unit_address

SORT_KEYS = ("score", "max", "mean", "std", "frac-positive", "purity", "strength")


@dataclass
class QueryHit:
    """One unit that answered a query."""

    artifact: str
    layer: str
    unit: int
    score: float  # purity (--label), correlation (--like), else the unit's max activation
    top_label: str | None  # most frequent class among its top examples
    top_label_frac: float | None
    purity: float | None = None  # --label: fraction of top examples whose class matches
    strength: float | None = None  # --label: mean z-score of the matching top examples
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    frac_pos: float | None = None

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def parse_like(text: str) -> tuple[str, str, int]:
    """`FILE:layer:unit` -> (file, layer, unit); the file may itself contain colons."""
    head, sep, _ = str(text).rpartition(":")
    path, sep2, _layer = head.rpartition(":")
    if not sep or not sep2 or not path:
        raise ScopeError(f"--like '{text}' must look like FILE:layer:unit, e.g. resnet50.h5:layer4.2:117")
    layer, unit = parse_unit_address(text[len(path) + 1:])
    return path, layer, unit


def _match_classes(class_names: list[str], text: str) -> np.ndarray:
    """Class indices whose name contains `text` (case-insensitive), or whose index is `text`."""
    t = text.strip().lower()
    hit = [i for i, name in enumerate(class_names) if t and t in str(name).lower()]
    if t.isdigit() and int(t) < len(class_names):
        hit.append(int(t))
    return np.array(sorted(set(hit)), dtype=np.int64)


def _labels_of(ex, table) -> np.ndarray:
    """Class index of each top example [U, K]; -1 where missing or unlabelled."""
    idx = np.asarray(ex.image_index, dtype=np.int64)
    lab = np.asarray(table.label, dtype=np.int64)
    out = np.where(idx >= 0, lab[np.clip(idx, 0, max(len(lab) - 1, 0))], -1) if len(lab) else np.full(idx.shape, -1)
    return out


def _top_label(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent class per row (ignoring -1) and its fraction among the labelled examples."""
    u = labels.shape[0]
    if n_classes <= 0 or labels.size == 0:
        return np.full(u, -1), np.full(u, np.nan)
    valid = labels >= 0
    flat = (np.arange(u)[:, None] * n_classes + np.where(valid, labels, 0))[valid]
    counts = np.bincount(flat, minlength=u * n_classes).reshape(u, n_classes)
    best = counts.argmax(axis=1)
    n_valid = valid.sum(axis=1)
    frac = np.where(n_valid > 0, counts[np.arange(u), best] / np.maximum(n_valid, 1), np.nan)
    return np.where(n_valid > 0, best, -1), frac


def _stat_arrays(art, layer: str, units: int) -> dict[str, np.ndarray]:
    st = art.stats(layer)
    out = {k: np.full(units, np.nan) for k in ("max", "mean", "std", "frac_pos")}
    if st is not None:
        for k in out:
            out[k][np.asarray(st.units)] = np.asarray(getattr(st, k), dtype=np.float64)
    return out


class _Source:
    """One artifact opened for a query, with the per-layer arrays the query needs, read once."""

    def __init__(self, path: str):
        self.path = path
        self.art = open_checked(path)
        self.probes = ProbeSource(self.art, path)

    def layers(self, wanted: list[str] | None) -> list[str]:
        if not wanted:
            return list(self.art.layers)
        return [w for w in wanted if w in self.art.layers]


def _check_layers(sources: list[_Source], wanted: list[str] | None) -> None:
    if not wanted:
        return
    for w in wanted:
        if not any(w in s.art.layers for s in sources):
            import difflib

            names = sorted({n for s in sources for n in s.art.layers})
            close = difflib.get_close_matches(w, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ScopeError(f"no layer named {w} in any of the given artifacts{hint}")


def run_query(
    paths: list[str | Path],
    label: str | None = None,
    like: str | None = None,
    layers: list[str] | None = None,
    top: int = 20,
    min_max: float | None = None,
    min_frac_positive: float | None = None,
    sort: str = "score",
) -> list[QueryHit]:
    """Units of the given artifacts answering the query, best first (at most `top`)."""
    if not paths:
        raise ScopeError("give at least one artifact")
    if label is not None and like is not None:
        raise ScopeError("use either --label or --like, not both")
    if sort not in SORT_KEYS:
        raise ScopeError(f"--sort must be one of {', '.join(SORT_KEYS)}, got '{sort}'")
    if top < 1:
        raise ScopeError(f"--top must be at least 1, got {top}")
    if label is not None and not label.strip():
        raise ScopeError("--label needs some text, e.g. --label dog")
    sources = [_Source(str(p)) for p in dict.fromkeys(str(p) for p in paths)]
    try:
        _check_layers(sources, layers)
        ref = _like_reference(like) if like is not None else None
        hits: list[QueryHit] = []
        matched_any_class = False
        for src in sources:
            if label is not None:
                h, ok = _label_hits(src, label, layers)
                matched_any_class |= ok
                hits += h
            elif ref is not None:
                hits += _like_hits(src, ref, layers)
            else:
                hits += _stat_hits(src, layers)
        if label is not None and not matched_any_class:
            raise ScopeError(f"no class name contains '{label}' in the given artifacts")
        if ref is not None and not hits and not ref["any_shared"]:
            raise ScopeError(
                f"no artifact shares at least {MIN_SHARED} probe images with {ref['path']}: {NO_PROBE_HINT}")
    finally:
        for s in sources:
            s.art.close()
    if min_max is not None:
        hits = [h for h in hits if h.max is not None and not math.isnan(h.max) and h.max >= min_max]
    if min_frac_positive is not None:
        hits = [h for h in hits if h.frac_pos is not None and not math.isnan(h.frac_pos)
                and h.frac_pos >= min_frac_positive]
    key = {"frac-positive": "frac_pos"}.get(sort, sort)

    def order(h: QueryHit):
        v = getattr(h, key)
        v = -math.inf if v is None or math.isnan(v) else v
        tie = h.strength if h.strength is not None and not math.isnan(h.strength) else -math.inf
        return (-v, -tie, h.artifact, h.layer, h.unit)

    hits.sort(key=order)
    return hits[:top]


def _label_hits(src: _Source, label: str, layers: list[str] | None) -> tuple[list[QueryHit], bool]:
    table = src.art.dataset
    if table is None or not table.class_names:
        return [], False
    classes = _match_classes(table.class_names, label)
    if classes.size == 0:
        return [], False
    hits = []
    for layer in src.layers(layers):
        ex = src.art.examples(layer, "top")
        if ex is None:
            continue
        units = src.art.layer(layer).units
        labels = _labels_of(ex, table)
        valid = labels >= 0
        match = np.isin(labels, classes) & valid
        n_valid = valid.sum(axis=1)
        purity = np.where(n_valid > 0, match.sum(axis=1) / np.maximum(n_valid, 1), 0.0)
        stats = _stat_arrays(src.art, layer, units)
        ex_units = np.asarray(ex.units, dtype=np.int64)
        mu, sd = stats["mean"][ex_units], stats["std"][ex_units]
        score = np.asarray(ex.score, dtype=np.float64)
        z = np.where(np.isfinite(sd[:, None]) & (sd[:, None] > 0), (score - mu[:, None]) / np.where(
            sd[:, None] > 0, sd[:, None], 1.0), score)
        with np.errstate(invalid="ignore"):
            strength = np.where(match.any(axis=1), np.where(match, z, 0.0).sum(axis=1) /
                                np.maximum(match.sum(axis=1), 1), np.nan)
        top_cls, top_frac = _top_label(labels, len(table.class_names))
        for row in np.nonzero(purity > 0)[0]:
            u = int(ex_units[row])
            hits.append(QueryHit(
                artifact=src.path, layer=layer, unit=u, score=float(purity[row]),
                top_label=table.class_names[top_cls[row]] if top_cls[row] >= 0 else None,
                top_label_frac=float(top_frac[row]), purity=float(purity[row]), strength=float(strength[row]),
                **{k: float(v[u]) for k, v in stats.items()},
            ))
    return hits, True


def _like_reference(like: str) -> dict:
    path, layer, unit = parse_like(like)
    art = open_checked(path)
    try:
        src = ProbeSource(art, path)
        src.require_layer(layer)
        units = art.layer(layer).units
        if unit >= units:
            raise ScopeError(f"--like {like}: unit {unit} is out of range for layer {layer} (0..{units - 1})")
        acts, shas = src.get(layer)
        return {"path": path, "resolved": str(Path(path).resolve()), "layer": layer, "unit": unit,
                "vec": np.asarray(acts[:, unit], dtype=np.float64), "shas": shas, "any_shared": False}
    finally:
        art.close()


def _like_hits(src: _Source, ref: dict, layers: list[str] | None) -> list[QueryHit]:
    hits = []
    same_file = str(Path(src.path).resolve()) == ref["resolved"]
    table = src.art.dataset
    for layer in src.layers(layers):
        got = src.probes._load(layer)
        if got is None:
            continue
        acts, shas = got
        ra, rb, common = shared_rows(ref["shas"], shas)
        if len(common) < MIN_SHARED:
            continue
        ref["any_shared"] = True
        x = ref["vec"][ra]
        x = x - x.mean()
        nx = np.sqrt((x * x).sum())
        y = np.asarray(acts, dtype=np.float64)[rb]
        y -= y.mean(axis=0)
        ny = np.sqrt((y * y).sum(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where((ny > 0) & (nx > 0), (x @ y) / (nx * np.where(ny > 0, ny, 1.0)), np.nan)
        if same_file and layer == ref["layer"]:
            r[ref["unit"]] = np.nan  # the unit itself is not an answer
        units = src.art.layer(layer).units
        stats = _stat_arrays(src.art, layer, units)
        keep = np.nonzero(np.isfinite(r))[0]
        # only the best few per layer need labels; the overall top-N is cut later
        keep = keep[np.argsort(-r[keep], kind="stable")[:200]]
        labels_top = _unit_top_labels(src.art, layer, table)
        for u in keep:
            name, frac = labels_top.get(int(u), (None, None))
            hits.append(QueryHit(
                artifact=src.path, layer=layer, unit=int(u), score=float(r[u]), top_label=name,
                top_label_frac=frac, **{k: float(v[u]) for k, v in stats.items()},
            ))
    return hits


def _unit_top_labels(art, layer: str, table) -> dict[int, tuple[str, float]]:
    if table is None or not table.class_names:
        return {}
    ex = art.examples(layer, "top")
    if ex is None:
        return {}
    cls, frac = _top_label(_labels_of(ex, table), len(table.class_names))
    return {int(u): (table.class_names[c], float(f)) for u, c, f in zip(ex.units, cls, frac) if c >= 0}


def _stat_hits(src: _Source, layers: list[str] | None) -> list[QueryHit]:
    hits = []
    table = src.art.dataset
    for layer in src.layers(layers):
        units = src.art.layer(layer).units
        stats = _stat_arrays(src.art, layer, units)
        if np.isnan(stats["max"]).all():
            continue
        labels_top = _unit_top_labels(src.art, layer, table)
        for u in np.nonzero(np.isfinite(stats["max"]))[0]:
            name, frac = labels_top.get(int(u), (None, None))
            hits.append(QueryHit(
                artifact=src.path, layer=layer, unit=int(u), score=float(stats["max"][u]), top_label=name,
                top_label_frac=frac, **{k: float(v[u]) for k, v in stats.items()},
            ))
    return hits
