"""`scope query`: find units across artifacts by class label, by likeness to a unit, or by statistics; and (`--class`,
files with effects) a class's most important units with the ablation evidence.

Why: with dozens of layers and thousands of units per model, researchers need to ask "which units
respond to dogs?" or "which units of model B behave like this unit of model A?" without opening
each unit. Reads only compact arrays (example indices, labels, statistics, probe activations).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scopecli.compare.probes import MIN_SHARED, NO_PROBE_HINT, ProbeSource, open_checked, shared_rows
from scopecli.artifact.elements.strongest import lift_score
from scopecli.core.errors import ScopeError
from scopecli.core.fileio import did_you_mean
from scopecli.core.units import parse_unit_address

SORT_KEYS = ("score", "max", "mean", "std", "frac-positive", "purity", "strength", "lift")


@dataclass
class QueryHit:
    """One unit that answered a query."""

    artifact: str
    layer: str
    unit: int
    score: float  # lift score (--label), correlation (--like), else the unit's max activation
    top_label: str | None  # most frequent class among its top examples
    top_label_frac: float | None
    purity: float | None = None  # --label: fraction of top examples whose class matches
    strength: float | None = None  # --label: mean z-score of the matching top examples
    lift: float | None = None  # --label: purity / the classes' base rate in the dataset (1 = no preference)
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
    """Class indices whose name contains `text` (case-, space- and underscore-insensitive), or whose index is `text`."""
    def norm(x: str) -> str:  # "golden retriever" finds "golden_retriever" and vice versa
        return " ".join(str(x).replace("_", " ").lower().split())

    t = norm(text)
    hit = [i for i, name in enumerate(class_names) if t and t in norm(name)]
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
    """One artifact opened for a query; per-layer statistics and top labels read at most once."""

    def __init__(self, path: str):
        self.path = path
        self.art = open_checked(path)
        self.probes = ProbeSource(self.art, path)
        self._stats: dict[str, dict[str, np.ndarray]] = {}
        self._labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def layers(self, wanted: list[str] | None) -> list[str]:
        if not wanted:
            return list(self.art.layers)
        return [w for w in wanted if w in self.art.layers]

    def stats(self, layer: str) -> dict[str, np.ndarray]:
        if layer not in self._stats:
            self._stats[layer] = _stat_arrays(self.art, layer, self.art.layer(layer).units)
        return self._stats[layer]

    def top_labels(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(class index or -1, fraction) of the most frequent class among each unit's top examples."""
        if layer not in self._labels:
            units = self.art.layer(layer).units
            cls, frac = np.full(units, -1), np.full(units, np.nan)
            table = self.art.dataset
            ex = self.art.examples(layer, "top") if table is not None and table.class_names else None
            if ex is not None:
                c, f = _top_label(_labels_of(ex, table), len(table.class_names))
                cls[np.asarray(ex.units)], frac[np.asarray(ex.units)] = c, f
            self._labels[layer] = (cls, frac)
        return self._labels[layer]


@dataclass
class _Candidates:
    """Columnar answers of one layer of one artifact (objects are made only for the final top N)."""

    source: int
    layer: str
    units: np.ndarray  # int64
    score: np.ndarray  # float64
    purity: np.ndarray | None = None
    strength: np.ndarray | None = None
    lift: np.ndarray | None = None


