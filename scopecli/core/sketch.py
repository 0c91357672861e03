"""Mergeable per-unit statistics and ranked examples, in numpy alone: what shards and readers agree on.

Why here and numpy-only: `collect` computes these on the device (torch), but `scope pack`, the artifact
and the gallery must merge and interpret them without torch, and a sharded collect must equal a single
run. Statistics merge through their sketch (counts add, moments by Chan's formula, min/max); ranked
examples merge by one total order (score, then lower image index first), so merged shards equal a
single run bit for bit.

Moments are kept as (count, mean, M2) in float64 and merged with Chan's formula. Quantiles come from a
fixed log-linear histogram (the float32 bit pattern truncated to 8 exponent + 5 mantissa bits, like
HdrHistogram / a DDSketch with a linear-interpolated mapping): merging adds counts, so merged shards equal
a single run bit for bit.

Accuracy (documented in the artifact's `sketch_attrs`): for a quantile q the reported value v estimates
x_r, the element of 0-based rank r = floor(q * (count - 1)) in sorted order (numpy's method="lower"), with
  |v - x_r| <= |x_r| / 64                        when 2**-16 <= |x_r| < 2**16,
  |v - x_r| <= 2**-16                            when |x_r| < 2**-16 (reported as 0),
and v is clamped to the exact [min, max]. Beyond +-2**16 the bucket saturates and the exact max/min is
reported. frac_pos is exact (positives are counted in their own buckets; float32 denormals
below 2**-132 count as zero).

Histogram layout (2053 buckets per unit, values ascending; R = 1024 regular buckets per sign, C = R + 2):
  0                  x <= -2**16 (negative overflow)
  1 .. R             negative regular buckets, largest magnitude first
  C - 1              -2**-16 < x < 0 (negative tiny)
  C                  x == 0
  C + 1              0 < x < 2**-16 (positive tiny)
  C + 2 .. 2C - 1    positive regular buckets, ascending
  2C                 x >= 2**16 (positive overflow, also +-inf/nan)
Counts are int64 while accumulating and stored as int32 when they fit (gzip shrinks the empty buckets).
"""

from __future__ import annotations

import numpy as np

from scopecli.core.errors import ScopeError
from scopecli.core.records import QUANTILES, ExampleSet, StatsBlock

MANTISSA_BITS = 5
MIN_EXPONENT = -16
MAX_EXPONENT = 16
REGULAR = (MAX_EXPONENT - MIN_EXPONENT) << MANTISSA_BITS  # 1024 regular buckets per sign
CENTER = REGULAR + 2  # index of the exact-zero bucket (1026)
NUM_BUCKETS = 2 * CENTER + 1  # 2053
RELATIVE_ACCURACY = 1.0 / (2 << MANTISSA_BITS)  # 1/64
KEY_SHIFT = 23 - MANTISSA_BITS  # float32 mantissa bits dropped
KEY_LO = (127 + MIN_EXPONENT) << MANTISSA_BITS  # key of 2**MIN_EXPONENT
KEY_MASK = (1 << (32 - KEY_SHIFT)) - 1

SKETCH_ATTRS = {
    "kind": "loglinear-float32-histogram",
    "mantissa_bits": MANTISSA_BITS,
    "min_exponent": MIN_EXPONENT,
    "max_exponent": MAX_EXPONENT,
    "num_buckets": NUM_BUCKETS,
    "relative_accuracy": RELATIVE_ACCURACY,
    "absolute_accuracy_near_zero": 2.0**MIN_EXPONENT,
    "quantile_rank": "floor(q*(count-1)), 0-based (numpy method=lower)",
    "moments": "count, mean, m2 (Chan parallel merge, float64)",
}


def _bucket_lut() -> np.ndarray:
    """Map the top bits of a float32 ((bits >> KEY_SHIFT) & KEY_MASK: sign, exponent, mantissa) to a bucket."""
    key = np.arange(1 << (32 - KEY_SHIFT), dtype=np.int64)
    negative = key >> (31 - KEY_SHIFT)
    mag = key & ((1 << (31 - KEY_SHIFT)) - 1)  # exponent byte + mantissa bits of |x|
    r = np.clip(mag - KEY_LO, -1, REGULAR)  # -1 tiny, 0..REGULAR-1 regular, REGULAR overflow
    idx = np.where(negative == 1, CENTER - 2 - r, CENTER + 2 + r)
    # key 0 is +-0.0 and float32 denormals below 2**-(127+MANTISSA_BITS): all counted as zero
    idx[0] = idx[1 << (31 - KEY_SHIFT)] = CENTER
    return idx.astype(np.int32)


