"""`scope diff` end to end through the CLI, on synthetic artifacts with planted structure."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from compare_builders import image_table, write_artifact
from conftest import assert_one_line_error
from scopecli.artifact.difffile import read_diff
from scopecli.core.errors import ScopeError

N = 160


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    rng = np.random.default_rng(7)
    base = rng.normal(size=(N, 10))
    a = {
        "conv1": np.maximum(base @ rng.normal(size=(10, 12)), 0),
        "conv2": rng.normal(size=(N, 20)),
        "fc": base[:, :6] * 2.0,
    }
    perm = rng.permutation(12)
    q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    b = {
        "stem": a["conv1"][:, perm] + 0.05 * rng.normal(size=(N, 12)),  # unit j of B = unit perm[j] of A
        "mid": rng.normal(size=(N, 9)),
        "head": a["fc"] @ q * 3.0,  # a rotation and scaling of fc
    }
    # a second checkpoint of A: units 3 and 5 of conv2 retrained (replaced), the rest nearly unchanged
    c = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in a.items()}
    c["conv2"][:, [3, 5]] = rng.normal(size=(N, 2))
    table = image_table(N)
    paths = {k: str(d / f"{k}.h5") for k in ("a", "b", "c", "noprobe", "other", "few", "shuffled", "overflow")}
    write_artifact(paths["a"], a, table, name="modelA", architecture="NetA")
    write_artifact(paths["b"], b, table, name="modelB", architecture="NetB")
    write_artifact(paths["c"], c, table, name="modelA-ckpt2", architecture="NetA")
    write_artifact(paths["noprobe"], a, table, name="np", architecture="NetA", probe=False)
    big = {k: v.copy() for k, v in a.items()}
    big["conv2"][[4, 9, 30], 0] = 1e6  # beyond float16: stored as inf
    write_artifact(paths["overflow"], big, table, name="big", architecture="NetA")
    write_artifact(paths["other"], b, image_table(N, content_offset=10_000), name="other", architecture="NetB")
    # only 60 images in common with A (contents 100..259)
    write_artifact(paths["few"], b, image_table(N, content_offset=100), name="few", architecture="NetB")
    # same contents as A, different file names and a different order
    order = rng.permutation(N)
    t = image_table(N, labels=np.asarray(table.label)[order])
    t.sha256 = [table.sha256[i] for i in order]
    t.paths = [f"renamed/{i:05d}.png" for i in range(N)]
    write_artifact(paths["shuffled"], {k: v[order] for k, v in a.items()}, t, name="shuffled", architecture="NetA")
    return paths, perm


def _diff_json(scope_cli, *args):
    r = scope_cli("diff", *args, "--json", "--quiet")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_cross_model_layers_and_units(scope_cli, files):
    paths, perm = files
    j = _diff_json(scope_cli, paths["a"], paths["b"], "--permutations", "10")
    assert j["shared_images"] == N and not j["same_architecture"]
    best = {row["layer"]: row for row in j["best_match"]}
    assert best["conv1"]["best_b"] == "stem" and best["fc"]["best_b"] == "head"
    assert best["fc"]["cka_linear"] == pytest.approx(1.0, abs=1e-3)  # rotation + scale invariance
    assert best["conv1"]["cka_debiased"] > best["conv1"]["cka_debiased_floor"] + 0.5
    deb = np.array(j["cka_debiased"], dtype=float)
    assert abs(deb[1, 1]) < 0.1  # independent random layers: debiased CKA near 0
    assert j["cka_debiased"][1][1] <= j["cka_debiased_floor"][1][1] + 0.05
    m = {p["layer_a"]: p for p in j["unit_matching"]}["conv1"]
    assert m["layer_b"] == "stem"
    np.testing.assert_array_equal(m["best_b"], np.argsort(perm))  # the planted permutation, recovered
    assert m["buddies"] and len(m["buddies"]) == 12 and m["unmatched_a"] == []
    assert m["top_pairs"][0]["corr"] > 0.95
    assert j["unit_changes"] == []  # different architectures: no per-unit comparison


def test_images_are_matched_by_content_not_path_or_order(scope_cli, files):
    paths, _ = files
    j = _diff_json(scope_cli, paths["a"], paths["shuffled"], "--permutations", "3")
    assert j["shared_images"] == N
    np.testing.assert_allclose(np.diag(np.array(j["cka_linear"], dtype=float)), 1.0, atol=1e-6)
    for ch in j["unit_changes"]:
        np.testing.assert_allclose(ch["self_corr"], 1.0, atol=1e-6)
        np.testing.assert_allclose(ch["jaccard"], 1.0)


def test_images_with_overflowed_probes_are_left_out(scope_cli, files):
    paths, _ = files
    j = _diff_json(scope_cli, paths["a"], paths["overflow"], "--permutations", "2")
    assert j["nonfinite_images_left_out"] == 3 and j["shared_images"] == N - 3
    np.testing.assert_allclose(np.diag(np.array(j["cka_linear"], dtype=float)), 1.0, atol=1e-6)
    hits = scope_cli("query", paths["overflow"], "--like", f"{paths['a']}:conv2:0", "--json")
    assert hits.code == 0 and json.loads(hits.stdout)[0]["score"] > 0.999


def test_same_file_twice_gives_unit_diagonal(scope_cli, files):
    paths, _ = files
    j = _diff_json(scope_cli, paths["a"], paths["a"], "--permutations", "3")
    assert j["same_architecture"]
    for key in ("cka_linear", "cka_debiased"):
        np.testing.assert_allclose(np.diag(np.array(j[key], dtype=float)), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.array(j["cka_linear"], dtype=float), np.array(j["cka_linear"], dtype=float).T,
                               atol=1e-9)
    for ch in j["unit_changes"]:
        np.testing.assert_allclose(ch["jaccard"], 1.0)
        np.testing.assert_allclose(ch["delta"]["mean"], 0.0)


def test_checkpoints_report_the_units_that_changed(scope_cli, files):
    paths, _ = files
    j = _diff_json(scope_cli, paths["a"], paths["c"], "--permutations", "3", "--top", "2")
    assert j["same_architecture"]
    ch = {c["layer"]: c for c in j["unit_changes"]}
    assert sorted(ch["conv2"]["changed_most"]) == [3, 5]
    r = np.array(ch["conv2"]["self_corr"], dtype=float)
    assert (np.delete(r, [3, 5]) > 0.99).all() and (np.abs(r[[3, 5]]) < 0.4).all()
    jac = np.array(ch["conv2"]["jaccard"], dtype=float)
    assert jac[[3, 5]].max() < 0.5 and np.median(np.delete(jac, [3, 5])) >= 0.7
    assert ch["conv2"]["delta"]["mean"][0] == pytest.approx(0.0, abs=0.01)


def test_deterministic_and_human_output(scope_cli, files):
    paths, _ = files
    j1 = _diff_json(scope_cli, paths["a"], paths["b"], "--permutations", "4", "--seed", "3")
    j2 = _diff_json(scope_cli, paths["a"], paths["b"], "--permutations", "4", "--seed", "3")
    assert j1 == j2
    r = scope_cli("diff", paths["a"], paths["b"], "--permutations", "4", "--quiet")
    assert r.code == 0 and "stem" in r.stdout and "floor" in r.stdout and "Traceback" not in r.stderr


def test_layers_and_pairs_options(scope_cli, files):
    paths, perm = files
    j = _diff_json(scope_cli, paths["a"], paths["b"], "--layers", "fc", "--layers-b", "head,mid",
                   "--pair", "conv2=mid", "--permutations", "2")
    assert j["layers_a"] == ["fc"] and j["layers_b"] == ["head", "mid"]
    assert [(p["layer_a"], p["layer_b"]) for p in j["unit_matching"]] == [("conv2", "mid")]


def test_cka_subsample_is_seeded(scope_cli, files):
    paths, _ = files
    j = _diff_json(scope_cli, paths["a"], paths["c"], "--max-images", "120", "--permutations", "2")
    assert j["shared_images"] == N and j["cka_images"] == 120
    assert j == _diff_json(scope_cli, paths["a"], paths["c"], "--max-images", "120", "--permutations", "2")
    full = _diff_json(scope_cli, paths["a"], paths["c"], "--permutations", "2")
    assert full["cka_images"] == N and full["cka_linear"] != j["cka_linear"]
    assert full["unit_changes"] == j["unit_changes"]  # per-unit comparisons always use every shared image


def test_png_and_saved_diff(scope_cli, files, tmp_path):
    paths, _ = files
    png, h5 = tmp_path / "heat.png", tmp_path / "d.h5"
    r = scope_cli("diff", paths["a"], paths["b"], "--permutations", "5", "--png", png, "--save", h5, "--json", "-q")
    assert r.code == 0, r.stderr
    j = json.loads(r.stdout)
    img = Image.open(png)
    assert img.format == "PNG" and img.width > 300 and img.height > 100
    px = np.asarray(img.convert("RGB"))
    assert (px == 255).all(axis=2).mean() < 0.97  # something was drawn
    d = read_diff(h5)
    np.testing.assert_allclose(d["linear"], np.array(j["cka_linear"], dtype=float), atol=1e-6)
    np.testing.assert_allclose(d["debiased_floor"], np.array(j["cka_debiased_floor"], dtype=float), atol=1e-6)
    assert d["layers_b"] == j["layers_b"] and d["model_b"]["name"] == "modelB"
    assert d["path_a"] == paths["a"] and d["matching"][0]["floor"] == pytest.approx(j["unit_matching"][0]["floor"])
    np.testing.assert_array_equal(d["matching"][0]["best_b"], j["unit_matching"][0]["best_b"])
    with pytest.raises(ScopeError, match="not a scope diff file"):
        read_diff(paths["a"])
    with h5py.File(h5, "r") as f:
        assert f.attrs["format"] == "scope.diff" and f.attrs["format_version"] == "1.0"
        assert f["cka/linear"].attrs["encoding-type"] == "array" and "sha256" in f["cka/linear"].attrs
        assert f["matching/0"].attrs["encoding-type"] == "scope.unit-matching"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("case, contains", [
    ("noprobe", "scope collect"),
    ("other", "only 0 probe images are shared"),
    ("few", "only 60 probe images are shared"),
])
def test_bad_artifact_pairs(scope_cli, files, case, contains):
    paths, _ = files
    r = scope_cli("diff", paths["a"], paths[case], "-q")
    assert_one_line_error(r, 2, contains)
    if case == "noprobe":
        assert "same --data" in r.stderr


def test_bad_arguments(scope_cli, files, tmp_path):
    paths, _ = files
    assert_one_line_error(scope_cli("diff", paths["a"], paths["b"], "--layers", "conv9"), 2, "no layer named conv9")
    assert_one_line_error(scope_cli("diff", paths["a"], paths["b"], "--pair", "conv1"), 2, "LAYER_A=LAYER_B")
    assert_one_line_error(scope_cli("diff", paths["a"], paths["b"], "--pair", "conv1=nope"), 2, "no layer named nope")
    assert_one_line_error(scope_cli("diff", paths["a"], tmp_path / "missing.h5"), 2, "no such file")
    assert_one_line_error(scope_cli("diff", paths["a"], paths["b"], "--permutations", "0"), 2, "at least 1")
    assert_one_line_error(scope_cli("diff", paths["a"], paths["b"], "--png", tmp_path / "no" / "x.png"), 2,
                          "does not exist")
