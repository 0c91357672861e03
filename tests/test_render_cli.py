"""`scope render`: images land in the artifact, validate passes, bad input is one line, files stay intact."""

import json

import numpy as np
import pytest
import torch

from collect_builders import noise_images
from conftest import assert_one_line_error

MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]
FAST = ["--steps", "8", "--size", "32", "--batch", "4", "--device", "cpu", "--quiet"]



def test_render_writes_images_with_evidence_and_validates(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    out = tmp_path / "tiny.h5"
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0:3", *FAST, "-o", out)
    assert r.code == 0, r.stderr
    assert "wrote" in r.stdout
    with open_artifact(out) as art:
        views = art.renders("2")
        assert sorted(v.unit for v in views) == [0, 1, 2]
        v = views[0]
        assert v.image.shape == (32, 32, 3) and v.image.dtype == np.uint8
        assert v.steps == 8 and v.size == 32 and v.param == "fft" and np.isfinite(v.act_final)
        assert len(v.act_trace) == 1
    r = scope_cli("validate", out)
    assert r.code == 0, r.stdout + r.stderr


def test_json_summary_and_adding_to_an_existing_artifact(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    out = tmp_path / "tiny.h5"
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "1", *FAST, "-o", out, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rendered"] == 1 and summary["requested"] == 1 and summary["layers"] == {"2": 1}
    r = scope_cli("render", *MODEL, "--layer", "5", "--units", "2,4", "--objective", "negative", *FAST, "-o", out)
    assert r.code == 0, r.stderr
    r = scope_cli("render", *MODEL, "--layer", "2", "--deepdream", *FAST, "-o", out)
    assert r.code == 0, r.stderr
    with open_artifact(out) as art:
        assert sorted((v.unit, v.objective) for v in art.renders("2")) == [(-1, "deepdream"), (1, "channel")]
        assert sorted((v.unit, v.objective) for v in art.renders("5")) == [(2, "negative"), (4, "negative")]


def test_dataset_max_ratio_uses_the_artifacts_statistics(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    data = tmp_path / "data"
    noise_images(data, 6, 40, seed=1)
    out = tmp_path / "tiny.h5"
    r = scope_cli("collect", *MODEL, "--data", data, "--layer", "2", "--top-k", 2, "--bottom-k", 1, "--probe", 2,
                  "--patch-size", 16, "--workers", 0, "--quiet", "-o", out)
    assert r.code == 0, r.stderr
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0,1", *FAST, "-o", out)
    assert r.code == 0, r.stderr
    with open_artifact(out) as art:
        st = art.stats("2")
        top = dict(zip(st.units.tolist(), st.max.tolist()))
        for v in art.renders("2"):
            assert v.dataset_max_ratio == pytest.approx(v.act_final / top[v.unit], rel=1e-4)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--layer", "2", "--units", "99"], "out of range"),
        (["--layer", "nope"], "unknown layer"),
        (["--layer", "2", "--size", "8"], "--size"),
        (["--layer", "2", "--size", "0"], "--size"),
        (["--layer", "2", "--steps", "0"], "--steps"),
        (["--layer", "2", "--param", "wavelet"], "--param"),
        (["--layer", "2", "--objective", "happy"], "objective"),
        (["--layer", "2", "--batch", "many"], "--batch"),
        (["--layer", "2", "--diversity", "0"], "--diversity"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_artifact_intact(tmp_path, scope_cli, args, words):
    out = tmp_path / "tiny.h5"
    assert scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "-o", out).code == 0
    before = out.read_bytes()
    r = scope_cli("render", *MODEL, *FAST, "-o", out, *args)
    assert_one_line_error(r, 2, words)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.h5"]  # no temp files left


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu(tmp_path, scope_cli):
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", "--steps", "2", "--device", "cuda", "-o",
                  tmp_path / "x.h5")
    assert_one_line_error(r, 2, "cuda")


def test_artifact_of_another_model_is_refused(tmp_path, scope_cli):
    out = tmp_path / "tiny.h5"
    assert scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "-o", out).code == 0
    before = out.read_bytes()
    r = scope_cli("render", "tinymodels:tiny_resnet", "--weights", "random", "--input-size", "32",
                  "--layer", "stem", "--units", "0", *FAST, "-o", out)
    assert_one_line_error(r, 2, "fingerprint")
    assert out.read_bytes() == before


def test_interrupted_render_leaves_the_previous_artifact(tmp_path, scope_cli, monkeypatch):
    import scopecli.render.engine as engine

    out = tmp_path / "tiny.h5"
    assert scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "-o", out).code == 0
    before = out.read_bytes()
    calls = {"n": 0}
    real = engine._render_batch

    def interrupted(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(engine, "_render_batch", interrupted)
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0:8", "--steps", "4", "--size", "32",
                  "--batch", "2", "--device", "cpu", "--quiet", "-o", out)
    assert r.code == 130 and "interrupted" in r.stderr
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.h5"]


def test_maco_with_user_images(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    data = tmp_path / "photos"
    noise_images(data, 3, 40, seed=3)
    out = tmp_path / "tiny.h5"
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "--param", "maco", "--data", data, "-o", out)
    assert r.code == 0, r.stderr
    with open_artifact(out) as art:
        assert art.renders("2")[0].param == "maco"
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "--data", data, "-o", out)
    assert_one_line_error(r, 2, "--param maco")


def test_default_layers_all_units_with_plan_message(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact
    from scopecli.model import default_layers, layer_table
    from scopecli.model import resolve_model

    loaded = resolve_model("tinymodels:tiny_cnn", weights="random", input_size=32)
    table = {info.name: info for info in layer_table(loaded.module, 32)}
    names = default_layers(loaded.module, 32)
    total = sum(table[n].channels for n in names)
    out = tmp_path / "tiny.h5"
    r = scope_cli("render", *MODEL, "--steps", "2", "--size", "32", "--batch", "16", "--device", "cpu", "-o", out)
    assert r.code == 0, r.stderr
    assert f"rendering {total} images of {len(names)} layers" in r.stderr
    assert "estimated total" in r.stderr
    with open_artifact(out) as art:
        for name in names:
            assert sorted(v.unit for v in art.renders(name)) == list(range(table[name].channels))
