"""Exact merging of collect results from shards (used by `scope pack`).

Why: a sharded collect must equal a single-process one. Examples merge by the same total order the engine
uses (score, then lower image index first); statistics merge through their sketch (counts add, moments by
Chan's formula, min/max), so the reported fields are recomputed from merged state, never averaged.
The caller remaps image indices into one common ImageTable before calling.
"""

from __future__ import annotations

import numpy as np

from scopecli.collect.stats import stats_from_sketch
from scopecli.errors import ScopeError
from scopecli.records import ExampleSet, StatsBlock


def _check_units(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if not np.array_equal(np.asarray(a), np.asarray(b)):
        raise ScopeError(f"cannot merge {what}: the shards hold different units")


def example_order(score: np.ndarray, image_index: np.ndarray, largest: bool) -> np.ndarray:
    """Indices that sort examples best first: by score (desc if largest), ties by lower image index.

    Missing examples (image_index -1 or NaN score) go last.
    """
    score = np.asarray(score, dtype=np.float64)
    missing = (np.asarray(image_index) < 0) | np.isnan(score)
    key = np.where(missing, 0.0, -score if largest else score)
    return np.lexsort((np.asarray(image_index), key, missing))


def merge_examples(a: ExampleSet, b: ExampleSet, largest: bool) -> ExampleSet:
    """Best K examples per unit from two ExampleSets of the same units (K = the larger of the two)."""
    _check_units(a.units, b.units, "examples")
    k = max(a.score.shape[1], b.score.shape[1])
    n_units = len(a.units)
    score = np.full((n_units, k), np.nan, dtype=np.float32)
    image_index = np.full((n_units, k), -1, dtype=np.int64)
    loc = np.zeros((n_units, k, 2), dtype=np.int32)
    box = np.zeros((n_units, k, 4), dtype=np.int32)
    patches: list[list[np.ndarray | None]] = []
    for u in range(n_units):
        s = np.concatenate([a.score[u], b.score[u]])
        ii = np.concatenate([a.image_index[u], b.image_index[u]])
        ll = np.concatenate([a.loc[u], b.loc[u]])
        bb = np.concatenate([a.box[u], b.box[u]])
        pp = list(a.patches[u]) + list(b.patches[u])
        order = example_order(s, ii, largest)
        row: list[np.ndarray | None] = [None] * k
        seen: set[int] = set()
        j = 0
        for i in order:
            if j == k or ii[i] < 0 or np.isnan(s[i]):
                break
            if int(ii[i]) in seen:  # the same image in both inputs: keep one
                continue
            seen.add(int(ii[i]))
            score[u, j], image_index[u, j], loc[u, j], box[u, j] = s[i], ii[i], ll[i], bb[i]
            row[j] = pp[i]
            j += 1
        patches.append(row)
    return ExampleSet(units=np.asarray(a.units, dtype=np.int64).copy(), score=score, image_index=image_index,
                      loc=loc, box=box, patches=patches)


def merge_stats(a: StatsBlock, b: StatsBlock) -> StatsBlock:
    """Statistics of the union of two disjoint sets of positions, from the two sketches."""
    _check_units(a.units, b.units, "statistics")
    for blk in (a, b):
        missing = {"count", "mean", "m2", "hist"} - set(blk.sketch)
        if missing:
            raise ScopeError(f"cannot merge statistics: sketch lacks {', '.join(sorted(missing))}")
    for key in ("kind", "mantissa_bits", "min_exponent", "max_exponent"):
        if a.sketch_attrs.get(key) != b.sketch_attrs.get(key):
            raise ScopeError(f"cannot merge statistics: shards use different sketches ({key})")
    na = np.asarray(a.sketch["count"], dtype=np.int64)
    nb = np.asarray(b.sketch["count"], dtype=np.int64)
    n = na + nb
    ma = np.asarray(a.sketch["mean"], dtype=np.float64)
    mb = np.asarray(b.sketch["mean"], dtype=np.float64)
    delta = mb - ma
    with np.errstate(invalid="ignore", divide="ignore"):
        wb = np.where(n > 0, nb / np.maximum(n, 1), 0.0)
        mean = ma + delta * wb
        m2 = (np.asarray(a.sketch["m2"], dtype=np.float64) + np.asarray(b.sketch["m2"], dtype=np.float64)
              + delta * delta * np.where(n > 0, na.astype(np.float64) * nb / np.maximum(n, 1), 0.0))
    mean = np.where(na == 0, mb, np.where(nb == 0, ma, mean))
    hist = np.asarray(a.sketch["hist"], dtype=np.int64) + np.asarray(b.sketch["hist"], dtype=np.int64)
    return stats_from_sketch(a.units, n, mean, m2, np.fmin(a.min, b.min), np.fmax(a.max, b.max), hist)