def _check_layers(sources: list[_Source], wanted: list[str] | None) -> None:
    if not wanted:
        return
    for w in wanted:
        if not any(w in s.art.layers for s in sources):
            names = sorted({n for s in sources for n in s.art.layers})
            raise ScopeError(f"no layer named {w} in any of the given artifacts"
                             + did_you_mean(w, names, n=3, listing="`scope info FILE` lists a file's layers"))


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
    ref = _like_reference(like) if like is not None else None
    sources: list[_Source] = []
    try:
        for p in dict.fromkeys(str(p) for p in paths):
            sources.append(_Source(p))
        _check_layers(sources, layers)
        cands: list[_Candidates] = []
        matched_any_class = False
        for i, src in enumerate(sources):
            if label is not None:
                c, ok = _label_candidates(i, src, label, layers)
                matched_any_class |= ok
                cands += c
            elif ref is not None:
                cands += _like_candidates(i, src, ref, layers)
            else:
                cands += _stat_candidates(i, src, layers)
        if label is not None and not matched_any_class:
            if not any(s.art.dataset is not None and s.art.dataset.class_names and (s.art.dataset.label >= 0).any()
                       for s in sources):
                raise ScopeError("none of the given artifacts has labelled dataset examples: run `scope collect` "
                                 "with class folders or --labels")
            raise ScopeError(f"no class name contains '{label}' in the given artifacts")
        if ref is not None and not ref["any_shared"]:
            raise ScopeError(
                f"no artifact shares at least {MIN_SHARED} probe images with {ref['path']}: {NO_PROBE_HINT}")
        return _rank(sources, cands, top, min_max, min_frac_positive, sort)
    finally:
        for s in sources:
            s.art.close()


def _rank(sources, cands, top, min_max, min_frac_positive, sort) -> list[QueryHit]:
    """Filter, sort (descending; ties by strength, then artifact, layer, unit) and build the top hits."""
    if not cands:
        return []
    key = {"frac-positive": "frac_pos"}.get(sort, sort)
    need_stats = min_max is not None or min_frac_positive is not None or key in ("max", "mean", "std", "frac_pos")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("src", "layer", "unit", "score", "purity", "strength", "lift",
                                                          "max", "mean", "std", "frac_pos")}
    layer_names: list[str] = []
    for li, c in enumerate(cands):
        n = len(c.units)
        layer_names.append(c.layer)
        cols["src"].append(np.full(n, c.source))
        cols["layer"].append(np.full(n, li))
        cols["unit"].append(c.units)
        cols["score"].append(c.score)
        cols["purity"].append(c.purity if c.purity is not None else np.full(n, np.nan))
        cols["strength"].append(c.strength if c.strength is not None else np.full(n, np.nan))
        cols["lift"].append(c.lift if c.lift is not None else np.full(n, np.nan))
        st = sources[c.source].stats(c.layer) if need_stats else None
        for k in ("max", "mean", "std", "frac_pos"):
            cols[k].append(st[k][c.units] if st is not None else np.full(n, np.nan))
    a = {k: np.concatenate(v) for k, v in cols.items()}
    keep = np.ones(len(a["unit"]), bool)
    with np.errstate(invalid="ignore"):
        if min_max is not None:
            keep &= a["max"] >= min_max
        if min_frac_positive is not None:
            keep &= a["frac_pos"] >= min_frac_positive
    idx = np.nonzero(keep)[0]
    primary = np.nan_to_num(a[key][idx], nan=-np.inf)
    tie = np.nan_to_num(a["strength"][idx], nan=-np.inf)
    # lexsort: last key is primary; stable for equal keys -> artifact order, layer order, unit order
    order = idx[np.lexsort((a["unit"][idx], a["layer"][idx], a["src"][idx], -tie, -primary))][:top]
    hits = []
    for i in order:
        src, layer, u = sources[int(a["src"][i])], layer_names[int(a["layer"][i])], int(a["unit"][i])
        st = src.stats(layer)
        cls, frac = src.top_labels(layer)
        table = src.art.dataset
        hits.append(QueryHit(
            artifact=src.path, layer=layer, unit=u, score=float(a["score"][i]),
            top_label=table.class_names[cls[u]] if cls[u] >= 0 else None,
            top_label_frac=float(frac[u]) if cls[u] >= 0 else None,
            purity=None if np.isnan(a["purity"][i]) else float(a["purity"][i]),
            strength=None if np.isnan(a["strength"][i]) else float(a["strength"][i]),
            lift=None if np.isnan(a["lift"][i]) else float(a["lift"][i]),
            **{k: float(st[k][u]) for k in ("max", "mean", "std", "frac_pos")},
        ))
    return hits


