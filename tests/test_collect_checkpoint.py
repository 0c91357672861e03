"""collect's pass-1 state: accumulators hand over plain arrays and go on exactly; the sidecar refuses what
is not its run's."""

import numpy as np
import pytest
import torch

from scopecli.collect.checkpoint import Pass1Checkpoint, Pass1State, state_path
from scopecli.collect.stats import LayerStats
from scopecli.collect.topk import StreamingExtremes
from scopecli.core.errors import ScopeError
from scopecli.core.records import LayerRecord

CPU = torch.device("cpu")


def _batches():
    g = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(12, 4, 9, generator=g))
    return [x[:5], x[5:]]


def test_accumulators_resume_from_their_arrays_bit_for_bit():
    whole_stats, whole_top = LayerStats(4, CPU), StreamingExtremes(4, 3, True, CPU)
    first_stats, first_top = LayerStats(4, CPU), StreamingExtremes(4, 3, True, CPU)
    a, b = _batches()
    for stats, top in ((whole_stats, whole_top), (first_stats, first_top)):
        mx, _mn, _total = stats.observe(a)
        top.update_located(mx, torch.arange(5), a)
    arrays_stats, arrays_top = first_stats.state_arrays(), first_top.state_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in [*arrays_stats.values(), *arrays_top.values()])
    resumed_stats, resumed_top = LayerStats(4, CPU), StreamingExtremes(4, 3, True, CPU)
    resumed_stats.load_state_arrays(arrays_stats)
    resumed_top.load_state_arrays(arrays_top)
    for stats, top in ((whole_stats, whole_top), (resumed_stats, resumed_top)):
        mx, _mn, _total = stats.observe(b)
        top.update_located(mx, torch.arange(5, 12), b)
    x, y = whole_stats.finalize(), resumed_stats.finalize()
    for f in ("count", "mean", "std", "min", "max", "quantiles"):
        np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    for p, q in zip(whole_top.result(9), resumed_top.result(9)):
        np.testing.assert_array_equal(p, q)


def test_accumulators_refuse_arrays_of_another_shape():
    with pytest.raises(ValueError):
        LayerStats(4, CPU).load_state_arrays(LayerStats(5, CPU).state_arrays())
    with pytest.raises(ValueError):
        StreamingExtremes(4, 3, True, CPU).load_state_arrays({"score": np.zeros((4, 5), np.float32),
                                                              "image": np.zeros((4, 5), np.int64),
                                                              "pos": np.zeros((4, 5), np.int64)})


def _trackers(r):
    return StreamingExtremes(r.units, 2, True, CPU), StreamingExtremes(r.units, 1, False, CPU), None


def test_sidecar_round_trip_and_refusals(tmp_path):
    out = str(tmp_path / "out.h5")
    records = [LayerRecord(name="a/b", units=4, shape=(4, 3, 3), rf_size=3, rf_stride=1, rf_start=0)]
    state = Pass1State.empty(records, 3, CPU, _trackers)
    state.ok[:] = [True, False, True]
    state.sha256[:] = ["x", "", "z"]
    state.reason[:] = ["", "broken", ""]
    state.width[:] = [10, 0, 12]
    state.height[:] = [11, 0, 13]
    state.probe_index.append(np.array([0, 2]))
    state.layers["a/b"].probe_rows.append(torch.ones(2, 4, dtype=torch.float16))
    state.batches = 1
    Pass1Checkpoint(out, {"k": 1}, every_s=0).save(state)
    with np.load(state_path(out), allow_pickle=False) as z:  # plain arrays only
        assert "__meta__" in z.files
    ckpt = Pass1Checkpoint(out, {"k": 1}, resume=True)
    again = Pass1State.empty(records, 3, CPU, _trackers)
    ckpt.restore(again)
    assert again.batches == ckpt.start_batch == 1
    assert again.sha256 == state.sha256 and again.reason == state.reason and list(again.ok) == list(state.ok)
    assert again.width == state.width and again.height == state.height
    np.testing.assert_array_equal(again.probe_image_index(), [0, 2])
    np.testing.assert_array_equal(again.layers["a/b"].probe_acts(), np.ones((2, 4), np.float16))
    with pytest.raises(ScopeError, match="other parameters"):
        Pass1Checkpoint(out, {"k": 2}, resume=True)
    with pytest.raises(ScopeError, match="does not match this run"):
        Pass1Checkpoint(out, {"k": 1}, resume=True).restore(Pass1State.empty(records, 4, CPU, _trackers))
