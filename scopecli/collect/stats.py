"""Per-unit activation statistics over every position of every image, exactly mergeable across shards.

Why this design: `collect` must report mean/std/min/max/fraction-positive and p50/p90/p99/p99.9 per unit
over billions of positions, on the device, with batched ops, and shards must merge to the same answer.

The sketch itself (histogram layout, accuracy, merging) is numpy-only and lives in `scopecli.core.sketch`;
this module fills it on the device with batched torch ops.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from scopecli.collect import kernels
from scopecli.core import devices
from scopecli.core.records import StatsBlock
from scopecli.core.sketch import BUCKET_LUT, KEY_MASK, KEY_SHIFT, NUM_BUCKETS, stats_from_sketch

_LUTS: dict[torch.device, torch.Tensor] = {}


def _lut(device: torch.device) -> torch.Tensor:
    lut = _LUTS.get(device)
    if lut is None:
        lut = torch.from_numpy(BUCKET_LUT).to(device)
        _LUTS[device] = lut
    return lut


_CHUNK_ELEMENTS = 1 << 18  # on CPU activations are swept in blocks of about this many values (1 MiB, in cache)
_BLOCK_UNITS = 32  # units per block at most: the histogram rows one block scatters into (32 x 16 KiB) stay in L2
_INTERLEAVE_MIN = 256  # rows (positions per image) at least this long count into two alternating histogram copies
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _sweep_threads(device: torch.device) -> int:
    """CPU: one sweep thread per intra-op thread (each runs single-threaded torch ops on its own units)."""
    return max(1, torch.get_num_threads()) if devices.host_paths(device) else 1


def _run_parallel(tasks: list, workers: int | None = None) -> None:
    """Run callables on the sweep pool (`workers` threads, default one per task) with intra-op parallelism off
    (workers read it once, when they start); one worker: in this thread.

    Why: many small OpenMP regions cost a thread wake-up each and spin while index_add_ runs serially;
    disjoint unit ranges on plain threads (torch ops and the compiled loops release the GIL) keep every core
    busy instead.
    """
    global _POOL, _POOL_SIZE
    workers = min(len(tasks), workers or len(tasks))
    if workers <= 1:
        for t in tasks:
            t()
        return
    if _POOL is None or _POOL_SIZE != workers:
        if _POOL is not None:
            _POOL.shutdown()
        _POOL, _POOL_SIZE = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scope-stats"), workers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for f in [_POOL.submit(t) for t in tasks]:
            f.result()
    finally:
        torch.set_num_threads(threads)


def run_sweeps(tasks: list, device: torch.device) -> None:
    """Run the tasks of several `LayerStats.sweep_tasks` (a batch's layers) together: one thread per intra-op
    thread takes them in turn, with no wait between layers."""
    _run_parallel(tasks, _sweep_threads(device))


def _ones(device: torch.device, m: int) -> torch.Tensor:
    """m int32 ones as an expanded view (no memory)."""
    return torch.ones(1, dtype=torch.int32, device=device).expand(m)


_COUNT_LIMIT = 2**31 - 1  # values per unit the int32 working counts take before they are added to the int64 ones


def _blocks(n: int, c: int, p: int, parts: int, device: torch.device) -> list[tuple[int, int, list]]:
    """Split an [n, c, p] activation into `parts` unit ranges (lo, hi, blocks): blocks (i0, i1, u0, u1) hold
    about _CHUNK_ELEMENTS values; ranges are disjoint, so their histogram rows and top-k rows never
    overlap. A block takes every image of a few units (at most _BLOCK_UNITS), so the histogram rows it
    scatters into stay in cache; one unit's rows longer than a block are split by images. Off the CPU
    there is no cache to fit: one block."""
    if not devices.host_paths(device):
        return [(0, c, [(0, n, 0, c)])]
    parts = max(1, min(parts, c))
    out = []
    for t in range(parts):
        lo, hi = t * c // parts, (t + 1) * c // parts
        if n * p <= _CHUNK_ELEMENTS:  # all images of a few units per block
            ub = max(1, min(_BLOCK_UNITS, _CHUNK_ELEMENTS // (n * p)))
            out.append((lo, hi, [(0, n, u, min(hi, u + ub)) for u in range(lo, hi, ub)]))
        else:  # one unit, a range of images per block
            per = max(1, _CHUNK_ELEMENTS // p)
            out.append((lo, hi, [(i, min(n, i + per), u, u + 1) for u in range(lo, hi) for i in range(0, n, per)]))
    return out


def _level(m: int, sign: int) -> torch.Tensor:
    """m float32 levels no map's max exceeds (sign 1: +inf) or min undercuts (sign -1: -inf): no positions."""
    return torch.full((m,), sign * float("inf"), dtype=torch.float32)


def _image_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of [N, U] over images, in image order whatever U (so any split of units gives the same bits)."""
    return x.cumsum(0)[-1]


class LayerStats:
    """Streaming statistics of one layer's units, updated on the activations' device with batched ops."""

    def __init__(self, channels: int, device: torch.device):
        self.channels = channels
        self.device = device
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)
        self.vmin = torch.full((channels,), float("inf"), dtype=torch.float64, device=device)
        self.vmax = torch.full((channels,), float("-inf"), dtype=torch.float64, device=device)
        # bucket counts, [copies * channels * NUM_BUCKETS]: long rows alternate between two copies (a run
        # of equal values, e.g. ReLU zeros, would otherwise wait on one counter); `hist` adds them up. They
        # are int32 (half the cache the increments touch) and go into the int64 `_total` before one unit
        # could have counted 2**31 values since the last time; `_total` exists only from then on (resnet50's
        # 16 layers would otherwise zero 250 MB per run that a short run never reads)
        self._counts = torch.zeros(channels * NUM_BUCKETS, dtype=torch.int32, device=device)
        self._total: torch.Tensor | None = None
        self._pending = 0  # values per unit in _counts
        self._offsets = (torch.arange(channels, device=device, dtype=torch.int32) * NUM_BUCKETS).view(1, -1, 1)
        self._offsets2: torch.Tensor | None = None  # [1, channels, P]: unit offset + that of the position's copy

    @property
    def hist(self) -> torch.Tensor:
        """int64 [channels * NUM_BUCKETS] bucket counts so far."""
        size = self.channels * NUM_BUCKETS
        counts = self._counts if self._counts.numel() == size else self._counts[:size] + self._counts[size:]
        return counts.to(torch.int64) if self._total is None else self._total + counts

    @hist.setter
    def hist(self, value: torch.Tensor) -> None:
        self._total = value.to(torch.int64)
        self._counts = torch.zeros(self.channels * NUM_BUCKETS, dtype=torch.int32, device=self.device)
        self._pending = 0
        self._offsets2 = None

    def _room(self, values: int) -> None:
        """Make room in the int32 working counts for `values` more values per unit."""
        if self._pending + values > _COUNT_LIMIT:
            self._total = self.hist
            self._counts.zero_()
            self._pending = 0
        self._pending += values

    def _interleave(self, p: int) -> bool:
        """Whether rows of p positions count into two alternating copies (allocated on first use)."""
        if p < _INTERLEAVE_MIN or not devices.host_paths(self.device):
            return False
        if self._offsets2 is None or self._offsets2.shape[2] != p:
            size = self.channels * NUM_BUCKETS
            if self._counts.numel() == size:
                self._counts = torch.cat([self._counts, torch.zeros_like(self._counts)])
            second = (torch.arange(p, dtype=torch.int32) % 2 * size).view(1, 1, p)
            self._offsets2 = self._offsets + second
        return True

    def update(self, v: torch.Tensor, img_sum: torch.Tensor, img_sumsq: torch.Tensor,
               img_max: torch.Tensor, img_min: torch.Tensor) -> None:
        """Add a batch. v: float32 [N, C, P] activations; per-image sum, sum of squares, max, min [N, C]."""
        n, c, p = v.shape
        if n == 0:
            return
        self._moments(p, img_sum, img_sumsq, img_max, img_min)
        self.count += n * p
        self._room(n * p)
        v = v.contiguous()
        scratch = None
        pairs = self._interleave(p)
        for i0, i1, u0, u1 in _blocks(n, c, p, 1, v.device)[0][2]:
            scratch = self._histogram(v[i0:i1, u0:u1], u0, scratch, pairs)

    def observe(self, v: torch.Tensor, per_units=None, bars=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add a batch of float32 [N, C, P] activations; returns their per-image (max, min, sum) [N, C].
        `per_units(lo, hi, vmax, vmin, total, at_max, at_min)` (optional) runs on the same thread once units
        lo:hi are swept, with their [N, hi - lo] reductions (the engine updates those units' top-k rows and
        probes); at_max / at_min: int32 first positions of the maps' extremes where the compiled sweep found
        them, -1 elsewhere (None on the torch path). `bars(lo, hi)` (optional) gives float32 [hi - lo] levels
        (top, bottom): maps whose max is above top (min below bottom) get their positions found while they are
        in cache (the engine's top-k entry levels: any new winner's map is one of them).

        Same result as `update` with those reductions, in one sweep: on the torch path over cache-sized blocks
        of (image, unit) rows, so every reduction and the histogram read a block while it is in cache; compiled,
        one pass over each row does all of it. On CPU, threads take disjoint unit ranges.
        """
        tasks, done = self.sweep_tasks(v, per_units, bars)
        _run_parallel(tasks)
        return done()

    def sweep_tasks(self, v: torch.Tensor, per_units=None, bars=None):
        """`observe` in parts: (tasks, done). Run every task (in any order, on any threads: they touch disjoint
        units), then call done() once, which advances the count and returns what observe returns. The engine
        runs all layers' tasks of a batch together (`run_sweeps`)."""
        n, c, p = v.shape
        v = v.contiguous()
        out = torch.empty(4, n, c, dtype=v.dtype, device=v.device)
        vmax, vmin, total, norm = out.unbind(0)
        compiled = v.dtype == torch.float32 and kernels.available(v.device)
        if compiled:
            sums = torch.empty(2, n, c, dtype=torch.float64)
            at = torch.empty(2, n, c, dtype=torch.int32)
        if n:
            self._room(n * p)
        pairs = self._interleave(p)
        second = self.channels * NUM_BUCKETS if pairs else 0

        def sweep(lo, hi, blocks):
            if compiled:  # one call per unit range: histogram, max, min, float64 sums and positions
                top, bottom = bars(lo, hi) if bars is not None else (_level(hi - lo, 1), _level(hi - lo, -1))
                kernels.reduce(v, self._counts, lo, hi, second=second, vmax=vmax, vmin=vmin, sums=sums[0],
                               sumsq=sums[1], top_bar=top, bottom_bar=bottom, at_max=at[0], at_min=at[1])
                total[:, lo:hi] = sums[0, :, lo:hi]
                self._moments(p, sums[0, :, lo:hi], sums[1, :, lo:hi], vmax[:, lo:hi], vmin[:, lo:hi], lo, hi)
                if per_units is not None:
                    per_units(lo, hi, vmax[:, lo:hi], vmin[:, lo:hi], total[:, lo:hi], at[0, :, lo:hi], at[1, :, lo:hi])
                return
            scratch = None
            for i0, i1, u0, u1 in blocks:
                part = v[i0:i1, u0:u1]
                torch.amax(part, 2, out=vmax[i0:i1, u0:u1])
                torch.amin(part, 2, out=vmin[i0:i1, u0:u1])
                torch.sum(part, 2, out=total[i0:i1, u0:u1])
                torch.linalg.vector_norm(part, dim=2, out=norm[i0:i1, u0:u1])
                scratch = self._histogram(part, u0, scratch, pairs)
            self._moments(p, total[:, lo:hi], norm[:, lo:hi].square(), vmax[:, lo:hi], vmin[:, lo:hi], lo, hi)
            if per_units is not None:
                per_units(lo, hi, vmax[:, lo:hi], vmin[:, lo:hi], total[:, lo:hi], None, None)

        def done():
            self.count += n * p
            return vmax, vmin, total

        parts = _blocks(n, c, p, _sweep_threads(v.device), v.device) if n else []
        return [lambda part=part: sweep(*part) for part in parts], done

    def _moments(self, p: int, img_sum: torch.Tensor, img_sumsq: torch.Tensor,
                 img_max: torch.Tensor, img_min: torch.Tensor, lo: int = 0, hi: int | None = None) -> None:
        """Fold per-image sums of units lo:hi into mean/m2/min/max (in place; the caller advances count)."""
        # per-image (P, mean, M2) from the per-map sums (float64 from the compiled pass, float32 from torch's),
        # combined with Chan's formula in float64. Sums over images are sequential scans (cumsum): unlike
        # vectorized reductions, whose last few columns round differently, they do not depend on how units are
        # split among threads, so results are exact.
        hi = self.channels if hi is None else hi
        n = img_sum.shape[0]
        sums = img_sum.double()
        means = sums / p
        bmean = _image_sum(means) / n
        dev = means - bmean
        bm2 = _image_sum((img_sumsq.double() - sums * means).clamp_(min=0)) + p * _image_sum(dev * dev)
        bn = n * p
        tot = self.count + bn
        delta = bmean - self.mean[lo:hi]
        self.mean[lo:hi] += delta * (bn / tot)
        self.m2[lo:hi] += bm2 + delta * delta * (self.count * bn / tot)
        torch.maximum(self.vmax[lo:hi], img_max.double().amax(0), out=self.vmax[lo:hi])  # exact either way
        torch.minimum(self.vmin[lo:hi], img_min.double().amin(0), out=self.vmin[lo:hi])

    def _histogram(self, part: torch.Tensor, u0: int, scratch, pairs: bool = False):
        """Count an [images, units u0.., P] block into the histogram; returns reusable scratch.

        float bits -> key (sign, exponent, top mantissa bits) -> bucket via lookup table -> + the unit's
        offset -> index_add of ones (several times faster than bincount on CPU).
        """
        ni, nu, p = part.shape
        m = part.numel()
        if scratch is None or scratch[0].numel() < m:
            scratch = (torch.empty(m, dtype=torch.int32, device=part.device),
                       torch.empty(m, dtype=torch.int32, device=part.device))
        key, idx = scratch[0][:m], scratch[1][:m]
        torch.bitwise_right_shift(part.view(torch.int32), KEY_SHIFT, out=key.view(ni, nu, p))  # part may be strided
        key &= KEY_MASK
        torch.index_select(_lut(part.device), 0, key, out=idx)
        if pairs:  # even positions count into copy 1, odd ones into copy 2
            idx.view(ni, nu, p).add_(self._offsets2[:, u0 : u0 + nu])
        else:
            idx.view(ni, nu, p).add_(self._offsets[:, u0 : u0 + nu])
        self._counts.index_add_(0, idx, _ones(part.device, m))
        return scratch

    _STATE = ("mean", "m2", "vmin", "vmax", "hist")

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The running sketch as plain arrays (what a resumed collect needs to go on exactly)."""
        out = {name: getattr(self, name).detach().cpu().numpy() for name in self._STATE}
        out["count"] = np.asarray(self.count, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from `state_arrays()` of a LayerStats with the same channels; ValueError otherwise."""
        if set(arrays) != set(self._STATE) | {"count"}:
            raise ValueError(f"LayerStats state holds {sorted(arrays)}")
        for name in self._STATE:
            current = getattr(self, name)
            if tuple(arrays[name].shape) != tuple(current.shape):
                raise ValueError(f"LayerStats {name} has shape {arrays[name].shape}, expected {tuple(current.shape)}")
        for name in self._STATE:
            current = getattr(self, name)
            setattr(self, name, torch.from_numpy(np.array(arrays[name])).to(device=current.device, dtype=current.dtype))
        self.count = int(arrays["count"])

    def finalize(self, units: np.ndarray | None = None) -> StatsBlock:
        units = np.arange(self.channels) if units is None else np.asarray(units)
        sel = torch.as_tensor(units, device=self.device, dtype=torch.long)
        hist = self.hist.view(self.channels, NUM_BUCKETS)[sel].cpu().numpy()
        return stats_from_sketch(
            units,
            np.full(len(units), self.count, dtype=np.int64),
            self.mean[sel].cpu().numpy(),
            self.m2[sel].cpu().numpy(),
            self.vmin[sel].cpu().numpy(),
            self.vmax[sel].cpu().numpy(),
            hist,
        )
