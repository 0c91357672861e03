"""render engine: objectives raise activations, batch/alone equivalence, truncation, NaN isolation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.render import RenderSettings, RenderTarget, derive_seed, plan_targets, render_units
from scopecli.render.engine import auto_batch



def small_cnn(seed=0):
    """conv-relu-conv(stride 2)-relu-conv-relu with weights large enough that every unit can move."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 6, 3, padding=1),
        nn.ReLU(),
    )
    with torch.no_grad():
        for mod in model:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight)
                mod.weight.mul_(2.0)
                mod.bias.zero_()
    return model


def fast(**kw):
    base = dict(steps=48, size=32, batch=8, lr=0.05, device="cpu")
    base.update(kw)
    return RenderSettings(**base)


@pytest.mark.parametrize("objective", ["channel", "neuron", "deepdream", "negative"])
def test_activation_moves_the_right_way_for_every_objective(objective):
    model = small_cnn()
    targets = plan_targets({"2": [0, 3, 5], "4": [1, 2]}, objective)
    result = render_units(model, targets, fast(steps=64), fingerprint="tiny")
    assert not result.skipped
    assert len(result.records) == (2 if objective == "deepdream" else 5)
    for layer, rec in result.records:
        start, end = float(rec.act_trace[0]), rec.act_final
        assert rec.act_trace.shape == (2,)  # every 32 steps
        assert rec.image.shape == (32, 32, 3) and rec.image.dtype == np.uint8
        spread = abs(start) + 1e-3
        if objective == "negative":
            assert end < start - 0.05 * spread, (layer, rec.unit, start, end)
        else:
            assert end > start + 0.05 * spread, (layer, rec.unit, start, end)
        if objective == "deepdream":
            assert rec.unit == -1


def test_diversity_gives_distinct_images_that_still_activate():
    model = small_cnn()
    targets = plan_targets({"4": [2]}, "channel", diversity=3)
    assert [t.diversity_index for t in targets] == [0, 1, 2]
    result = render_units(model, targets, fast(steps=64), fingerprint="tiny")
    recs = [rec for _, rec in result.records]
    assert [r.diversity_index for r in recs] == [0, 1, 2]
    assert len({r.seed for r in recs}) == 3
    for r in recs:
        assert r.act_final > r.act_trace[0]
    a, b = recs[0].image.astype(float), recs[1].image.astype(float)
    assert np.abs(a - b).mean() > 5


def test_unit_renders_the_same_alone_and_in_a_batch_of_8():
    from scopecli.model import resolve_model

    loaded = resolve_model("resnet18", weights="random")
    settings = dict(steps=32, size=48, device="cpu")
    target = RenderTarget("layer2.0", 7)
    alone = render_units(loaded, [target], RenderSettings(batch=1, **settings)).records
    others = [RenderTarget("layer1.1", u) for u in (0, 1, 2)] + [RenderTarget("layer2.0", u) for u in (1, 2, 3, 4)]
    batch = [others[0], others[1], target] + others[2:]
    assert len(batch) == 8
    together = render_units(loaded, batch, RenderSettings(batch=8, **settings)).records
    (layer_a, rec_a), (layer_b, rec_b) = alone[0], together[2]
    assert layer_a == layer_b == "layer2.0" and rec_a.unit == rec_b.unit == 7
    assert rec_a.seed == rec_b.seed
    diff = np.abs(rec_a.image.astype(float) - rec_b.image.astype(float)).mean()
    assert diff < 2.0, diff  # mean absolute difference under 2/255
    assert math.isclose(rec_a.act_final, rec_b.act_final, rel_tol=0.05, abs_tol=1e-3)
    # and the run actually changed the image away from a neighbour's (not a trivially equal result)
    assert np.abs(rec_b.image.astype(float) - together[3][1].image.astype(float)).mean() > 2.0


def test_forward_stops_after_the_deepest_target():
    from scopecli.model import resolve_model

    loaded = resolve_model("resnet18", weights="random")
    ran = []
    later = ["layer2", "layer3", "layer4", "avgpool", "fc", "layer1.1.conv2", "layer1.1.bn2"]
    handles = [
        dict(loaded.module.named_modules())[name].register_forward_hook(lambda m, i, o, n=name: ran.append(n))
        for name in later + ["layer1.0.conv1"]
    ]
    try:
        render_units(loaded, [RenderTarget("layer1.1.conv1", 3)], RenderSettings(steps=3, size=32, batch=1, device="cpu"))
    finally:
        for h in handles:
            h.remove()
    assert "layer1.0.conv1" in ran  # the hooks work
    assert not [n for n in ran if n in later], ran


class NanChannel(nn.Module):
    """Channel 2 of its output is log of a negative number: NaN from the first step."""

    def forward(self, x):
        return torch.cat([x[:, :2], torch.log(-x[:, 2:3].abs() - 1), x[:, 3:]], dim=1)


def test_nan_loss_skips_that_unit_and_keeps_the_others():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), NanChannel())
    result = render_units(model, plan_targets({"1": [0, 2, 4]}), fast(steps=16), fingerprint="nan")
    assert [rec.unit for _, rec in result.records] == [0, 4]
    assert len(result.skipped) == 1
    target, why = result.skipped[0]
    assert target.unit == 2 and "1:2" in why and "NaN" in why
    for _, rec in result.records:
        assert np.isfinite(rec.act_final) and np.isfinite(rec.act_trace).all()


