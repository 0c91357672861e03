"""`scope collect` on the command line: JSON output, adding layers to one artifact, reruns, bad arguments."""

import json

import numpy as np
import pytest

from collect_builders import noise_images
from conftest import assert_one_line_error


@pytest.fixture
def data(tmp_path):
    noise_images(tmp_path / "data", 6, 40, seed=3)
    return tmp_path / "data"


BASE = ["--top-k", 2, "--bottom-k", 1, "--batch", 4, "--probe", 3, "--patch-size", 16, "--workers", 0]


def test_json_summary_adds_layers_and_reruns_reproduce(tmp_path, data, scope_cli):
    from scopecli.artifact import open_artifact

    out = tmp_path / "m.h5"
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", data, "-o", out, "--layer", "1", *BASE, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["images"] == 6 and summary["skipped"] == 0 and summary["layers"] == ["1"]
    assert summary["output"] == str(out)
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", data, "-o", out, "--layer", "3", *BASE, "--quiet")
    assert r.code == 0, r.stderr
    again = tmp_path / "again.h5"
    assert scope_cli("collect", "tinymodels:tiny_cnn", "--data", data, "-o", again, "--layer", "1,3", *BASE, "--quiet").code == 0
    with open_artifact(out) as a, open_artifact(again) as b:
        assert set(a.layers) == {"1", "3"} == set(b.layers)
        for layer in ("1", "3"):
            ea, eb = a.examples(layer, "top"), b.examples(layer, "top")
            np.testing.assert_array_equal(ea.image_index, eb.image_index)
            np.testing.assert_array_equal(ea.score, eb.score)
            assert all(np.array_equal(p, q) for r1, r2 in zip(ea.patches, eb.patches) for p, q in zip(r1, r2))
            np.testing.assert_array_equal(a.stats(layer).sketch["hist"], b.stats(layer).sketch["hist"])


@pytest.mark.parametrize("args,message", [
    (["--shard", "3/2"], "--shard 3/2"),
    (["--shard", "half"], "must look like k/n"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--patch-size", "2"], "--patch-size"),
    (["--layer", "nosuchlayer"], "unknown layer 'nosuchlayer'"),
    (["--device", "tpu"], "unknown device"),
    (["--labels", "/nonexistent/labels.tsv"], "labels file not found"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, data, scope_cli, args, message):
    out = tmp_path / "x.h5"
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", data, "-o", out, *BASE, "--quiet", *args)
    assert_one_line_error(r, 2, message)
    assert not out.exists()


def test_missing_data_path(tmp_path, scope_cli):
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", tmp_path / "nope", "-o", tmp_path / "x.h5")
    assert_one_line_error(r, 2, "data path not found")
