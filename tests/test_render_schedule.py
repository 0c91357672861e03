"""Render schedules: `lucid` is the 0.1 recipe unchanged, `fast` and `settle` (the default) anneal lr and transforms,
every one is recorded."""

import math

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from scopecli.core.errors import ScopeError
from scopecli.render import transforms as tf
from scopecli.render.engine import RenderSettings, step_transforms
from scopecli.render.schedule import DEFAULT_STEPS, SCHEDULES, get_schedule, scaled_transforms

MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]
FAST = ["--steps", "8", "--size", "32", "--batch", "4", "--device", "cpu", "--quiet"]


def test_lucid_is_the_old_recipe():
    s = get_schedule("lucid")
    assert s.lr == 0.05 and s.betas == (0.9, 0.999) and s.init_scale == 1.0 and s.decay_power == 1.0
    assert {s.lr_at(k, 512, 0.05) for k in range(512)} == {0.05}
    assert {s.strength_at(k, 512) for k in range(512)} == {1.0}
    draws = tf.draw(torch.Generator().manual_seed(4), 12 * 3).reshape(12, 3, 6)
    spec = RenderSettings().transforms
    assert torch.equal(step_transforms(draws, 64, spec, s), tf.affine_matrices(draws, 64, spec))
    assert DEFAULT_STEPS["lucid"] == 512


@pytest.mark.parametrize("steps", [7, 128, 513])
def test_fast_schedule_holds_then_decays_to_its_floor(steps):
    s = get_schedule("fast")
    lrs = [s.lr_at(k, steps, 0.07) for k in range(steps)]
    strengths = [s.strength_at(k, steps) for k in range(steps)]
    half = (steps - 1) // 2
    assert lrs[: half + 1] == [0.07] * (half + 1) and strengths[: half + 1] == [1.0] * (half + 1)
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and all(b <= a for a, b in zip(strengths, strengths[1:]))
    assert lrs[-1] == pytest.approx(0.07 * s.lr_end) and strengths[-1] == pytest.approx(s.transform_end)
    assert s.lr_end < 1 and s.transform_end < 1


def test_scaled_transforms_shrink_every_range():
    spec = RenderSettings().transforms
    q = scaled_transforms(spec, 0.25)
    assert q.pad == round(spec.pad / 4) and q.jitter1 == round(spec.jitter1 / 4) and q.jitter2 == round(spec.jitter2 / 4)
    assert max(abs(a) for a in q.angles) == pytest.approx(max(abs(a) for a in spec.angles) / 4)
    assert max(abs(x - 1) for x in q.scales) == pytest.approx(max(abs(x - 1) for x in spec.scales) / 4)
    assert scaled_transforms(spec, 1.0) is spec
    # the shrunk transforms are what late steps of a fast render see
    draws = tf.draw(torch.Generator().manual_seed(5), 10 * 2).reshape(10, 2, 6)
    thetas = step_transforms(draws, 64, spec, get_schedule("fast"))
    assert torch.equal(thetas[0], tf.affine_matrices(draws[0], 64, spec))
    assert torch.equal(thetas[-1], tf.affine_matrices(draws[-1], 64, q))
    assert not torch.equal(thetas[-1], tf.affine_matrices(draws[-1], 64, spec))


def test_settings_take_the_schedules_lr_unless_given():
    assert RenderSettings(schedule="lucid").learning_rate == 0.05
    assert RenderSettings(schedule="fast").learning_rate == SCHEDULES["fast"].lr
    assert RenderSettings(schedule="fast", lr=0.01).learning_rate == 0.01
    described = RenderSettings(schedule="fast").describe()
    assert described["schedule"]["name"] == "fast" and described["lr"] == SCHEDULES["fast"].lr
    with pytest.raises(ScopeError, match="--schedule"):
        RenderSettings(schedule="slow").check()


def test_schedule_is_stored_per_render_and_in_provenance(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    out = tmp_path / "tiny.h5"
    assert scope_cli("render", *MODEL, "--layer", "2", "--units", "0,1", *FAST, "-o", out).code == 0
    assert scope_cli("render", *MODEL, "--layer", "5", "--units", "0", *FAST, "--schedule", "lucid", "-o", out).code == 0
    with open_artifact(out) as art:
        assert [(v.schedule, v.lr) for v in art.renders("2")] == [("settle", SCHEDULES["settle"].lr)] * 2  # default
        assert [(v.schedule, v.lr) for v in art.renders("5")] == [("lucid", 0.05)]
        names = [run["params"]["schedule"]["name"] for run in art.provenance if run.get("command") == "render"]
        assert names == ["settle", "lucid"]
    r = scope_cli("validate", out)
    assert r.code == 0, r.stdout + r.stderr


def test_unknown_schedule_is_one_line(tmp_path, scope_cli):
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "--schedule", "slow", "-o", tmp_path / "x.h5")
    assert_one_line_error(r, 2, "--schedule")
    assert not (tmp_path / "x.h5").exists()


def test_resume_does_not_take_another_schedules_render_as_done(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    out = tmp_path / "tiny.h5"
    assert scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "--schedule", "lucid", "--lr", "0.07",
                     "-o", out).code == 0
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "--resume", "-o", out, "--json")
    assert r.code == 0, r.stderr
    with open_artifact(out) as art:
        assert [v.schedule for v in art.renders("2")] == ["settle"]  # re-rendered with the default, replaced


def test_format_1_0_renders_read_as_lucid():
    from pathlib import Path

    from scopecli.artifact import open_artifact

    with open_artifact(Path(__file__).parent / "fixtures" / "artifact-1.0.h5") as art:
        layers = [name for name in art.layers if len(art.renders(name))]
        assert layers
        views = [v for name in layers for v in art.renders(name)]
        assert {v.schedule for v in views} == {"lucid"}
        assert all(math.isfinite(v.lr) for v in views)


@pytest.mark.parametrize("steps", [9, 64, 130])
def test_settle_is_the_default_and_ends_in_the_exact_view(steps):
    """`settle` keeps the full learning rate to 60 % of the run and full transforms to 20 %, then shrinks the
    transforms to none: the last step sees the picture exactly as it is stored."""
    from scopecli.render.schedule import DEFAULT_SCHEDULE

    assert DEFAULT_SCHEDULE == "settle" and RenderSettings().schedule == "settle"
    assert RenderSettings().steps == DEFAULT_STEPS["settle"] == 64
    s = get_schedule("settle")
    lrs = [s.lr_at(k, steps, 0.07) for k in range(steps)]
    strengths = [s.strength_at(k, steps) for k in range(steps)]
    last = steps - 1
    assert all(v == 0.07 for k, v in enumerate(lrs) if k / last <= 0.6) and lrs[-1] == pytest.approx(0.007)
    assert all(v == 1.0 for k, v in enumerate(strengths) if k / last <= 0.2) and strengths[-1] == 0.0
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and all(b <= a for a, b in zip(strengths, strengths[1:]))
    draws = tf.draw(torch.Generator().manual_seed(6), steps * 2).reshape(steps, 2, 6)
    thetas = step_transforms(draws, 64, RenderSettings().transforms, s)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    assert torch.allclose(thetas[-1], identity) and not torch.allclose(thetas[0], identity)