BUCKET_LUT = _bucket_lut()  # float32 key -> bucket


def bucket_index_numpy(x: np.ndarray) -> np.ndarray:
    """Bucket of every value (reference implementation, used by tests and docs)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    key = (x.view(np.int32) >> KEY_SHIFT) & KEY_MASK
    return BUCKET_LUT[key]


def bucket_representatives() -> np.ndarray:
    """Value reported for each bucket: the midpoint of regular buckets, 0 for tiny/zero, NaN for overflow."""
    rep = np.full(NUM_BUCKETS, np.nan)
    r = np.arange(REGULAR)
    exp = MIN_EXPONENT + (r >> MANTISSA_BITS)
    frac = (r & ((1 << MANTISSA_BITS) - 1)).astype(np.float64)
    lo = np.ldexp(1.0 + frac / (1 << MANTISSA_BITS), exp)
    hi = np.ldexp(1.0 + (frac + 1) / (1 << MANTISSA_BITS), exp)
    mid = (lo + hi) / 2
    rep[CENTER + 2 + r] = mid
    rep[CENTER - 2 - r] = -mid
    rep[CENTER - 1 : CENTER + 2] = 0.0
    return rep


_REPS = bucket_representatives()


def quantiles_from_hist(hist: np.ndarray, vmin: np.ndarray, vmax: np.ndarray) -> np.ndarray:
    """Quantiles (records.QUANTILES) of each row of a [U, NUM_BUCKETS] histogram, clamped to [min, max]."""
    hist = np.asarray(hist, dtype=np.int64)
    count = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    out = np.full((hist.shape[0], len(QUANTILES)), np.nan)
    for j, q in enumerate(QUANTILES):
        rank = np.floor(q * (count - 1)).astype(np.int64)
        b = (cum <= rank[:, None]).sum(axis=1)  # first bucket whose cumulative count exceeds rank
        b = np.minimum(b, NUM_BUCKETS - 1)
        v = _REPS[b]
        v = np.where(b == 0, vmin, v)
        v = np.where(b == NUM_BUCKETS - 1, vmax, v)
        v = np.clip(v, vmin, vmax)
        out[:, j] = np.where(count > 0, v, np.nan)
    return out


def stats_from_sketch(
    units: np.ndarray,
    count: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    vmin: np.ndarray,
    vmax: np.ndarray,
    hist: np.ndarray,
) -> StatsBlock:
    """Build the reported StatsBlock from the mergeable state (the only place fields are derived)."""
    count = np.asarray(count, dtype=np.int64)
    hist64 = np.asarray(hist, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(np.maximum(m2, 0.0) / count)
        frac_pos = hist64[:, CENTER + 1 :].sum(axis=1) / count
    store_dtype = np.int32 if hist64.size == 0 or hist64.max() <= np.iinfo(np.int32).max else np.int64
    return StatsBlock(
        units=np.asarray(units, dtype=np.int64),
        count=count,
        mean=np.asarray(mean, dtype=np.float64),
        std=std.astype(np.float64),
        min=np.asarray(vmin, dtype=np.float64),
        max=np.asarray(vmax, dtype=np.float64),
        frac_pos=frac_pos.astype(np.float64),
        quantiles=quantiles_from_hist(hist64, np.asarray(vmin, np.float64), np.asarray(vmax, np.float64)),
        sketch={
            "count": count,
            "mean": np.asarray(mean, dtype=np.float64),
            "m2": np.asarray(m2, dtype=np.float64),
            "hist": hist64.astype(store_dtype),
        },
        sketch_attrs=dict(SKETCH_ATTRS),
    )


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


def merge_ranked(score: np.ndarray, image_index: np.ndarray, k: int, largest: bool,
                 groups: np.ndarray | None = None, per_source: int = 0) -> np.ndarray:
    """Which candidates survive a top-k (bottom-k) merge: score/image_index [U, M] candidates per unit
    (e.g. two inputs' rows side by side) -> int64 [U, k] candidate columns, best first, -1 where fewer.

    One total order (`example_order`); an image that appears twice (in both inputs) is kept once; with
    `groups` (image index -> source group) and per_source > 0, at most per_source images of one group,
    as collect keeps them. The caller gathers every per-example column with the result, so new columns
    merge the same way.
    """
    score = np.asarray(score)
    image_index = np.asarray(image_index)
    out = np.full((score.shape[0], k), -1, dtype=np.int64)
    for u in range(score.shape[0]):
        s, ii = score[u], image_index[u]
        seen: set[int] = set()
        per_group: dict[int, int] = {}
        j = 0
        for i in example_order(s, ii, largest):
            if j == k or ii[i] < 0 or np.isnan(s[i]):
                break
            if int(ii[i]) in seen:  # the same image in both inputs: keep one
                continue
            if per_source and groups is not None:
                g = int(groups[ii[i]])
                if per_group.get(g, 0) >= per_source:
                    continue
                per_group[g] = per_group.get(g, 0) + 1
            seen.add(int(ii[i]))
            out[u, j] = i
            j += 1
    return out


def take_ranked(values: np.ndarray, picks: np.ndarray, fill) -> np.ndarray:
    """Gather a per-candidate column [U, M, ...] at `merge_ranked` picks [U, k]; `fill` where -1."""
    values = np.asarray(values)
    safe = np.maximum(picks, 0)
    out = np.take_along_axis(values, safe.reshape(safe.shape + (1,) * (values.ndim - 2)), axis=1)
    out = np.array(out, copy=True)
    out[picks < 0] = fill
    return out


def merge_examples(a: ExampleSet, b: ExampleSet, largest: bool) -> ExampleSet:
    """Best K examples per unit from two ExampleSets of the same units (K = the larger of the two)."""
    _check_units(a.units, b.units, "examples")
    k = max(a.score.shape[1], b.score.shape[1])
    cat = lambda x, y: np.concatenate([x, y], axis=1)  # noqa: E731
    score, image_index = cat(a.score, b.score), cat(a.image_index, b.image_index)
    picks = merge_ranked(score, image_index, k, largest)
    patches = [[(list(pa) + list(pb))[i] if i >= 0 else None for i in row]
               for pa, pb, row in zip(a.patches, b.patches, picks)]
    return ExampleSet(units=np.asarray(a.units, dtype=np.int64).copy(),
                      score=take_ranked(score, picks, np.nan).astype(np.float32),
                      image_index=take_ranked(image_index, picks, -1).astype(np.int64),
                      loc=take_ranked(cat(a.loc, b.loc), picks, 0).astype(np.int32),
                      box=take_ranked(cat(a.box, b.box), picks, 0).astype(np.int32), patches=patches)


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


# ---------------------------------------------------------------------------------------- activation sample
# A seeded uniform sample of position vectors that merges exactly: every (image, position) gets a
# pseudo-random 64-bit key from (seed, image path, position) alone, and a sample of size n is the n
# smallest keys. The n smallest keys of a union are the n smallest of the inputs' n smallest, so shards
# and batches never change the sample (bottom-k sampling). Keys tie only by a 2**-64 accident; the
# order (key, image path order, position) makes even that deterministic.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def image_key(seed: int, path: str) -> int:
    """64-bit key of one image under a sample seed (blake2b of the seed and the image's table path)."""
    import hashlib

    h = hashlib.blake2b(f"scope-sample\0{int(seed)}\0{path}".encode("utf-8", "surrogateescape"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def position_keys(seed: int, path: str, n_positions: int) -> np.ndarray:
    """uint64 [n_positions]: the key of each grid position (row-major) of one image (splitmix64 of
    the image key plus the position)."""
    with np.errstate(over="ignore"):
        z = np.uint64(image_key(seed, path)) + (np.arange(1, n_positions + 1, dtype=np.uint64) * _GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def smallest_keys(keys: np.ndarray, image_index: np.ndarray, position: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n smallest entries by (key, image index, flat position), in that order."""
    order = np.lexsort((np.asarray(position), np.asarray(image_index), np.asarray(keys, np.uint64)))
    return order[: max(int(n), 0)]