def _label_candidates(si: int, src: _Source, label: str, layers: list[str] | None) -> tuple[list[_Candidates], bool]:
    table = src.art.dataset
    if table is None or not table.class_names:
        return [], False
    classes = _match_classes(table.class_names, label)
    if classes.size == 0:
        return [], False
    out = []
    for layer in src.layers(layers):
        ex = src.art.examples(layer, "top")
        if ex is None:
            continue
        labels = _labels_of(ex, table)
        valid = labels >= 0
        match = np.isin(labels, classes) & valid
        n_valid = valid.sum(axis=1)
        n_match = match.sum(axis=1)
        purity = np.where(n_valid > 0, n_match / np.maximum(n_valid, 1), 0.0)
        rows = np.nonzero(purity > 0)[0]
        if rows.size == 0:
            continue
        ex_units = np.asarray(ex.units, dtype=np.int64)
        st = src.stats(layer)
        mu, sd = st["mean"][ex_units][rows, None], st["std"][ex_units][rows, None]
        score = np.asarray(ex.score, dtype=np.float64)[rows]
        ok = np.isfinite(sd) & (sd > 0)
        z = np.where(ok, (score - mu) / np.where(ok, sd, 1.0), score)  # z-score; raw score without stats
        m = match[rows]
        strength = np.where(m, z, 0.0).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
        # rank by the label profile: lift over the classes' base rate, shrunk toward 1 for few examples
        labelled = table.label[table.label >= 0]
        base = float(np.isin(labelled, classes).mean()) if len(labelled) else 0.0
        lift = purity[rows] / base if base > 0 else np.zeros(len(rows))
        score = np.array([lift_score(int(nm), int(nv), base) for nm, nv in zip(n_match[rows], n_valid[rows])])
        out.append(_Candidates(si, layer, ex_units[rows], score, purity[rows], strength, lift))
    return out, True


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
        vec = np.asarray(acts[:, unit], dtype=np.float64)
        fin = vec[np.isfinite(vec)]
        if fin.size == 0 or fin.max() == fin.min():
            raise ScopeError(f"--like {like}: this unit is constant on the probe images "
                             f"({fin[0] if fin.size else 'no finite value'}), so no correlation is defined")
        return {"path": path, "resolved": str(Path(path).resolve()), "layer": layer, "unit": unit,
                "vec": vec, "shas": shas, "any_shared": False}
    finally:
        art.close()


