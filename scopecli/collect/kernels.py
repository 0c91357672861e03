"""Optional compiled loops for collect's pass 1 on CPU (numba, when it imports).

Why: pass 1 must cost little more than the forward it rides on. On CPU its floor is one histogram increment per
activation (5.5 M per resnet50 image over its 16 default layers); in torch that takes five passes over every
value (shift, mask, bucket lookup, unit offset, index_add) and four more for max, min, sum and norm. `reduce`
does all of it in one pass over each map (the increments one value at a time, eight +0.0 in a row, ReLU's dead
regions, counted at once; max, min and sums on vector registers while the map is in cache) and finds the first
position of a map's extreme there when the map can enter a top-k list. `merge` then updates a top/bottom-k
tracker without a torch op, and `locate` serves the torch path's merge (source groups). Counts, max, min,
winners, positions and heatmaps are bit for bit those of the torch path; sums are float64 (torch's are
float32), so the moments are closer to exact. Without numba (the `fast` extra) or with SCOPE_COLLECT_NUMBA=0,
collect uses the torch ops.

The loops are plain module-level functions; `_compile` makes numba functions of them (numba is imported then, in
the background: `prepare`). The three entry points have explicit signatures over C-contiguous arrays (the whole
batch, or a flat view with row strides): compiled once, so no view of a new unit range or layout triggers a compile
in the middle of a run. Their Python wrappers (`reduce`, `locate`, `merge`) call them with named arguments.
"""

from __future__ import annotations

import os
import threading
import types
from typing import NamedTuple

import numpy as np
import torch

from scopecli.core import devices
from scopecli.core.sketch import BUCKET_LUT, CENTER, KEY_MASK, KEY_SHIFT, NUM_BUCKETS

_STATE: dict[str, object] = {}  # "kernels": the Loops once compiled, or None when unusable
_LOCK = threading.Lock()
_LAST = np.iinfo(np.int64).max  # image index an empty slot sorts by (topk._LAST)


class Loops(NamedTuple):
    """The compiled entry points (numba dispatchers with explicit signatures)."""

    reduce: object
    locate: object
    merge: object


# The loops below are plain Python. `_compile` turns each into a numba function whose module-level names (the other
# loops, the sketch constants, _LAST) resolve to the compiled loops and to constants frozen into the code.


def _first(values, row, p_len, t):  # pragma: no cover (compiled)
    """First position of t in the map values[row:row + p_len] (of a NaN when t is NaN); -1 when none."""
    if t != t:
        for p in range(p_len):
            if values[row + p] != values[row + p]:
                return p
        return -1
    for p in range(p_len):
        if values[row + p] == t:
            return p
    return -1


def _position(values, row, p_len, t, known):  # pragma: no cover (compiled)
    """First position of t in the map at row: `known` (a first position of the map's extreme found by
    `reduce`, -1: none) when the map holds t there, else a scan; -1 when the map does not hold t."""
    if known >= 0:
        v = values[row + known]
        if v == t or (t != t and v != v):
            return known
    return _first(values, row, p_len, t)


