"""Render time estimate: per-layer costs summed over batches (fake clocks and cost tables, no real timing)."""

import itertools

import pytest
import torch
from torch import nn

from scopecli.core.progress import Work, numbers_text
from scopecli.render import RenderSettings, RenderTarget, render_units
from scopecli.render.engine import estimate_render
from scopecli.render.estimate import LayerCost, batch_cost, deepest_layers, estimate_plan, fmt_duration, time_layer
from scopecli.jobs.render import EstimateTracker


def stepped_clock(durations):
    """A clock whose consecutive (start, stop) readings are `durations` apart (then 1 s each)."""
    state = {"t": 0.0, "calls": 0}
    gaps = iter(durations)

    def clock():
        state["calls"] += 1
        if state["calls"] % 2 == 0:  # a stop reading
            state["t"] += next(gaps, 1.0)
        return state["t"]

    return clock


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU())


def test_each_batch_costs_what_its_deepest_layer_costs():
    order = ["a", "b", "c"]
    costs = {"a": LayerCost(0.1, 0.05), "b": LayerCost(0.3, 0.1), "c": LayerCost(1.0, 0.4)}
    chunks = [[RenderTarget("a", 0), RenderTarget("a", 1)], [RenderTarget("a", 2), RenderTarget("b", 0)],
              [RenderTarget("c", 0)], [RenderTarget("b", 1), RenderTarget("c", 1), RenderTarget("a", 3)]]
    est = estimate_plan(chunks, order, costs, steps=100, evidence_passes=17)
    expected = [100 * 0.1 + 17 * 0.05, 100 * 0.3 + 17 * 0.1, 100 * 1.0 + 17 * 0.4, 100 * 1.0 + 17 * 0.4]
    assert est.batch_seconds == pytest.approx(expected)
    assert est.total_s == pytest.approx(sum(expected))
    assert est.target_seconds == pytest.approx([expected[0] / 2] * 2 + [expected[1] / 2] * 2 + [expected[2]]
                                               + [expected[3] / 3] * 3)
    assert sum(est.target_seconds) == pytest.approx(est.total_s)
    assert deepest_layers(chunks, order) == ["a", "b", "c"]
    assert deepest_layers(chunks[:1], order) == ["a"]
    assert batch_cost(costs["b"], 10, 2) == pytest.approx(3.2)


def test_time_layer_keeps_the_best_of_its_repeats():
    # warm-ups are not timed: the clock sees step (3 s, 2 s), then forward (5 s, 4 s)
    cost = time_layer(net(), lambda x: x, "2", batch=2, size=16, device=torch.device("cpu"),
                      clock=stepped_clock([3.0, 2.0, 5.0, 4.0]), repeats=2)
    assert cost == LayerCost(2.0, 4.0)


def test_estimate_times_only_the_deepest_layer_of_each_batch_at_the_runs_batch_size():
    module = net()
    chunks = [[RenderTarget("0", 0), RenderTarget("0", 1), RenderTarget("0", 2)], [RenderTarget("0", 3), RenderTarget("2", 0)]]
    calls = []

    def timer(module, normalize, layer, batch, size, device, amp, clock):
        calls.append((layer, batch, size))
        return {"0": LayerCost(0.01, 0.002), "2": LayerCost(0.05, 0.01)}[layer]

    settings = RenderSettings(steps=40, size=24, robust_samples=3)
    est = estimate_render(module, lambda x: x, chunks, settings, torch.device("cpu"), timer=timer)
    assert calls == [("0", 3, 24), ("2", 3, 24)]
    assert est.batch_seconds == pytest.approx([40 * 0.01 + 4 * 0.002, 40 * 0.05 + 4 * 0.01])


def test_progress_work_adds_up_to_the_estimate():
    """The bar's ETA follows the work render_units reports: it must sum to the printed estimate."""
    seen, done = [], []

    class Bar:
        def advance(self, n, work=None):
            w = work
            seen.append(n)
            done.append(w)
    settings = RenderSettings(steps=6, size=16, batch=2, device="cpu", robust_samples=2, schedule="fast")
    targets = [RenderTarget("0", u) for u in range(3)] + [RenderTarget("2", u) for u in range(2)]
    got = []
    clock = stepped_clock([])  # every timed call "takes" 1 s: each layer costs 1 s a step and 1 s a forward
    result = render_units(net(), targets, settings, fingerprint="t", progress=Bar(), on_estimate=got.append, clock=clock)
    assert len(result.records) == 5
    (est,) = got
    assert est.batch_seconds == pytest.approx([6 + 3] * 3)  # three batches (2, 2, 1), 6 steps + 3 forwards each
    assert sum(seen) == pytest.approx(5) and sum(done) == pytest.approx(est.total_s)


def test_no_estimate_for_a_single_batch():
    got = []
    render_units(net(), [RenderTarget("2", 0)], RenderSettings(steps=2, size=16, device="cpu"), fingerprint="t",
                 on_estimate=got.append)
    assert got == []


def test_first_batch_scales_the_prediction():
    from scopecli.render.estimate import RenderEstimate

    tracker = EstimateTracker()
    assert tracker.after_batch(1, 5.0) is None  # no estimate, nothing to say
    tracker.estimate = RenderEstimate([2.0, 4.0, 6.0], [1.0] * 6)
    line = tracker.after_batch(1, 4.0)  # the machine runs at half the timed speed: 4 + 2 * 10
    assert line == "first batch: 4.0 s (predicted 2.0 s); estimated total 24 s"
    assert tracker.after_batch(2, 9.0) is None


def test_weighted_eta():
    t = {"now": 100.0}
    w = Work(120.0, clock=lambda: t["now"])
    assert w.eta() is None
    t["now"] = 110.0
    w.done = 30.0  # a quarter of the work in 10 s
    assert w.eta() == pytest.approx(30.0)
    # 1 of 4 units done (25 %) but the ETA is the work's, not the unit count's
    assert numbers_text(1, 4, 10.0, "units", w).endswith("ETA 0:00:30")
    assert numbers_text(1, 4, 10.0, "units").endswith("ETA 0:00:30")
    w.done = 12.0
    assert numbers_text(1, 4, 10.0, "units", w).endswith("ETA 0:01:30")


@pytest.mark.parametrize("s, text", [(42.2, "42 s"), (210, "3.5 min"), (7560, "2.1 h")])
def test_durations(s, text):
    assert fmt_duration(s) == text
