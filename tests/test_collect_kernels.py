"""collect's compiled pass-1 loops (scopecli.collect.kernels, numba) give bit for bit what the torch ops give:
histogram counts (against the numpy reference too), maps' max and min, the positions and heatmaps of new
top/bottom-k winners, and whole collect runs; their float64 sums give moments closer to brute force than the
torch path's float32 sums (equal to rounding)."""

import numpy as np
import pytest
import torch

from collect_builders import loaded, noise_images, small_cnn
from scopecli.core import sketch
from scopecli.collect import CollectSettings, collect, kernels, open_source
from scopecli.collect import stats as stats_mod
from scopecli.collect.stats import LayerStats
from scopecli.collect.topk import HeatGeometry, StreamingExtremes

pytest.importorskip("numba")
CPU = torch.device("cpu")


@pytest.fixture
def torch_only(monkeypatch):
    """Within a test: pass 1 without the compiled loops (what a machine without numba runs)."""

    def use(on: bool):
        if on:
            monkeypatch.setitem(kernels._STATE, "kernels", None)
        else:
            monkeypatch.delitem(kernels._STATE, "kernels", raising=False)
            assert kernels.available(CPU)

    return use


def _values(n=23, c=7, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, p, generator=g) * torch.logspace(-6, 5, c).view(1, c, 1)
    x = torch.round(x * 4) / 4 if seed % 2 else x
    x[:, 1] = torch.relu(x[:, 1])  # exact zeros
    x[::2, 1, 3:27] = 0.0  # runs of zeros, some covering whole aligned groups of eight
    x[1, 5, 16:24] = -0.0  # a group of eight -0.0 (not +0.0's bits, the same bucket)
    x[2, 2, 5], x[3, 3, :4] = float("nan"), float("inf")
    x[4, 4, 7], x[5, 4, 9], x[6, 5, 1] = -0.0, float("-inf"), 1e-40  # -0, -inf, a denormal
    x[7:12, 6] = 2.5  # constant maps
    return x


def test_the_compiled_loops_run_here():
    # numba imports in this environment, so the compiled path must be the one collect takes (a silent fallback
    # would leave the comparisons below comparing the torch path with itself)
    kernels._STATE.pop("kernels", None)
    assert kernels.available(CPU) and not kernels.available(torch.device("meta"))


def test_scope_collect_numba_0_turns_them_off_and_prepare_loads_them_in_the_background(monkeypatch):
    monkeypatch.setenv("SCOPE_COLLECT_NUMBA", "0")
    monkeypatch.delitem(kernels._STATE, "kernels", raising=False)
    assert not kernels.available(CPU)
    monkeypatch.delenv("SCOPE_COLLECT_NUMBA")
    monkeypatch.delitem(kernels._STATE, "kernels")
    assert kernels.prepare(torch.device("meta")) is None  # nothing to prepare off the CPU
    thread = kernels.prepare(CPU)
    thread.join()
    assert kernels.available(CPU) and kernels.prepare(CPU) is None  # ready: nothing more to start


