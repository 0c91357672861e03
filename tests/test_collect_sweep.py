"""collect's one-sweep pass-1 path (LayerStats.observe, StreamingExtremes.update_located) gives exactly
what the plain reductions give: same histogram, extremes and quantiles, moments equal to rounding, same
winners and first arg-max positions."""

import numpy as np
import pytest
import torch

from scopecli.collect import stats as stats_mod
from scopecli.collect.stats import LayerStats
from scopecli.core import sketch
from scopecli.collect.topk import StreamingExtremes


def _batches():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 5, 37, generator=g) * torch.tensor([0.01, 1.0, 30.0, 500.0, 2.0]).view(1, 5, 1)
    x = torch.relu(x - 0.2)  # many exact zeros: ties for the minimum location
    x[4, 1, 7] = float("nan")
    x[9, 2, :] = 3.0  # a constant row: the first position must win
    return [x[:6], x[6:7], x[7:20], x[20:]]


@pytest.mark.parametrize("interleave", [2, 1 << 30])  # rows counted into two alternating copies, or one
@pytest.mark.parametrize("threads", [1, 3])
def test_observe_equals_update_with_plain_reductions(monkeypatch, threads, interleave):
    monkeypatch.setattr(stats_mod, "_CHUNK_ELEMENTS", 100)  # several blocks per image and per thread
    monkeypatch.setattr(stats_mod, "_INTERLEAVE_MIN", interleave)
    monkeypatch.setattr(stats_mod, "_sweep_threads", lambda device: threads)
    plain, swept = LayerStats(5, torch.device("cpu")), LayerStats(5, torch.device("cpu"))
    for b in _batches():
        plain.update(b, b.sum(2), torch.linalg.vector_norm(b, dim=2).square(), b.amax(2), b.amin(2))
        mx, mn, total = swept.observe(b)
        torch.testing.assert_close(mx, b.amax(2), equal_nan=True, rtol=0, atol=0)
        torch.testing.assert_close(mn, b.amin(2), equal_nan=True, rtol=0, atol=0)
        # float32 sums of 37 values >= 0 round by at most 36*u of the sum, in any order on any CPU
        torch.testing.assert_close(total, b.sum(2), equal_nan=True, rtol=37 * 2.0**-24, atol=0)
    a, b = plain.finalize(), swept.finalize()
    np.testing.assert_array_equal(a.sketch["hist"], b.sketch["hist"])
    ref = torch.cat(_batches()).permute(1, 0, 2).reshape(5, -1).numpy()
    want = np.stack([np.bincount(sketch.bucket_index_numpy(r), minlength=sketch.NUM_BUCKETS) for r in ref])
    np.testing.assert_array_equal(b.sketch["hist"], want)
    for f in ("count", "min", "max", "frac_pos", "quantiles"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-12, equal_nan=True)
    # moments: the sweep's per-map sums are float64 where compiled (float32 in torch): equal to float32 rounding,
    # and either is as close to brute force as its sums allow. The plain path's float32 sums of 37 values >= 0
    # round by at most 36*u (2.1e-6) of the sum; the variance from them by that times (E[x^2] + mean^2) / var,
    # below 1.9 for these maps, so the std by half of it: 2.2e-6 and 4e-6, on any CPU
    exact = ref.astype(np.float64)
    for f, want, rtol in (("mean", exact.mean(1), 2.2e-6), ("std", exact.std(1), 4e-6)):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=rtol, equal_nan=True)
        np.testing.assert_allclose(getattr(b, f), want, rtol=1e-6, equal_nan=True)


def test_update_located_equals_update_with_max_indices():
    for largest, k in ((True, 4), (False, 3), (True, 40)):
        plain = StreamingExtremes(5, k, largest, torch.device("cpu"))
        lazy = StreamingExtremes(5, k, largest, torch.device("cpu"))
        start = 0
        for b in _batches():
            image = torch.arange(start, start + b.shape[0], dtype=torch.int64)
            start += b.shape[0]
            score, pos = b.max(dim=2) if largest else b.min(dim=2)
            plain.update(score, pos, image)
            lazy.update_located(b.amax(2) if largest else b.amin(2), image, b)
        for got, want in zip(lazy.result(37), plain.result(37)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_threaded_sweep_with_per_unit_topk_equals_plain(monkeypatch, threads):
    monkeypatch.setattr(stats_mod, "_CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(stats_mod, "_sweep_threads", lambda device: threads)
    swept = LayerStats(5, torch.device("cpu"))
    lazy = [StreamingExtremes(5, k, largest, torch.device("cpu")) for k, largest in ((4, True), (30, False))]
    plain = [StreamingExtremes(5, k, largest, torch.device("cpu")) for k, largest in ((4, True), (30, False))]
    start = 0
    for b in _batches():
        image = torch.arange(start, start + b.shape[0], dtype=torch.int64)
        start += b.shape[0]
        new = [t.start(b.shape[0]) for t in lazy]

        def per_units(lo, hi, mx, mn, total, at_max, at_min):
            lazy[0].merge_units(new[0], lo, hi, mx, image, b[:, lo:hi], at_max)
            lazy[1].merge_units(new[1], lo, hi, mn, image, b[:, lo:hi], at_min)

        def bars(lo, hi):  # the trackers' entry levels: maps beyond them get positions during the sweep
            return lazy[0].threshold(lo, hi)[0].contiguous(), lazy[1].threshold(lo, hi)[0].contiguous()

        swept.observe(b, per_units, bars)
        for t, nw in zip(lazy, new):
            t.commit(nw)
        plain[0].update(*b.max(dim=2), image)
        plain[1].update(*b.min(dim=2), image)
    for t, want in zip(lazy, plain):
        for got, exp in zip(t.result(37), want.result(37)):
            np.testing.assert_array_equal(got, exp)


def test_sweep_state_is_identical_whatever_the_thread_count(monkeypatch):
    monkeypatch.setattr(stats_mod, "_CHUNK_ELEMENTS", 500)
    monkeypatch.setattr(stats_mod, "_INTERLEAVE_MIN", 4)
    x = torch.randn(19, 37, 5, generator=torch.Generator().manual_seed(5)) * 3
    states = []
    for threads in (1, 2, 3, 7):
        monkeypatch.setattr(stats_mod, "_sweep_threads", lambda device, t=threads: t)
        s = LayerStats(37, torch.device("cpu"))
        for i0 in (0, 6, 15):
            s.observe(x[i0 : i0 + 9])
        states.append(s)
    for s in states[1:]:
        for f in ("mean", "m2", "vmin", "vmax", "hist"):
            assert torch.equal(getattr(s, f), getattr(states[0], f)), f