def test_seed_depends_on_every_part_of_the_address():
    base = derive_seed(0, "abc", "layer1", 3, 0)
    assert base == derive_seed(0, "abc", "layer1", 3, 0)
    assert 0 <= base < 2**63
    variants = [derive_seed(1, "abc", "layer1", 3, 0), derive_seed(0, "abd", "layer1", 3, 0),
                derive_seed(0, "abc", "layer2", 3, 0), derive_seed(0, "abc", "layer1", 4, 0),
                derive_seed(0, "abc", "layer1", 3, 1)]
    assert len(set(variants + [base])) == 6


def test_rerun_reproduces_the_images_and_a_new_seed_changes_them():
    model = small_cnn()
    targets = plan_targets({"4": [0, 1]})
    a = render_units(model, targets, fast(steps=16), fingerprint="t").records
    b = render_units(model, targets, fast(steps=16), fingerprint="t").records
    c = render_units(model, targets, fast(steps=16, seed=5), fingerprint="t").records
    for (_, ra), (_, rb), (_, rc) in zip(a, b, c):
        assert np.array_equal(ra.image, rb.image)
        assert ra.seed != rc.seed and not np.array_equal(ra.image, rc.image)


def test_dataset_max_ratio_is_filled_when_stats_exist():
    model = small_cnn()
    result = render_units(model, plan_targets({"4": [0, 1]}), fast(steps=8), fingerprint="t",
                          dataset_max={"4": {0: 2.0}})
    recs = {rec.unit: rec for _, rec in result.records}
    assert recs[0].dataset_max_ratio == pytest.approx(recs[0].act_final / 2.0)
    assert math.isnan(recs[1].dataset_max_ratio)


@pytest.mark.parametrize(
    "kw, words",
    [(dict(size=8), "--size"), (dict(steps=0), "--steps"), (dict(param="wavelet"), "--param"),
     (dict(batch=0), "--batch"), (dict(lr=-1.0), "--lr")],
)
def test_bad_settings_are_one_clear_error(kw, words):
    with pytest.raises(ScopeError, match=words):
        render_units(small_cnn(), plan_targets({"4": [0]}), fast(**kw), fingerprint="t")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ScopeError, match="no CUDA device"):
        render_units(small_cnn(), plan_targets({"4": [0]}), fast(device="cuda"), fingerprint="t")


def test_unit_out_of_range_and_unknown_layer_are_clear_errors():
    with pytest.raises(ScopeError, match="out of range"):
        render_units(small_cnn(), plan_targets({"4": [6]}), fast(steps=2), fingerprint="t")
    with pytest.raises(ScopeError, match="layer"):
        render_units(small_cnn(), plan_targets({"9": [0]}), fast(steps=2), fingerprint="t")


def test_auto_batch_keeps_diversity_groups_whole():
    model = small_cnn()
    n = auto_batch(model, ["4"], 32, torch.device("cpu"), group=3)
    assert n >= 3 and n % 3 == 0
    result = render_units(model, plan_targets({"4": [0, 1]}, diversity=3), fast(steps=4, batch="auto"),
                          fingerprint="t")
    assert result.batch_size % 3 == 0 and len(result.records) == 6


def test_amp_bfloat16_runs_on_cpu():
    model = small_cnn()
    result = render_units(model, plan_targets({"4": [1]}), fast(steps=32, amp=True), fingerprint="t")
    (_, rec), = result.records
    assert rec.act_final > rec.act_trace[0]


def test_functional_relu_model_and_vector_layer():
    """A model with F.relu and a Linear head: a logit (2-D output) can be rendered too."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.conv = nn.Conv2d(3, 8, 3, stride=2)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    result = render_units(Net(), plan_targets({"fc": [0, 3]}), fast(steps=48), fingerprint="t")
    for _, rec in result.records:
        assert rec.act_final > rec.act_trace[0]


def test_same_batch_is_bit_identical_and_alone_differs_only_by_rounding():
    """What README promises: the same batch on the same machine and threads gives the same pixels; alone
    (another batch size, so other kernel rounding) the fast schedule stays within 2/255 on a small net."""
    model = small_cnn(seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        targets = plan_targets({"4": [0, 1, 2, 3]}, "channel")
        settings = dict(steps=40, size=32, device="cpu", schedule="fast", seed=5)
        together = render_units(model, targets, RenderSettings(batch=4, **settings), fingerprint="tiny").records
        again = render_units(model, targets, RenderSettings(batch=4, **settings), fingerprint="tiny").records
        alone = [render_units(model, [t], RenderSettings(batch=1, **settings), fingerprint="tiny").records[0]
                 for t in targets]
    finally:
        torch.set_num_threads(threads)
    for (_, a), (_, b), (_, c) in zip(together, again, alone):
        assert np.array_equal(a.image, b.image) and a.act_final == b.act_final
        assert np.abs(a.image.astype(float) - c.image.astype(float)).mean() < 2.0
        assert math.isclose(a.act_final, c.act_final, rel_tol=1e-3)
    assert np.abs(together[0][1].image.astype(float) - together[1][1].image.astype(float)).mean() > 2.0