def _cut(values, row, p_len, found, grid_w, out):  # pragma: no cover (compiled)
    """The heatmap window around position `found` of the map at row into out [hs, ws] (crops.heat_origins)."""
    hs, ws = out.shape
    oy = min(max(found // grid_w - hs // 2, 0), p_len // grid_w - hs)
    ox = min(max(found % grid_w - ws // 2, 0), grid_w - ws)
    for y in range(hs):
        at = row + (oy + y) * grid_w + ox
        for x in range(ws):
            out[y, x] = values[at + x]


def _moments(values, bits):  # pragma: no cover (compiled, fastmath={"reassoc"})
    """(max key, min key, sum, sum of squares) of one map. Max and min compare order-preserving integer keys
    of the float bits (a NaN's key is beyond +-inf's) and the sums may be reordered: all of it runs on
    vector registers. Only these sums are reassociated (fastmath), never a comparison."""
    kmax = np.int32(-2147483648)
    kmin = np.int32(2147483647)
    s = 0.0
    q = 0.0
    for p in range(values.shape[0]):
        b = bits[p]
        k = b ^ ((b >> 31) & 0x7FFFFFFF)
        kmax = max(kmax, k)
        kmin = min(kmin, k)
        d = np.float64(values[p])
        s += d
        q += d * d
    return kmax, kmin, s, q


def _extremes(row, bits, keys, as_float):  # pragma: no cover (compiled)
    """(max, min, sum, sum of squares) of one map row [P] (bits: its int32 view): max and min NaN when it holds
    one, like torch.amax. keys: int32 scratch [2], as_float: its float32 view."""
    kmax, kmin, s, q = _moments(row, bits)
    keys[0] = kmax ^ ((kmax >> 31) & 0x7FFFFFFF)  # keys back to float bits
    keys[1] = kmin ^ ((kmin >> 31) & 0x7FFFFFFF)
    top = as_float[0]
    low = as_float[1]
    if s != s:  # a NaN, or +inf and -inf: the map's max and min are NaN only in the first case
        if _first(row, 0, row.shape[0], np.nan) >= 0:
            top = np.nan
            low = np.nan
    return top, low, s, q


def _reduce_loop(values, bits, lo, hi, lut, counts, second, vmax, vmin, sums, sumsq, top_bar, bottom_bar, at_max,
                 at_min):  # pragma: no cover (compiled)
    """Units lo:hi of a batch values [N, C, P] (bits: the same memory as int32). Counts each value into its
    unit's histogram (counts, unit u's buckets at u * NUM_BUCKETS; odd positions into the copy `second`
    further on when second > 0, so a run of equal values alternates between two counters; eight +0.0 in a
    row are counted at once), then, while the map is in cache, writes its max and min, sum and sum of squares
    (`_extremes`) into [N, C] outputs. A map whose max is above top_bar[u - lo] (or NaN) gets the first position
    of its max in at_max (else -1); likewise bottom_bar / at_min."""
    n_img, _, p_len = values.shape
    whole = p_len - p_len % 8
    odd = second
    keys = np.empty(2, np.int32)
    as_float = keys.view(np.float32)
    for u in range(lo, hi):
        base = u * NUM_BUCKETS
        zeros = 0
        for n in range(n_img):
            for p0 in range(0, whole, 8):
                b0, b1, b2, b3 = bits[n, u, p0], bits[n, u, p0 + 1], bits[n, u, p0 + 2], bits[n, u, p0 + 3]
                b4, b5, b6, b7 = bits[n, u, p0 + 4], bits[n, u, p0 + 5], bits[n, u, p0 + 6], bits[n, u, p0 + 7]
                if (b0 | b1 | b2 | b3 | b4 | b5 | b6 | b7) == 0:
                    zeros += 8
                    continue
                counts[base + lut[(b0 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[odd + base + lut[(b1 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[base + lut[(b2 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[odd + base + lut[(b3 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[base + lut[(b4 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[odd + base + lut[(b5 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[base + lut[(b6 >> KEY_SHIFT) & KEY_MASK]] += 1
                counts[odd + base + lut[(b7 >> KEY_SHIFT) & KEY_MASK]] += 1
            for p in range(whole, p_len):
                counts[(odd if p % 2 else 0) + base + lut[(bits[n, u, p] >> KEY_SHIFT) & KEY_MASK]] += 1
            row = values[n, u]
            top, low, s, q = _extremes(row, bits[n, u], keys, as_float)
            vmax[n, u] = top
            vmin[n, u] = low
            sums[n, u] = s
            sumsq[n, u] = q
            at_max[n, u] = _first(row, 0, p_len, top) if (top > top_bar[u - lo] or top != top) else -1
            at_min[n, u] = _first(row, 0, p_len, low) if (low < bottom_bar[u - lo] or low != low) else -1
        counts[base + CENTER] += zeros


def _locate_loop(values, stride, p_len, image, unit, target, slot_u, slot_c, pos, heat, grid_w, lost,
                 known):  # pragma: no cover (compiled)
    """For each new winner m (map values[image[m] * stride + unit[m] * p_len:][:p_len], score target[m], its
    max or min): its first position equal to target (the first NaN when target is NaN) into pos[slot_u[m],
    slot_c[m]], and the heatmap window around it (crops.heat_origins) into heat[slot_u[m], slot_c[m]].
    lost[m] = 1 (and nothing written) when the map does not hold its target. known [N, U] (or [0, 0]): a
    first position of the map's extreme found by `reduce` (-1: none), taken when it holds target (it is
    then target's first)."""
    for m in range(image.shape[0]):
        n, u, t = image[m], unit[m], target[m]
        row = n * stride + u * p_len
        found = _position(values, row, p_len, t, known[n, u] if known.shape[0] else -1)
        lost[m] = found < 0
        if found < 0:
            continue
        su, sc = slot_u[m], slot_c[m]
        pos[su, sc] = found
        if heat.shape[2]:
            _cut(values, row, p_len, found=found, grid_w=grid_w, out=heat[su, sc])


def _better(key, image, than_key, than_image, largest):  # pragma: no cover (compiled)
    """Whether (key, image) ranks before (than_key, than_image): key first, then the lower image."""
    if key == than_key:
        return image < than_image
    return key > than_key if largest else key < than_key


def _worst(keys, images, largest):  # pragma: no cover (compiled)
    """The entry that ranks last."""
    w = 0
    for s in range(1, keys.shape[0]):
        if _better(keys[w], images[w], keys[s], images[s], largest):
            w = s
    return w


def _extreme_at(values, row, p_len, largest):  # pragma: no cover (compiled)
    """First position of the map's max (min); a NaN counts as the extreme (what Tensor.max(dim) gives)."""
    best = 0
    for p in range(p_len):
        v = values[row + p]
        if v != v:
            return p
        if (v > values[row + best]) if largest else (v < values[row + best]):
            best = p
    return best


def _rank(column, image, largest, slot_score, slot_image, keys, images, source, empty):  # pragma: no cover
    """One unit's K best of its slots (slot_score/image [K]) and the batch (column [N], its scores; NaN ranking
    last; ties: lower image; empty slots, image -1, after every real one) into keys/images/source [K] (source:
    the slot s an entry comes from, or K + n for batch image n). Whether any batch image entered."""
    k = keys.shape[0]
    fill = -np.inf if largest else np.inf
    n_empty = 0
    for s in range(k):
        v = slot_score[s]
        keys[s] = fill if v != v else v
        images[s] = _LAST if slot_image[s] < 0 else slot_image[s]
        source[s] = s
        if slot_image[s] < 0:
            empty[n_empty] = s
            n_empty += 1
    filled = 0
    w = _worst(keys, images, largest) if n_empty == 0 else -1
    changed = False
    for n in range(column.shape[0]):
        v = column[n]
        key = fill if v != v else np.float64(v)
        if filled < n_empty:  # an empty slot ranks after every image: it is taken without a comparison
            e = empty[filled]
            keys[e] = key
            images[e] = image[n]
            source[e] = k + n
            filled += 1
            changed = True
            if filled == n_empty:
                w = _worst(keys, images, largest)
        elif _better(key, image[n], keys[w], images[w], largest):
            keys[w] = key
            images[w] = image[n]
            source[w] = k + n
            w = _worst(keys, images, largest)
            changed = True
    return changed


def _place(values, stride, p_len, known, grid_w, u, column, image, largest, source, kept, entered, slot_score,
           slot_image, slot_pos, heat):  # pragma: no cover (compiled)
    """After `_rank`: kept entries stay in unit u's slots (slot_* [K], heat [K, hs, ws]); entering images (in batch
    order) take the freed slots in slot order, as the torch path does, with the first position of their score
    (column [N]) in the map and the heatmap window around it; freed slots no image took become empty. kept and
    entered: scratch, all False again on return."""
    k = kept.shape[0]
    for s in range(k):
        if source[s] < k:
            kept[source[s]] = True
        else:
            entered[source[s] - k] = True
    s = 0
    for n in range(image.shape[0]):
        if not entered[n]:
            continue
        entered[n] = False
        while kept[s]:
            s += 1
        t = column[n]
        row = n * stride + u * p_len
        found = _position(values, row, p_len, t, known[n, u] if known.shape[0] else -1)
        if found < 0:  # a score its map does not hold: the map's own extreme
            found = _extreme_at(values, row, p_len, largest)
        slot_score[s] = t
        slot_image[s] = image[n]
        slot_pos[s] = found
        if heat.shape[1]:
            _cut(values, row, p_len, found=found, grid_w=grid_w, out=heat[s])
        s += 1
    for r in range(s, k):  # freed slots no entering image took: empty
        if not kept[r]:
            slot_score[r] = np.nan
            slot_image[r] = -1
    kept[:] = False


def _merge_loop(values, stride, p_len, score, image, known, largest, slot_score, slot_image, slot_pos, heat,
                grid_w):  # pragma: no cover (compiled)
    """A batch into one top/bottom-k tracker's units (StreamingExtremes.merge_units without groups): unit u's
    K slots (slot_score/image/pos/heat [U, K, ...]) take the K best of themselves and the batch (score [N, U],
    `_rank`), entering images placed by `_place` (values: map (n, u) at n * stride + u * p_len; known [N, U] or
    [0, 0]: positions `reduce` found, -1: none)."""
    n_img, n_units = score.shape
    k = slot_score.shape[1]
    keys = np.empty(k, np.float64)
    images = np.empty(k, np.int64)
    source = np.empty(k, np.int64)
    empty = np.empty(k, np.int64)
    kept = np.zeros(k, np.bool_)
    entered = np.zeros(n_img, np.bool_)
    for u in range(n_units):
        if _rank(column=score[:, u], image=image, largest=largest, slot_score=slot_score[u],
                 slot_image=slot_image[u], keys=keys, images=images, source=source, empty=empty):
            _place(values=values, stride=stride, p_len=p_len, known=known, grid_w=grid_w, u=u, column=score[:, u],
                   image=image, largest=largest, source=source, kept=kept, entered=entered,
                   slot_score=slot_score[u], slot_image=slot_image[u], slot_pos=slot_pos[u], heat=heat[u])


_HELPERS = ("_first", "_position", "_cut", "_moments", "_extremes", "_better", "_worst", "_extreme_at", "_rank",
            "_place")  # each after the ones it calls
_FASTMATH = {"_moments": {"reassoc"}}  # only these sums are reassociated


def _signatures(nt) -> dict[str, object]:
    """The entry points' explicit signatures (numba types nt) over C-contiguous arrays."""

    def arr(dtype, ndim=1):
        return nt.Array(dtype, ndim, "C")

    i64, f32, f64, i32 = nt.int64, nt.float32, nt.float64, nt.int32
    known = nt.Array(i32, 2, "A")  # [N, U] positions `reduce` found (a view of its output), or [0, 0]: none
    return {
        "_reduce_loop": nt.void(arr(f32, 3), arr(i32, 3), i64, i64, arr(i32), arr(i32), i64, arr(f32, 2),
                                arr(f32, 2), arr(f64, 2), arr(f64, 2), arr(f32), arr(f32), arr(i32, 2), arr(i32, 2)),
        "_locate_loop": nt.void(arr(f32), i64, i64, arr(i64), arr(i64), arr(f32), arr(i64), arr(i64), arr(i64, 2),
                                arr(f32, 4), i64, arr(nt.boolean), known),
        "_merge_loop": nt.void(arr(f32), i64, i64, nt.Array(f32, 2, "A"), arr(i64), known, nt.boolean,
                               arr(f32, 2), arr(i64, 2), arr(i64, 2), arr(f32, 4), i64),
    }


def _compile(cache: bool = True) -> Loops:
    """numba functions of the loops above (helpers compiled lazily inside the entry points' explicit signatures)."""
    from numba import njit  # noqa: PLC0415 (optional dependency, imported on first use)
    from numba import types as nt  # noqa: PLC0415

    signatures = _signatures(nt)
    scope = dict(globals())  # what the compiled loops' global names resolve to: the compiled loops themselves
    for name in (*_HELPERS, *signatures):
        plain = globals()[name]
        func = types.FunctionType(plain.__code__, scope, name, plain.__defaults__)
        func.__qualname__ = plain.__qualname__
        options = {"fastmath": _FASTMATH[name]} if name in _FASTMATH else {}
        scope[name] = njit(signatures.get(name), nogil=True, cache=cache, boundscheck=False, **options)(func)
    return Loops(scope["_reduce_loop"], scope["_locate_loop"], scope["_merge_loop"])


def _kernels():
    """The compiled loops, compiling them (or loading numba's cache, about 1 s) on first use; None when they
    cannot run. A caller waits while another thread prepares them: which path runs must not depend on timing,
    since the two paths' sums round differently (a rerun or a resumed run reproduces its file bit for bit)."""
    if "kernels" in _STATE:
        return _STATE["kernels"]
    _LOCK.acquire()
    try:
        if "kernels" not in _STATE:
            kernels = None
            off = os.environ.get("SCOPE_COLLECT_NUMBA", "1") == "0"
            # numba's on-disk cache may have nowhere to go: then compile in every run
            for cache in () if off else (True, False):
                try:
                    kernels = _compile(cache)
                    _selftest(kernels)
                    break
                except ImportError:
                    break
                except Exception:  # numba failing to initialise, cache or compile: the torch path runs
                    kernels = None
            _STATE["kernels"] = kernels
    finally:
        _LOCK.release()
    return _STATE["kernels"]


def prepare(device: torch.device) -> threading.Thread | None:
    """Start preparing the compiled loops in the background (pass 1 calls it before its first batch, whose
    forward then overlaps the compile or cache load, and joins the thread when it ends)."""
    if not devices.host_paths(device) or "kernels" in _STATE:
        return None
    thread = threading.Thread(target=_kernels, name="scope-kernels", daemon=True)
    thread.start()
    return thread


def _selftest(kernels) -> None:
    """Run both loops on a tiny input and check against numpy (raises, so a broken build falls back to torch)."""
    x = np.zeros((2, 3, 19), np.float32)
    x[0, 0, 8:16] = [0.0, -0.0, 1.5, -3.0, np.nan, 1e-30, 7e5, 1.5]  # a NaN
    x[0, 1, 8:] = np.arange(11) - 12.5  # negative: its max, 0, comes from a group of eight zeros alone
    x[0, 2, 3:] = np.arange(16) * 0.25
    x[1] = -x[0]
    counts = np.zeros(2 * 3 * NUM_BUCKETS, np.int32)
    out = torch.empty(2, 2, 3), torch.empty(2, 2, 3, dtype=torch.float64), torch.empty(2, 2, 3, dtype=torch.int32)
    bars = torch.tensor([[-np.inf, -np.inf, 3.75], [np.inf, np.inf, np.inf]])  # map (0, 2)'s max is not above
    t = torch.from_numpy(x)
    for lo, hi in ((0, 1), (1, 3)):  # two unit ranges; units 1-2 count odd positions into a second copy
        reduce(t, torch.from_numpy(counts), lo, hi, second=3 * NUM_BUCKETS if lo else 0, vmax=out[0][0],
               vmin=out[0][1], sums=out[1][0], sumsq=out[1][1], top_bar=bars[0, lo:hi], bottom_bar=bars[1, lo:hi],
               at_max=out[2][0], at_min=out[2][1], kernels=kernels)
    keys = BUCKET_LUT[(x.view(np.int32) >> KEY_SHIFT) & KEY_MASK]
    want = np.stack([np.bincount(keys[:, u].ravel(), minlength=NUM_BUCKETS) for u in range(3)]).ravel()
    d = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.array_equal(counts[:want.size] + counts[want.size:], want) \
            and np.array_equal(out[0][0].numpy(), x.max(2), equal_nan=True) \
            and np.array_equal(out[0][1].numpy(), x.min(2), equal_nan=True) \
            and np.allclose(out[1][0].numpy(), d.sum(2), equal_nan=True) \
            and np.allclose(out[1][1].numpy(), np.square(d).sum(2), equal_nan=True) \
            and out[2][0].tolist() == [[12, 0, -1], [12, 8, -1]] and out[2][1].tolist() == [[12, 8, 0], [12, 0, 18]]
    # new winners: map (0, 0) at its max 7e5 (known), 1.5 (known is the max's position: scanned), the NaN, and 2.0,
    # which it does not hold (lost)
    pos, heat = torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, 4, 1, 2)
    image, unit = torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    known = torch.full((2, 3), 14, dtype=torch.int32)
    lost = locate(t, image, unit, target=torch.tensor([7e5, 1.5, np.nan, 2.0]), slot_u=image, slot_c=torch.arange(4),
                  pos=pos, heat=heat, grid_w=19, known=known, kernels=kernels)
    ok = ok and pos.tolist() == [[14, 10, 12, 0]] and lost.tolist() == [False, False, False, True] \
        and heat[0, 1].tolist() == [[0.0, 1.5]] and heat[0, 0, 0, 1] == 7e5
    if not ok:
        raise RuntimeError("collect kernels disagree with numpy")


def available(device: torch.device) -> bool:
    """Whether pass 1 on `device` uses the compiled loops (CPU and numba usable; waits while they are prepared)."""
    return devices.host_paths(device) and _kernels() is not None


def _flat(values: torch.Tensor) -> tuple[np.ndarray, int]:
    """(the memory of values [N, c, P] as a flat array from its first element, its image stride): a unit slice of a
    contiguous batch as it is, anything else copied first."""
    if len(values) and not values[0].is_contiguous():
        values = values.contiguous()
    n, c, p = values.shape
    size = (n - 1) * values.stride(0) + c * p if n else 0
    return torch.as_strided(values, (size,), (1,), values.storage_offset()).numpy(), values.stride(0)


def reduce(v: torch.Tensor, counts: torch.Tensor, lo: int, hi: int, second: int, vmax: torch.Tensor,
           vmin: torch.Tensor, sums: torch.Tensor, sumsq: torch.Tensor, top_bar: torch.Tensor,
           bottom_bar: torch.Tensor, at_max: torch.Tensor, at_min: torch.Tensor, kernels=None) -> None:
    """Units lo:hi of a contiguous float32 CPU batch v [N, C, P]: their histogram into counts (int32, flat, unit u's
    buckets at u * NUM_BUCKETS; second > 0: odd positions into the copy `second` further on) and, in the same pass,
    each map's max and min (float32, NaN for a map holding one, like torch.amax / amin), sum and sum of squares
    (float64) into columns lo:hi of the contiguous [N, C] vmax, vmin, sums, sumsq; and the first position of the
    max (min) of each map whose max is above top_bar [hi - lo] (min below bottom_bar), or NaN, into int32 at_max
    (at_min), -1 for the others."""
    values = v.numpy()
    (kernels or _kernels()).reduce(
        values=values, bits=values.view(np.int32), lo=lo, hi=hi, lut=BUCKET_LUT, counts=counts.numpy(),
        second=second, vmax=vmax.numpy(), vmin=vmin.numpy(), sums=sums.numpy(), sumsq=sumsq.numpy(),
        top_bar=np.ascontiguousarray(top_bar.numpy()), bottom_bar=np.ascontiguousarray(bottom_bar.numpy()),
        at_max=at_max.numpy(), at_min=at_min.numpy())


_NONE = np.zeros((0, 0), np.int32)  # no known positions


def locate(values: torch.Tensor, image: torch.Tensor, unit: torch.Tensor, target: torch.Tensor, slot_u: torch.Tensor,
           slot_c: torch.Tensor, pos: torch.Tensor, heat: torch.Tensor, grid_w: int,
           known: torch.Tensor | None = None, kernels=None) -> torch.Tensor:
    """Write the first position of target in each map values[image, unit] (float32 CPU [N, c, P]; for a map's
    max / min that is what max(dim) / min(dim) give, NaN: the first NaN) into pos[slot_u, slot_c], and its heatmap
    window (`StreamingExtremes._cut`) into heat[slot_u, slot_c] (pos, heat [C, K, hs, ws] contiguous; hs 0: none).
    known: int32 [N, c], the first position of each map's extreme where `reduce` found it (-1 elsewhere): no scan
    for those. Returns a bool mask of the maps that do not hold their target (not written)."""
    lost = np.zeros(image.shape[0], np.bool_)
    flat, stride = _flat(values)
    image, unit, slot_u, slot_c = (np.ascontiguousarray(t.numpy(), dtype=np.int64) for t in (image, unit, slot_u, slot_c))
    (kernels or _kernels()).locate(
        values=flat, stride=stride, p_len=values.shape[2], image=image, unit=unit,
        target=np.ascontiguousarray(target.float().numpy()), slot_u=slot_u, slot_c=slot_c, pos=pos.numpy(),
        heat=heat.numpy(), grid_w=grid_w, lost=lost, known=_NONE if known is None else known.numpy())
    return torch.from_numpy(lost)


def merge(tracker, lo: int, hi: int, score: torch.Tensor, image: torch.Tensor, values: torch.Tensor,
          known: torch.Tensor | None, grid_w: int, kernels=None) -> None:
    """Units lo:hi of a batch into `tracker` (a StreamingExtremes without groups, CPU, contiguous state): score
    [N, hi - lo] float32, image [N] int64, values [N, hi - lo, P] float32, known as in `locate`."""
    flat, stride = _flat(values)
    (kernels or _kernels()).merge(
        values=flat, stride=stride, p_len=values.shape[2], score=score.float().numpy(),
        image=np.ascontiguousarray(image.numpy(), dtype=np.int64), known=_NONE if known is None else known.numpy(),
        largest=tracker.largest, slot_score=tracker.score[lo:hi].numpy(), slot_image=tracker.image[lo:hi].numpy(),
        slot_pos=tracker.pos[lo:hi].numpy(), heat=tracker.heat[lo:hi].numpy(), grid_w=grid_w)
