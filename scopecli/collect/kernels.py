"""Optional compiled loops for collect's pass 1 on CPU (numba, when it imports): the same integers as the torch ops
they stand in for, so results are bit for bit those of the torch path.

Why: pass 1 must cost little more than the forward it rides on. On CPU its floor is one histogram increment per
activation (5.5 M per resnet50 image over its 16 default layers); in torch that takes five passes over every
value (shift, mask, bucket lookup, unit offset, index_add: about 2.9 ns a value in pass 1), a loop that does it
all while the value is in a register takes one (about 1.2-1.4 ns), and eight +0.0 in a row (ReLU's dead
regions) are counted at once. The first position of a new top-k winner's extreme is likewise a scan that stops
at the known extreme, instead of copying the whole map to arg-max it. Without numba (it comes with the `atlas`
extra) or with SCOPE_COLLECT_NUMBA=0, collect uses the torch ops, which give the same results.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from scopecli.sketch import BUCKET_LUT, CENTER, KEY_MASK, KEY_SHIFT, NUM_BUCKETS

_STATE: dict[str, object] = {}  # "kernels": (histogram, locate) once compiled, or None when unusable
_LOCK = threading.Lock()


def _compile(cache: bool = True):
    from numba import njit  # noqa: PLC0415 (optional dependency, imported on first use)

    shift, mask, buckets, zero = KEY_SHIFT, KEY_MASK, NUM_BUCKETS, CENTER

    @njit(nogil=True, cache=cache, boundscheck=False)
    def histogram(bits, lut, counts, u0, second):  # pragma: no cover (compiled)
        """Count bits [N, U, P] (float32 bit patterns of units u0..) into counts (flat, unit u's buckets at
        u * NUM_BUCKETS); second > 0: odd positions count into the copy that starts `second` further on (a run
        of equal values then alternates between two counters instead of waiting on one). Eight +0.0 in a
        row (ReLU's dead regions) are counted at once, in a register."""
        n_img, n_units, p_len = bits.shape
        odd = second if second > 0 else 0
        whole = p_len - p_len % 8
        for j in range(n_units):
            base = (u0 + j) * buckets
            zeros = 0
            for n in range(n_img):
                for p0 in range(0, whole, 8):
                    if (bits[n, j, p0] | bits[n, j, p0 + 1] | bits[n, j, p0 + 2] | bits[n, j, p0 + 3] | bits[n, j, p0 + 4]
                            | bits[n, j, p0 + 5] | bits[n, j, p0 + 6] | bits[n, j, p0 + 7]) == 0:
                        zeros += 8
                    else:
                        for p in range(p0, p0 + 8, 2):
                            counts[base + lut[(bits[n, j, p] >> shift) & mask]] += 1
                            counts[odd + base + lut[(bits[n, j, p + 1] >> shift) & mask]] += 1
                for p in range(whole, p_len):
                    counts[(odd if p % 2 else 0) + base + lut[(bits[n, j, p] >> shift) & mask]] += 1
            counts[base + zero] += zeros

    @njit(nogil=True, cache=cache, boundscheck=False)
    def locate(values, image, unit, target, slot_u, slot_c, pos, heat, grid_w, lost):  # pragma: no cover (compiled)
        """For each new winner m (map values[image[m], unit[m]], score target[m], its max or min): its first
        position equal to target (the first NaN when target is NaN) into pos[slot_u[m], slot_c[m]], and the
        heatmap window around it (crops.heat_origins) into heat[slot_u[m], slot_c[m]]. lost[m] = 1 (and
        nothing written) when the map does not hold its target."""
        p_len = values.shape[2]
        grid_h = p_len // grid_w
        hs, ws = heat.shape[2], heat.shape[3]
        for m in range(image.shape[0]):
            n, u, t = image[m], unit[m], target[m]
            found = -1
            if t != t:
                for p in range(p_len):
                    v = values[n, u, p]
                    if v != v:
                        found = p
                        break
            else:
                for p in range(p_len):
                    if values[n, u, p] == t:
                        found = p
                        break
            lost[m] = found < 0
            if found < 0:
                continue
            su, sc = slot_u[m], slot_c[m]
            pos[su, sc] = found
            if hs:
                oy = min(max(found // grid_w - hs // 2, 0), grid_h - hs)
                ox = min(max(found % grid_w - ws // 2, 0), grid_w - ws)
                for y in range(hs):
                    row = (oy + y) * grid_w + ox
                    for x in range(ws):
                        heat[su, sc, y, x] = values[n, u, row + x]

    return histogram, locate


def _kernels(wait: bool = True):
    """The compiled loops, compiling them (or loading numba's cache, about 0.5 s) on first use; None when they
    cannot run. wait=False: None while another thread is still preparing them (the torch path runs meanwhile;
    both give the same results, so a batch may take either)."""
    if "kernels" in _STATE:
        return _STATE["kernels"]
    if not _LOCK.acquire(blocking=wait):
        return None
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
    """Start preparing the compiled loops in the background (pass 1 calls it before its first batch and joins
    the thread when it ends, so no compile outlives it)."""
    if torch.device(device).type != "cpu" or "kernels" in _STATE:
        return None
    thread = threading.Thread(target=_kernels, name="scope-kernels", daemon=True)
    thread.start()
    return thread


def _selftest(kernels) -> None:
    """Compile on a tiny input and check against numpy (raises, so a broken build falls back to torch)."""
    histogram, locate = kernels
    x = np.zeros((1, 2, 19), np.float32)  # a row of eight zeros, a mixed row of eight, a tail of three
    x[0, :, 8:16] = [0.0, -0.0, 1.5, -3.0, np.nan, 1e-30, 7e5, 1.5]
    x[0, 1, 17] = 2.0
    counts = np.zeros(2 * NUM_BUCKETS, np.int64)
    histogram(x[:, :1].view(np.int32), BUCKET_LUT, counts, 0, NUM_BUCKETS)  # pairs, C layout
    histogram(x[:, 1:, 8:].view(np.int32), BUCKET_LUT, counts, 0, 0)  # one copy, strided
    want = np.bincount(BUCKET_LUT[(x[:, 0].view(np.int32).ravel() >> KEY_SHIFT) & KEY_MASK], minlength=NUM_BUCKETS)
    want += np.bincount(BUCKET_LUT[(x[:, 1, 8:].view(np.int32).ravel() >> KEY_SHIFT) & KEY_MASK], minlength=NUM_BUCKETS)
    counts = counts[:NUM_BUCKETS] + counts[NUM_BUCKETS:]
    y = x[:, :, 8:16]
    pos, heat = np.zeros((1, 3), np.int64), np.zeros((1, 3, 1, 2), np.float32)
    zero = np.zeros(3, np.int64)
    lost = np.zeros(3, np.bool_)
    locate(y, zero, zero, np.array([1.5, np.nan, 2.0], np.float32), zero, np.arange(3), pos, heat, 8, lost)  # strided
    locate(np.ascontiguousarray(y), zero[:1], zero[:1], np.float32([7e5]), zero[:1], zero[:1] + 2, pos, heat, 8, lost[:1])
    if not np.array_equal(counts, want) or pos.tolist() != [[2, 4, 6]] or lost.tolist() != [False, False, True] \
            or heat[0, 0].tolist() != [[-0.0, 1.5]] or heat[0, 2, 0, 1] != 7e5:
        raise RuntimeError("collect kernels disagree with numpy")


def available(device: torch.device) -> bool:
    """Whether pass 1 on `device` uses the compiled loops now (CPU, numba usable and ready)."""
    return device.type == "cpu" and _kernels(wait=False) is not None


def histogram(part: torch.Tensor, counts: torch.Tensor, u0: int, second: int = 0) -> None:
    """Count a float32 CPU block [N, U, P] of units u0.. into counts (int64, flat and contiguous, unit u's buckets at
    u * NUM_BUCKETS; second > 0: odd positions into the copy `second` further on), like `LayerStats._histogram`."""
    hist, _ = _kernels()
    hist(part.view(torch.int32).numpy(), BUCKET_LUT, counts.numpy(), u0, second)


def locate(values: torch.Tensor, image: torch.Tensor, unit: torch.Tensor, target: torch.Tensor, slot_u: torch.Tensor,
           slot_c: torch.Tensor, pos: torch.Tensor, heat: torch.Tensor, grid_w: int) -> torch.Tensor:
    """Write the first position of target in each map values[image, unit] (float32 CPU [N, c, P]; for a map's
    max / min that is what max(dim) / min(dim) give, NaN: the first NaN) into pos[slot_u, slot_c], and its heatmap
    window (`StreamingExtremes._cut`) into heat[slot_u, slot_c] (heat [C, K, hs, ws], hs 0: none). Returns a
    bool mask of the maps that do not hold their target (not written)."""
    _, run = _kernels()
    lost = np.zeros(image.shape[0], np.bool_)
    index = [np.ascontiguousarray(t.numpy()) for t in (image, unit, slot_u, slot_c)]  # one compiled layout
    run(values.numpy(), index[0], index[1], np.ascontiguousarray(target.float().numpy()), index[2], index[3],
        pos.numpy(), heat.numpy(), grid_w, lost)
    return torch.from_numpy(lost)