@pytest.mark.parametrize("pairs", [False, True])
def test_reduce_equals_numpy_and_torch_on_every_unit_range(pairs):
    x = _values(p=41)
    n, c, _ = x.shape
    size = c * sketch.NUM_BUCKETS
    counts = torch.zeros(2 * size, dtype=torch.int32)
    out = torch.full((2, n, c), 9.0), torch.full((2, n, c), 9.0, dtype=torch.float64)
    at = torch.full((2, n, c), -7, dtype=torch.int32)
    g = torch.Generator().manual_seed(4)
    top = x.amax(2)[torch.randint(n, (c,), generator=g), torch.arange(c)]  # levels some maps are above, some not
    bottom = x.amin(2)[torch.randint(n, (c,), generator=g), torch.arange(c)]
    for lo, hi in ((0, 3), (3, 4), (4, 7)):  # unit ranges, each counted at its own offset
        kernels.reduce(x, counts, lo, hi, size if pairs else 0, out[0][0], out[0][1], out[1][0], out[1][1],
                       top[lo:hi], bottom[lo:hi], at[0], at[1])
    got = (counts[:size] + counts[size:]).view(c, -1).numpy()
    assert (counts[size:].sum() > 0) == pairs
    ref = x.permute(1, 0, 2).reshape(c, -1).numpy()
    want = np.stack([np.bincount(sketch.bucket_index_numpy(r), minlength=sketch.NUM_BUCKETS) for r in ref])
    np.testing.assert_array_equal(got, want)
    torch.testing.assert_close(out[0][0], x.amax(2), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out[0][1], x.amin(2), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out[1][0], x.double().sum(2), rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(out[1][1], x.double().square().sum(2), rtol=1e-12, atol=0, equal_nan=True)
    for k, (mx, level, above) in enumerate(((x.max(2), top, torch.gt), (x.min(2), bottom, torch.lt))):
        wanted = above(mx.values, level.view(1, -1)) | mx.values.isnan()  # maps beyond the level, or NaN
        assert 0 < wanted.sum() < wanted.numel()
        np.testing.assert_array_equal(at[k][wanted].numpy(), mx.indices[wanted].numpy())  # torch's first extreme
        assert (at[k][~wanted] == -1).all()


@pytest.mark.parametrize("interleave", [2, 1 << 30])
@pytest.mark.parametrize("threads", [1, 3])
def test_observe_gives_the_same_bits_with_and_without_kernels(monkeypatch, torch_only, threads, interleave):
    monkeypatch.setattr(stats_mod, "_CHUNK_ELEMENTS", 150)  # several blocks per thread
    monkeypatch.setattr(stats_mod, "_INTERLEAVE_MIN", interleave)
    monkeypatch.setattr(stats_mod, "_sweep_threads", lambda device: threads)
    x = _values(n=30, seed=1)
    out = {}
    for compiled in (True, False):
        torch_only(not compiled)
        s = LayerStats(x.shape[1], CPU)
        red = [s.observe(b) for b in (x[:9], x[9:10], x[10:])]
        out[compiled] = s, red
    (a, ra), (b, rb) = out[True], out[False]
    for name in ("vmin", "vmax", "hist"):  # counts and extremes: the same bits
        assert torch.equal(getattr(a, name).nan_to_num(7.0), getattr(b, name).nan_to_num(7.0)), name
    for t1, t2 in zip(ra[:2], rb[:2]):  # per-image max and min
        torch.testing.assert_close(t1, t2, rtol=0, atol=0, equal_nan=True)
    # sums: the compiled pass adds in float64 (torch's per-map sums are float32), so the moments agree with brute
    # force to float64 rounding there, and with the torch path to float32 rounding
    torch.testing.assert_close(ra[2], rb[2], rtol=1e-6, atol=0, equal_nan=True)
    ref = x.double().permute(1, 0, 2).reshape(x.shape[1], -1)
    fin = ref.isfinite().all(1)  # units 2-4 hold NaN or inf: their moments are NaN/inf on both paths alike
    assert 0 < fin.sum() < len(fin)
    mean = ref.mean(1)
    m2 = (ref - mean.view(-1, 1)).square().sum(1)
    torch.testing.assert_close(a.mean[fin], mean[fin], rtol=1e-12, atol=0)
    torch.testing.assert_close(a.m2[fin], m2[fin], rtol=1e-9, atol=0)
    torch.testing.assert_close(b.mean[fin], mean[fin], rtol=1e-6, atol=0)
    torch.testing.assert_close(b.m2[fin], m2[fin], rtol=1e-5, atol=0)
    for name in ("mean", "m2"):
        assert torch.equal(getattr(a, name)[~fin].nan_to_num(7.0), getattr(b, name)[~fin].nan_to_num(7.0)), name


def _trackers(x, k, largest, geometry, sizes, groups=None, per_source=0):
    t = StreamingExtremes(x.shape[1], k, largest, CPU, geometry, None if groups is None else torch.as_tensor(groups),
                          per_source)
    start = 0
    for size in sizes:
        b = x[start : start + size]
        t.update_located(b.amax(2) if largest else b.amin(2), torch.arange(start, start + b.shape[0]), b)
        start += b.shape[0]
    return t


@pytest.mark.parametrize("heat", [(3, 2), (4, 10), None])  # a window, the whole grid, no heatmaps
@pytest.mark.parametrize("largest", [True, False])
def test_new_winners_positions_and_heatmaps_are_those_of_the_torch_path(torch_only, heat, largest):
    x = _values(n=40, p=40, seed=3)
    geometry = None if heat is None else HeatGeometry((4, 10), heat)
    groups = np.arange(40) // 4
    for k, per_source, sizes in ((3, 0, [40]), (5, 0, [7, 1, 13, 19]), (4, 1, [9, 9, 22]), (50, 0, [11, 29])):
        got = {}
        for compiled in (True, False):
            torch_only(not compiled)
            t = _trackers(x, k, largest, geometry, sizes, groups if per_source else None, per_source)
            got[compiled] = t.state_arrays(), t.result(10)
        for name, arr in got[True][0].items():
            np.testing.assert_array_equal(arr, got[False][0][name], err_msg=name)
        for a, b in zip(*(got[c][1] for c in (True, False))):
            assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)
        pos, image = got[True][0]["pos"], got[True][0]["image"]
        maps = x.numpy()[np.maximum(image, 0), np.arange(x.shape[1])[:, None]]  # [C, K, P]
        first = np.argmax(maps == (np.nanmax if largest else np.nanmin)(maps, 2, keepdims=True), 2)
        plain = ~np.isnan(maps).any(2) & (image >= 0)  # maps without NaN: the first extreme
        np.testing.assert_array_equal(pos[plain], first[plain])


