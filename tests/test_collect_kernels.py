"""collect's compiled pass-1 loops (scopecli.collect.kernels, numba) give bit for bit what the torch ops give:
histogram counts (against the numpy reference too), the positions and heatmaps of new top/bottom-k winners,
and whole collect runs; and both paths equal brute force."""

import numpy as np
import pytest
import torch

from collect_builders import loaded, noise_images, small_cnn
from scopecli import sketch
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
def test_histogram_equals_numpy_reference(pairs):
    x = _values(p=41)
    c = x.shape[1]
    size = c * sketch.NUM_BUCKETS
    counts = torch.zeros(2 * size, dtype=torch.int64)
    for u0, u1 in ((0, 3), (3, 4), (4, 7)):  # unit blocks (strided views) counted at their offsets
        kernels.histogram(x[:, u0:u1], counts, u0, size if pairs else 0)
    got = (counts[:size] + counts[size:]).view(c, -1).numpy()
    assert (counts[size:].sum() > 0) == pairs
    ref = x.permute(1, 0, 2).reshape(c, -1).numpy()
    want = np.stack([np.bincount(sketch.bucket_index_numpy(r), minlength=sketch.NUM_BUCKETS) for r in ref])
    np.testing.assert_array_equal(got, want)


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
    for name in ("mean", "m2", "vmin", "vmax", "hist"):
        assert torch.equal(getattr(a, name).nan_to_num(7.0), getattr(b, name).nan_to_num(7.0)), name
    for x1, x2 in zip(ra, rb):
        for t1, t2 in zip(x1, x2):
            torch.testing.assert_close(t1, t2, rtol=0, atol=0, equal_nan=True)


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
        for name, value in a.stats[layer].sketch.items():
            np.testing.assert_array_equal(value, b.stats[layer].sketch[name], err_msg=name)
        for which in ("top", "bottom"):
            ea, eb = a.examples[layer][which], b.examples[layer][which]
            for name in ("score", "image_index", "loc", "box", "heat", "heat_origin"):
                np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name), err_msg=f"{layer} {which} {name}")
        np.testing.assert_array_equal(a.probe[layer].acts, b.probe[layer].acts)
