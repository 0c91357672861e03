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


def test_same_batch_twice_is_bit_identical():
    """Same batch, same machine and threads: the same pixels and activations (whatever the thread count)."""
    model = small_cnn(seed=3)
    targets = plan_targets({"4": [0, 1, 2, 3]}, "channel")
    settings = RenderSettings(steps=40, size=32, device="cpu", schedule="fast", seed=5, batch=4)
    together = render_units(model, targets, settings, fingerprint="tiny").records
    again = render_units(model, targets, settings, fingerprint="tiny").records
    for (_, a), (_, b) in zip(together, again):
        assert np.array_equal(a.image, b.image) and a.act_final == b.act_final
    assert np.abs(together[0][1].image.astype(float) - together[1][1].image.astype(float)).mean() > 2.0


# Alone vs in a batch. Kernels may round differently for another batch size (oneDNN/MKL pick algorithms
# per shape and CPU: on an AVX-512 CPU unit 7 of resnet18 layer2.0 differed by 9.8/255 on average), and the
# optimisation amplifies the rounding into other detail. What holds on any CPU is that the picture shows the
# same thing: it drives its unit as much and correlates with the batched picture far above another unit's
# render from the same start. Measured (resnet18 random layer2.0 units 0-7 / small_cnn; 2 threads and 1,
# oneDNN off, batch 3, and rounding emulated by 1e-6 relative noise on every conv output, which moved the
# pictures by up to 11/255): activation ratio >= 0.98, pixel correlation >= 0.966; another unit's render
# from the identical start and transforms: ratio <= 0.59, correlation <= 0.57.
SAME_ACT = 0.8  # alone/batched activation of the unit on the stored pictures, both ways
SAME_PICTURE = 0.9  # Pearson correlation of the two pictures' pixels


def unit_activation(module, normalize, layer, unit, image):
    """The unit's mean activation (its channel over the grid) on a stored uint8 picture."""
    out = {}
    hook = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: out.setdefault("a", o))
    try:
        with torch.no_grad():
            module(normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255))
    finally:
        hook.remove()
    return float(out["a"][0, unit].mean())


def picture_correlation(a, b):
    a, b = a.astype(float).ravel(), b.astype(float).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def other_rounding(module, eps=1e-6):
    """Forward hooks that emulate another CPU's rounding: every conv output times (1 + eps * noise)."""
    gen = torch.Generator().manual_seed(0)

    def hook(_m, _i, out):
        return out * (1 + eps * torch.randn(out.shape, generator=gen))

    return [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]


def render_model(name):
    """(model for render_units, bare module, normalize, fingerprint, layer, units, settings)."""
    if name == "resnet18":
        from scopecli.model import resolve_model
        from scopecli.render.engine import _Normalize

        loaded = resolve_model("resnet18", weights="random")
        norm = _Normalize(loaded.preprocess.mean, loaded.preprocess.std)
        return loaded, loaded.module, norm, None, "layer2.0", list(range(8)), dict(steps=32, size=48)
    model = small_cnn(seed=3)
    return model, model, (lambda x: x), "tiny", "5", list(range(6)), dict(steps=40, size=32, seed=5)


@pytest.mark.parametrize("name", ["resnet18", "tiny"])
@pytest.mark.parametrize("rounding", ["this cpu", "another cpu"])
def test_a_unit_alone_and_in_a_batch_shows_the_same_thing(name, rounding):
    model, module, norm, fingerprint, layer, units, kw = render_model(name)
    targets = [RenderTarget(layer, u) for u in units]

    def render(ts, batch):
        fp = {} if fingerprint is None else dict(normalize=norm, fingerprint=fingerprint)
        return [r for _, r in render_units(model, ts, RenderSettings(batch=batch, device="cpu", **kw), **fp).records]

    alone = [render([t], 1)[0] for t in targets]
    hooks = other_rounding(module) if rounding == "another cpu" else []
    try:
        batched = render(targets, len(targets))
    finally:
        for h in hooks:
            h.remove()
    module.eval()
    for u, a, b in zip(units, alone, batched):
        assert a.seed == b.seed and a.act_final > a.act_trace[0] and b.act_final > b.act_trace[0]
        act_a, act_b = (unit_activation(module, norm, layer, u, r.image) for r in (a, b))
        assert SAME_ACT <= act_a / act_b <= 1 / SAME_ACT, (u, act_a, act_b)
        assert SAME_ACT <= a.act_final / b.act_final <= 1 / SAME_ACT, (u, a.act_final, b.act_final)
        assert picture_correlation(a.image, b.image) >= SAME_PICTURE, u


@pytest.mark.parametrize("name", ["resnet18", "tiny"])
def test_another_units_render_from_the_same_start_fails_the_same_thing_bounds(name, monkeypatch):
    """The bounds above are not met by any picture: with one seed for every unit (same start, same
    transforms) each unit's render against its neighbour's misses the picture bound, and most miss the
    activation bound too."""
    import scopecli.render.engine as engine

    model, module, norm, fingerprint, layer, units, kw = render_model(name)
    monkeypatch.setattr(engine, "derive_seed", lambda *address: 1234567)
    fp = {} if fingerprint is None else dict(normalize=norm, fingerprint=fingerprint)
    settings = RenderSettings(batch=len(units), device="cpu", **kw)
    recs = [r for _, r in render_units(model, [RenderTarget(layer, u) for u in units], settings, **fp).records]
    assert len({r.seed for r in recs}) == 1
    module.eval()
    act_misses = 0
    for i, u in enumerate(units):
        own, other = recs[i], recs[(i + 1) % len(units)]
        act_own, act_other = (unit_activation(module, norm, layer, u, r.image) for r in (own, other))
        act_misses += not (SAME_ACT <= act_other / act_own <= 1 / SAME_ACT)
        assert picture_correlation(own.image, other.image) < SAME_PICTURE, u
    assert act_misses >= len(units) // 2, act_misses  # random small nets' units are not all selective
