"""Settings are checked once per command (each rule once per value), yet every library entry point refuses
bad ones, also when they were changed after a check."""

from collections import Counter

import pytest

from collect_builders import noise_images
from scopecli.collect import CollectSettings, collect, open_source
from scopecli.core.errors import ScopeError
from scopecli.model import resolve_model
from scopecli.render import RenderSettings, RenderTarget, render_units
from scopecli.jobs.render import plan_render

MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]


def _count_rules(monkeypatch, cls) -> Counter:
    calls = Counter()
    for name, rule in list(vars(cls).items()):
        if getattr(rule, "checked_fields", None) is None:
            continue

        def counted(self, rule=rule, name=name):
            calls[name] += 1
            return rule(self)

        counted.checked_fields = rule.checked_fields
        monkeypatch.setattr(cls, name, counted)
    return calls


def test_scope_collect_checks_each_rule_once(tmp_path, scope_cli, monkeypatch):
    calls = _count_rules(monkeypatch, CollectSettings)
    noise_images(tmp_path / "data", 4, 40, seed=3)
    r = scope_cli("collect", *MODEL, "--data", tmp_path / "data", "-o", tmp_path / "m.h5", "--layer", "1",
                  "--top-k", 2, "--bottom-k", 1, "--batch", 4, "--probe", 2, "--patch-size", 16, "--workers", 0,
                  "--device", "cpu", "--quiet")
    assert r.code == 0, r.stderr
    assert calls and set(calls.values()) == {1}, calls


def test_scope_render_checks_each_rule_once(tmp_path, scope_cli, monkeypatch):
    calls = _count_rules(monkeypatch, RenderSettings)
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", "--steps", "2", "--size", "32", "--batch", "1",
                  "--device", "cpu", "--quiet", "-o", tmp_path / "r.h5")
    assert r.code == 0, r.stderr
    assert calls and set(calls.values()) == {1}, calls


def test_bad_settings_fail_fast_before_the_model_loads(tmp_path, scope_cli, monkeypatch):
    import scopecli.cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(scopecli.cli, "load_model", no_model)
    noise_images(tmp_path / "data", 2, 40, seed=3)
    r = scope_cli("collect", *MODEL, "--data", tmp_path / "data", "--top-k", "-1")
    assert r.code == 2 and "--top-k must be >= 0" in r.stderr
    r = scope_cli("render", *MODEL, "--steps", "0")
    assert r.code == 2 and "--steps must be positive" in r.stderr


def test_library_entry_points_refuse_bad_settings_even_after_a_check(tmp_path):
    loaded = resolve_model("tinymodels:tiny_cnn", weights="random", input_size=32)
    noise_images(tmp_path / "data", 2, 40, seed=3)
    settings = CollectSettings(workers=0, device="cpu")
    settings.check()
    settings.patch_size = 2  # changed after it passed: that rule runs again
    with pytest.raises(ScopeError, match="--patch-size"):
        collect(loaded, open_source(tmp_path / "data"), ["1"], settings)
    render = RenderSettings(steps=2, size=32, batch=1, device="cpu")
    render.check()
    render.lr = -1.0
    with pytest.raises(ScopeError, match="--lr"):
        plan_render(loaded, ["2"], "0", settings=render)
    with pytest.raises(ScopeError, match="--lr"):
        render_units(loaded, [RenderTarget("2", 0)], render)