def _like_candidates(si: int, src: _Source, ref: dict, layers: list[str] | None) -> list[_Candidates]:
    out = []
    same_file = str(Path(src.path).resolve()) == ref["resolved"]
    last: tuple[list[str], tuple] | None = None
    for layer in src.layers(layers):
        got = src.probes.find(layer)
        if got is None:
            continue
        acts, shas = got
        if last is None or last[0] != shas:  # layers of one collect run share their probe images
            last = (shas, shared_rows(ref["shas"], shas))
        ra, rb, _ = last[1]
        y = np.asarray(acts[rb], dtype=np.float32)
        x = ref["vec"][ra]
        # float16 probes overflow to inf for huge activations: use only images finite in both
        if not (np.isfinite(y).all() and np.isfinite(x).all()):  # (no arithmetic: inf - inf would warn)
            ok = np.isfinite(x) & np.isfinite(y).all(axis=1)
            x, y = x[ok], y[ok]
        if len(x) < MIN_SHARED:
            continue
        ref["any_shared"] = True
        x = (x - x.mean()).astype(np.float32)
        nx = float(np.sqrt(np.dot(x.astype(np.float64), x.astype(np.float64))))
        y -= y.mean(axis=0, dtype=np.float64).astype(np.float32)
        ny = np.sqrt(np.einsum("ij,ij->j", y, y).astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where((ny > 0) & (nx > 0), (x @ y).astype(np.float64) / (nx * np.where(ny > 0, ny, 1.0)), np.nan)
        if same_file and layer == ref["layer"]:
            r[ref["unit"]] = np.nan  # the unit itself is not an answer
        keep = np.nonzero(np.isfinite(r))[0]
        out.append(_Candidates(si, layer, keep.astype(np.int64), np.clip(r[keep], -1.0, 1.0)))
    return out


def _stat_candidates(si: int, src: _Source, layers: list[str] | None) -> list[_Candidates]:
    out = []
    for layer in src.layers(layers):
        mx = src.stats(layer)["max"]
        keep = np.nonzero(np.isfinite(mx))[0]
        if keep.size:
            out.append(_Candidates(si, layer, keep.astype(np.int64), mx[keep]))
    return out


# ----------------------------------------------------------------------------------------- --class (effects)


def _norm_class(text) -> str:
    return " ".join(str(text).replace("_", " ").lower().split())


def _close_classes(name: str, names: list[str], n: int = 3) -> str:
    """'; did you mean a, b?' for the class names containing `name` or closest to it (case, '_' ignored)."""
    want = _norm_class(name)
    norm = {}
    for c in names:
        norm.setdefault(_norm_class(c), c)
    close = [c for k, c in norm.items() if want and want in k][:n]
    close += [norm[k] for k in difflib.get_close_matches(want, list(norm), n=n, cutoff=0.5) if norm[k] not in close]
    if close:
        return f"; did you mean {', '.join(close[:n])}?"
    return did_you_mean(name, names, "class with effects", n=n)


def class_report(art, name, layers: list[str] | None = None, top: int = 20, path=None) -> dict:
    """A class's top units by importance at each layer with effects (share of the class's positive attribution,
    mean attribution) and the ablation evidence: `scope query --class` on one open artifact (and /api/class).
    One-line errors for a file without effects, a layer without them, or an unknown class (with close names)."""
    path = art.path if path is None else path
    base = Path(str(path)).name
    text = str(name).strip()
    if not text:
        raise ScopeError("--class needs a class name or the model's output index, e.g. --class 'golden retriever'")
    if top < 1:
        raise ScopeError(f"--top must be at least 1, got {top}")
    have = art.effect_layers()
    if not have:
        raise ScopeError(f"{base} has no effects: run scope effects {base} --data DIR")
    for w in layers or []:
        if w not in have:
            raise ScopeError(f"{base} has no effects at layer {w}" + did_you_mean(w, have, "layer with effects", n=3))
    rows, names = [], []
    for layer in layers or have:
        block = art.effects(layer)
        names += [c for c in block.class_names if c not in names]
        try:
            ce = art.class_units(layer, text)
        except ScopeError:  # not a class of this layer's effects
            continue
        rows.append({"layer": layer, "class": ce.class_name, "class_index": ce.class_index, "images": ce.images,
                     "target": ce.target,
                     "units": [{"unit": u.unit, "share": u.share, "attribution": u.attribution} for u in ce.units[:top]],
                     "ablation": ce.ablation, "sentence": ce.sentence()})
    if not rows:
        raise ScopeError(f"no class {text!r} has effects in {base}" + _close_classes(text, names))
    first = rows[0]
    return {"artifact": str(path), "class": first["class"], "class_index": first["class_index"],
            "images": max(r["images"] for r in rows), "target": first["target"], "layers": rows}


def run_class_query(paths: list[str | Path], name: str, layers: list[str] | None = None, top: int = 20) -> list[dict]:
    """`scope query FILE... --class NAME`: `class_report` of every given file that has the class (one-line error
    when none has effects, or none has the class)."""
    if not paths:
        raise ScopeError("give at least one artifact")
    files = list(dict.fromkeys(str(p) for p in paths))
    out, errors = [], []
    for p in files:
        art = open_checked(p)
        try:
            out.append(class_report(art, name, layers, top, p))
        except ScopeError as exc:
            if len(files) == 1:
                raise
            errors.append(str(exc))
        finally:
            art.close()
    if not out:
        raise ScopeError(next((e for e in errors if "no class" in e or "at layer" in e),
                              "none of the given artifacts has effects: run scope effects FILE --data DIR"))
    return out
