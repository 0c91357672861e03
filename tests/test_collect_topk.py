"""Streaming top/bottom-k (per-unit threshold, slots written in place) against brute force on random data:
winners, scores, first arg-max positions and heatmaps, with ties, NaN, groups, any batching, both the CPU
path (only units with a candidate) and the accelerator path (every unit, no host sync)."""

import numpy as np
import pytest
import torch

from scopecli.collect.crops import heat_origins
from scopecli.collect.topk import HeatGeometry, StreamingExtremes
from scopecli.core.sketch import merge_ranked, take_ranked

GRID = (4, 5)
HEAT = (3, 2)


def _data(n=61, c=6, seed=0):
    """[n, c, 20] activations: ties between images and inside maps, NaN, constant maps, a few big values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, GRID[0] * GRID[1], generator=g)
    x = torch.round(x * 2) / 2  # many exact ties
    x[:, 1] = torch.relu(x[:, 1])  # zeros: ties for the minimum
    x[5, 2, 3] = float("nan")
    x[17, 3] = float("nan")
    x[30:40, 4] = 1.0  # constant maps: the first position wins
    x[::7, 5] += torch.arange(0, n, 7).view(-1, 1) * 0.1  # later images keep entering
    return x


def _brute(x: np.ndarray, k: int, largest: bool, groups=None, per_source=0):
    """Per unit: (score, image, flat position, heatmap) of the k best images, best first."""
    n, c, p = x.shape
    out = []
    for u in range(c):
        maps = x[:, u]
        ext = np.where(np.isnan(maps).all(1), np.nan, np.nanmax(np.where(np.isnan(maps), -np.inf, maps), 1)
                       if largest else np.nanmin(np.where(np.isnan(maps), np.inf, maps), 1))
        ext = np.where(np.isnan(maps).any(1), np.nan, ext)  # torch.amax propagates NaN (all-NaN rows: NaN too)
        key = np.nan_to_num(ext, nan=-np.inf if largest else np.inf)
        order = np.lexsort((np.arange(n), -key if largest else key))
        if per_source:
            taken, kept = {}, []
            for i in order:
                if np.isnan(ext[i]) or taken.get(groups[i], 0) >= per_source:
                    continue
                taken[groups[i]] = taken.get(groups[i], 0) + 1
                kept.append(i)
            order = np.array(kept, dtype=np.int64)
        order = order[:k]
        rows = []
        for i in order:
            m = torch.from_numpy(maps[i])
            pos = int(m.argmax() if largest else m.argmin())
            y, xx = divmod(pos, GRID[1])
            oy, ox = heat_origins(np.int64(y), np.int64(xx), HEAT, GRID)
            heat = maps[i].reshape(GRID)[oy:oy + HEAT[0], ox:ox + HEAT[1]]
            rows.append((ext[i], int(i), pos, heat))
        out.append(rows)
    return out


def _run(x, k, largest, sizes, skip_units=True, groups=None, per_source=0):
    t = StreamingExtremes(x.shape[1], k, largest, torch.device("cpu"), HeatGeometry(GRID, HEAT),
                          None if groups is None else torch.as_tensor(groups), per_source)
    t.skip_units = skip_units
    start = 0
    for size in sizes:
        b = x[start:start + size]
        image = torch.arange(start, start + b.shape[0])
        t.update_located(b.amax(2) if largest else b.amin(2), image, b)
        start += b.shape[0]
    assert start == x.shape[0]
    return t.result(GRID[1])


def _check(got, want, k):
    score, image, loc, heat = got
    for u, rows in enumerate(want):
        assert image[u].tolist() == [r[1] for r in rows] + [-1] * (k - len(rows)), u
        np.testing.assert_array_equal(score[u, :len(rows)], np.float32([r[0] for r in rows]))
        assert np.isnan(score[u, len(rows):]).all()
        assert [int(a) * GRID[1] + int(b) for a, b in loc[u, :len(rows)]] == [r[2] for r in rows]
        for j, r in enumerate(rows):
            np.testing.assert_array_equal(heat[u, j], r[3])
        assert np.isnan(heat[u, len(rows):]).all()


@pytest.mark.parametrize("skip_units", [True, False])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 4, 70])
def test_tracker_equals_brute_force(k, largest, skip_units):
    x = _data()
    want = _brute(x.numpy(), k, largest)
    for sizes in ([61], [8] * 7 + [5], [1, 2, 3, 11, 1, 43]):  # image 17 (NaN in unit 3) alone
        _check(_run(x, k, largest, sizes, skip_units), want, k)


@pytest.mark.parametrize("skip_units", [True, False])
def test_tracker_with_groups_equals_brute_force(skip_units):
    x = _data(seed=2)
    groups = np.arange(x.shape[0]) // 3  # three crops of each photo, in a row
    groups[40:] = 99  # and one big group
    for per_source, k in ((1, 5), (2, 4), (1, 30)):
        for largest in (True, False):
            want = _brute(x.numpy(), k, largest, groups, per_source)
            for sizes in ([61], [7] * 8 + [5]):
                _check(_run(x, k, largest, sizes, skip_units, groups, per_source), want, k)


def test_threshold_only_merges_units_a_batch_can_change():
    x = torch.zeros(40, 3, 20)
    x[:, 0, 0] = torch.arange(40.0)  # unit 0: every image beats the last
    x[:, 1] = -torch.arange(40.0).view(-1, 1)  # unit 1: nothing after the first K enters
    x[20, 2, 0] = 5.0  # unit 2: one late winner
    t = StreamingExtremes(3, 4, True, torch.device("cpu"), HeatGeometry(GRID, HEAT))
    t.update_located(x[:10].amax(2), torch.arange(10), x[:10])
    slots = t.image.clone(), t.heat.clone()
    worst, full = t.threshold(0, 3)
    assert full.all() and worst.tolist() == [6.0, -3.0, 0.0]
    t.update_located(x[10:].amax(2), torch.arange(10, 40), x[10:])
    assert torch.equal(t.image[1], slots[0][1]) and torch.equal(t.heat[1], slots[1][1])  # untouched
    assert sorted(t.image[2].tolist()) == [0, 1, 2, 20]  # one slot rewritten, the rest in place
    assert sum(a != b for a, b in zip(t.image[2].tolist(), slots[0][2].tolist())) == 1
    assert t.result(GRID[1])[1].tolist() == [[39, 38, 37, 36], [0, 1, 2, 3], [20, 0, 1, 2]]


@pytest.mark.parametrize("per_source", [0, 1])
@pytest.mark.parametrize("largest", [True, False])
def test_shards_merge_exactly_into_one_run(largest, per_source):
    """Shards of whole batches (as `collect --shard` cuts them), merged the way `scope pack` merges them,
    give exactly one run's winners, positions and heatmaps."""
    x = _data(n=54, seed=4)
    groups = np.arange(54) // 2 if per_source else None
    k = 6
    whole = _run(x, k, largest, [9] * 6, groups=groups, per_source=per_source)
    merged = None
    for a, b in ((0, 18), (18, 36), (36, 54)):
        score, image, loc, heat = _run(x[a:b], k, largest, [9, 9], groups=None if groups is None else groups[a:b],
                                       per_source=per_source)
        part = (score, np.where(image >= 0, image + a, -1), loc, heat)
        if merged is None:
            merged = part
            continue
        cat = [np.concatenate([m, p], axis=1) for m, p in zip(merged, part)]
        picks = merge_ranked(cat[0], cat[1], k, largest, groups, per_source)
        merged = tuple(take_ranked(v, picks, fill) for v, fill in zip(cat, (np.nan, -1, 0, np.nan)))
    for got, want in zip(merged, whole):
        np.testing.assert_array_equal(got, want)


def test_a_state_saved_best_first_with_fewer_slots_resumes_exactly():
    """Checkpoints of scope 0.1 (state version 3) hold the winners best first, one column per image seen
    while fewer than K: loaded as slots, the run goes on to the same result."""
    x = _data(n=30, seed=6)
    k = 5
    whole = _run(x, k, True, [3, 27])
    first = StreamingExtremes(6, k, True, torch.device("cpu"), HeatGeometry(GRID, HEAT))
    first.update_located(x[:3].amax(2), torch.arange(3), x[:3])
    score, image, loc, heat = first.result(GRID[1])
    pos = loc[..., 0] * GRID[1] + loc[..., 1]
    old = {"score": score[:, :3], "image": image[:, :3], "pos": pos[:, :3].astype(np.int64), "heat": heat[:, :3]}
    resumed = StreamingExtremes(6, k, True, torch.device("cpu"), HeatGeometry(GRID, HEAT))
    resumed.load_state_arrays(old)
    resumed.update_located(x[3:].amax(2), torch.arange(3, 30), x[3:])
    for got, want in zip(resumed.result(GRID[1]), whole):
        np.testing.assert_array_equal(got, want)