def test_scores_that_are_not_in_their_maps_are_located_like_the_torch_path(torch_only):
    x = _values(n=12, p=40, seed=5)
    got = {}
    for compiled in (True, False):
        torch_only(not compiled)
        t = StreamingExtremes(x.shape[1], 3, True, CPU, HeatGeometry((4, 10), (2, 2)))
        t.update_located(x.amax(2) * 0.5 + 1.0, torch.arange(12), x)  # an outside score: the map's first max
        got[compiled] = t.state_arrays()
    for name in got[True]:
        np.testing.assert_array_equal(got[True][name], got[False][name], err_msg=name)


def test_collect_is_identical_with_and_without_kernels(tmp_path, torch_only):
    noise_images(tmp_path, 29, 20, seed=2)
    model = loaded(small_cnn(seed=6), 20)
    settings = CollectSettings(top_k=4, bottom_k=3, patch_size=12, probe=9, batch=7, workers=0, device="cpu")
    runs = {}
    for compiled in (True, False):
        torch_only(not compiled)
        runs[compiled] = collect(model, open_source(tmp_path), ["1", "2"], settings)
    a, b = runs[True], runs[False]
    for layer in ("1", "2"):
        sk = b.stats[layer].sketch
        # float64 sums (compiled) vs float32 per-map ones (torch): a float32 sum of P <= 400 values (20x20 maps)
        # rounds by at most P*u*sum|x|, in any order on any CPU; bounded through the RMS, since a mean (and m2
        # from sums of squares) may cancel far below it
        rms2 = sk["m2"] / sk["count"] + sk["mean"] ** 2
        atol = {"mean": 400 * 2.0**-24 * np.sqrt(rms2), "m2": 2 * 400 * 2.0**-24 * sk["count"] * rms2}
        for name, value in a.stats[layer].sketch.items():
            if name in ("mean", "m2"):
                assert (np.abs(value - sk[name]) <= atol[name]).all(), (name, value - sk[name], atol[name])
            else:
                np.testing.assert_array_equal(value, b.stats[layer].sketch[name], err_msg=name)
        for which in ("top", "bottom"):
            ea, eb = a.examples[layer][which], b.examples[layer][which]
            for name in ("score", "image_index", "loc", "box", "heat", "heat_origin"):
                np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name), err_msg=f"{layer} {which} {name}")
        # float16 means of float32 sums that may round apart: one float16 step, 2**-10 relative (2**-24 below 2**-14)
        np.testing.assert_allclose(a.probe[layer].acts, b.probe[layer].acts, rtol=2**-10, atol=2**-24)


@pytest.mark.parametrize("compiled", [True, False])
def test_int32_working_counts_are_added_into_int64_ones_before_they_could_overflow(monkeypatch, torch_only, compiled):
    torch_only(not compiled)
    x = _values(n=30, seed=1)
    c = x.shape[1]
    batches = (x[:9], x[9:10], x[10:])
    plain = LayerStats(c, CPU)
    for b in batches:
        plain.observe(b)
    monkeypatch.setattr(stats_mod, "_COUNT_LIMIT", 100)  # every batch (9 x 40 values a unit at most) flushes first
    flushed, resumed = LayerStats(c, CPU), LayerStats(c, CPU)
    for i, b in enumerate(batches):
        flushed.observe(b)
        if i == 1:  # a resumed run goes on from the saved int64 counts
            resumed.load_state_arrays(flushed.state_arrays())
        if i >= 1:
            assert flushed._total.sum() > 0 and flushed._counts.dtype == torch.int32
        if i == 2:
            resumed.observe(b)
    ref = x.permute(1, 0, 2).reshape(c, -1).numpy()
    want = np.stack([np.bincount(sketch.bucket_index_numpy(r), minlength=sketch.NUM_BUCKETS) for r in ref]).ravel()
    for s in (plain, flushed, resumed):
        assert s.hist.dtype == torch.int64
        np.testing.assert_array_equal(s.hist.numpy(), want)
