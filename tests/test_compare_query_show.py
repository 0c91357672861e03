"""`scope query` and `scope show` through the CLI, on synthetic artifacts with planted units."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from compare_builders import CLASS_NAMES, image_table, write_artifact
from conftest import assert_one_line_error
from scopecli.compare.query import parse_like, run_query

N = 150
GOLDEN = CLASS_NAMES.index("golden retriever")
CHURCH = CLASS_NAMES.index("church")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("query")
    rng = np.random.default_rng(11)
    labels = rng.integers(0, len(CLASS_NAMES), size=N)
    table = image_table(N, labels=labels)
    a = {"conv1": rng.normal(size=(N, 10)), "conv2": rng.normal(size=(N, 14))}
    # planted: conv2 unit 6 fires on golden retrievers, conv1 unit 2 on churches (weaker)
    a["conv2"][:, 6] += 6.0 * (labels == GOLDEN)
    a["conv1"][:, 2] += 2.5 * (labels == CHURCH)
    b = {"block": rng.normal(size=(N, 8))}
    b["block"][:, 5] = a["conv2"][:, 6] * 0.5 + 0.3 * rng.normal(size=N)  # B's unit 5 behaves like A conv2:6
    b["block"][:, 1] = 10.0 + rng.normal(size=N)  # strongly positive unit
    b["block"][:, 7] = -3.0  # a constant unit: no correlation is defined
    paths = {k: str(d / f"{k}.h5") for k in ("a", "b", "other", "noprobe", "nopatch")}
    write_artifact(paths["a"], a, table, name="A", renders=True)
    write_artifact(paths["b"], b, table, name="B")
    write_artifact(paths["other"], b, image_table(N, content_offset=5000), name="O")
    write_artifact(paths["noprobe"], b, table, name="NP", probe=False)
    write_artifact(paths["nopatch"], b, table, name="NoPatch", patches=False)
    return paths, a, labels


def _json(scope_cli, *args):
    r = scope_cli(*args, "--json")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_label_finds_planted_units(scope_cli, files):
    paths, _, _ = files
    hits = _json(scope_cli, "query", paths["a"], paths["b"], "--label", "GOLDEN", "--top", "3")
    # the planted unit and its copy in B, both with only golden retrievers among their top examples
    assert {(h["artifact"], h["layer"], h["unit"]) for h in hits[:2]} == {(paths["a"], "conv2", 6),
                                                                          (paths["b"], "block", 5)}
    assert all(h["purity"] == 1.0 and h["top_label"] == "golden retriever" for h in hits[:2])
    assert hits[2]["purity"] < 1.0 and hits[1]["strength"] <= hits[0]["strength"]
    church = _json(scope_cli, "query", paths["a"], "--label", "church", "--top", "1", "--layer", "conv1")
    assert (church[0]["layer"], church[0]["unit"]) == ("conv1", 2)
    # 'retriever' matches two classes; the planted unit is still pure for the union
    both = run_query([paths["a"]], label="_Retriever", top=1)  # underscores and spaces are the same
    assert (both[0].layer, both[0].unit, both[0].purity) == ("conv2", 6, 1.0)


def test_like_finds_the_correlated_unit_in_other_artifacts(scope_cli, files):
    paths, _, _ = files
    hits = _json(scope_cli, "query", paths["a"], paths["b"], "--like", f"{paths['a']}:conv2:6", "--top", "5")
    assert (hits[0]["artifact"], hits[0]["layer"], hits[0]["unit"]) == (paths["b"], "block", 5)
    assert hits[0]["score"] > 0.9
    assert not any(h["artifact"] == paths["a"] and h["layer"] == "conv2" and h["unit"] == 6 for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    everything = run_query([paths["b"]], like=f"{paths['a']}:conv2:6", top=100)
    assert len(everything) == 7 and 7 not in [h.unit for h in everything]  # the constant unit is no answer


def test_statistics_filters_and_sort(scope_cli, files):
    paths, a, _ = files
    hits = _json(scope_cli, "query", paths["a"], paths["b"], "--min-frac-positive", "0.9", "--top", "50")
    assert [(h["layer"], h["unit"]) for h in hits] == [("block", 1)]
    hits = _json(scope_cli, "query", paths["a"], "--layer", "conv1", "--sort", "max", "--top", "50")
    assert len(hits) == 10 and [h["max"] for h in hits] == sorted((h["max"] for h in hits), reverse=True)
    assert hits[0]["max"] == pytest.approx(a["conv1"].max(), rel=1e-5)
    floor = float(np.sort(a["conv1"].max(0))[-3])
    hits = _json(scope_cli, "query", paths["a"], "--layer", "conv1", "--min-max", str(floor))
    assert len(hits) == 3
    r = scope_cli("query", paths["a"], paths["b"], "--label", "golden")
    assert r.code == 0 and "conv2" in r.stdout and "golden retriever" in r.stdout


def test_parse_like_allows_colons_in_paths():
    assert parse_like("C:/x/m.h5:layer4.2:117") == ("C:/x/m.h5", "layer4.2", 117)


@pytest.mark.parametrize("args, contains", [
    (["--label", "zebra"], "no class name contains 'zebra'"),
    (["--like", "{a}:conv2:99"], "out of range"),
    (["--like", "{a}:nope:1"], "no layer named nope"),
    (["--like", "conv2:6"], "FILE:layer:unit"),
    (["--layer", "conv7"], "no layer named conv7"),
    (["--like", "{b}:block:7"], "constant on the probe images"),
    (["--sort", "colour"], "--sort must be one of"),
    (["--label", "golden", "--like", "{a}:conv2:6"], "either --label or --like"),
])
def test_query_bad_input(scope_cli, files, args, contains):
    paths, _, _ = files
    args = [x.format(a=paths["a"], b=paths["b"]) for x in args]
    assert_one_line_error(scope_cli("query", paths["a"], *args), 2, contains)


def test_label_without_labels(scope_cli, files, tmp_path):
    p = tmp_path / "unlabelled.h5"
    write_artifact(p, {"l": np.random.default_rng(0).normal(size=(20, 3))}, image_table(20, labels=np.full(20, -1)))
    assert_one_line_error(scope_cli("query", p, "--label", "dog"), 2, "has labelled dataset examples")


def test_like_without_shared_probe_images(scope_cli, files):
    paths, _, _ = files
    r = scope_cli("query", paths["other"], "--like", f"{paths['a']}:conv2:6")
    assert_one_line_error(r, 2, "scope collect")
    r = scope_cli("query", paths["a"], "--like", f"{paths['noprobe']}:block:1")
    assert_one_line_error(r, 2, "no probe activations")


def test_show_terminal_json_and_card(scope_cli, files, tmp_path):
    paths, a, labels = files
    card = tmp_path / "card.png"
    j = _json(scope_cli, "show", paths["a"], "conv2:6", "-o", card)
    assert j["layer"] == "conv2" and j["unit"] == 6 and j["units_in_layer"] == 14
    assert j["stats"]["max"] == pytest.approx(a["conv2"][:, 6].max(), rel=1e-5)
    top = j["examples"]["top"]
    assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
    assert all(e["class"] == "golden retriever" for e in top)
    assert top[0]["image_index"] == int(np.argmax(a["conv2"][:, 6]))
    assert j["renders"] == []  # the builder renders units 0 and 1 only
    r0 = _json(scope_cli, "show", paths["a"], "conv2:1")["renders"]
    assert len(r0) == 1 and r0[0]["objective"] == "channel" and r0[0]["dataset_max_ratio"] == 1.5
    img = Image.open(card)
    assert img.format == "PNG" and img.width >= 400 and img.height >= 300
    r = scope_cli("show", paths["a"], "conv1:2")
    assert r.code == 0 and "church" in r.stdout and "top dataset examples" in r.stdout


@pytest.mark.parametrize("address, contains", [
    ("conv2:14", "out of range"),
    ("conv2", "layer:unit"),
    ("conv2:x", "not a unit index"),
    ("conv9:1", "no layer named conv9"),
])
def test_show_bad_input(scope_cli, files, address, contains):
    paths, _, _ = files
    assert_one_line_error(scope_cli("show", paths["a"], address), 2, contains)


def test_show_bad_output_and_missing_file(scope_cli, files, tmp_path):
    paths, _, _ = files
    assert_one_line_error(scope_cli("show", paths["a"], "conv2:1", "-o", tmp_path), 2, "is a directory")
    assert_one_line_error(scope_cli("show", tmp_path / "nope.h5", "conv2:1"), 2, "no such file")


def test_show_card_must_be_named_png(scope_cli, files, tmp_path):
    paths, _, _ = files
    for name in ("card.txt", "card", "card.png.jpg"):
        r = scope_cli("show", paths["a"], "conv2:1", "-o", tmp_path / name)
        assert_one_line_error(r, 2, ".png")
        assert not (tmp_path / name).exists()
    assert os.listdir(tmp_path) == []  # no temp file left either
    assert scope_cli("show", paths["a"], "conv2:1", "-o", tmp_path / "CARD.PNG").code == 0


def test_card_without_stored_patches(scope_cli, files, tmp_path):
    paths, _, _ = files
    card = tmp_path / "c.png"
    j = _json(scope_cli, "show", paths["nopatch"], "block:5", "-o", card)
    assert len(j["examples"]["top"]) == 6 and j["examples"]["top"][0]["class"] == "golden retriever"
    assert Image.open(card).size[0] >= 400
