"""Dataset examples that show what a unit sees: patches that are all image, label profiles with lift,
one example per source photo, and units that never fire said in words."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from collect_builders import collect_single_and_packed, loaded, noise_images
from scopecli.collect import CollectSettings, collect, open_source
from scopecli.collect.crops import crop_patch


def _deep_cnn(seed: int) -> nn.Module:
    """Receptive fields of 9 px (layer '2') and 33 px (layer '5'), past a 24 px input at '5'."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 5, stride=2, padding=2), nn.ReLU(),
                         nn.Conv2d(4, 4, 5, stride=2, padding=2), nn.Conv2d(4, 3, 5, stride=2, padding=2))


def test_patches_are_all_image_when_the_field_is_large(tmp_path):
    arrays = noise_images(tmp_path, 12, 24, seed=11)
    model = loaded(_deep_cnn(2), 24)
    res = collect(model, open_source(tmp_path), ["2", "5"], CollectSettings(top_k=4, bottom_k=2, patch_size=8, probe=0,
                                                                           batch=5, workers=0, device="cpu"))
    recs = {r.name: r for r in res.layers}
    assert recs["5"].rf_size > 24 > recs["2"].rf_size
    left_input = 0
    for layer in ("2", "5"):
        side = min(recs[layer].rf_size, 24)
        for which in ("top", "bottom"):
            ex = res.examples[layer][which]
            for u in range(ex.score.shape[0]):
                for j in range(ex.score.shape[1]):
                    box, shown = ex.box[u, j], ex.shown[u, j]
                    left_input += int(box[0] < 0 or box[1] < 0 or box[2] > 24 or box[3] > 24)
                    # the shown window is the field capped at the input and shifted inside it ...
                    assert shown[2] - shown[0] == side == shown[3] - shown[1]
                    assert shown[0] >= 0 and shown[1] >= 0 and shown[2] <= 24 and shown[3] <= 24
                    off = (box[2] - box[0] - side) // 2  # centred on the field, then moved only as far as needed
                    assert shown[0] == min(max(box[0] + off, 0), 24 - side)
                    assert shown[1] == min(max(box[1] + off, 0), 24 - side)
                    # ... so the patch is those input pixels (no padding), shrunk to --patch-size
                    img = arrays[ex.image_index[u, j]]
                    want = crop_patch(img, shown, min(side, 8))
                    assert np.array_equal(ex.patches[u][j], want)
    assert left_input > 0  # the true fields did leave the input: the shift was needed
    # where the field covers the whole input, the patch is the whole input
    ex = res.examples["5"]["top"]
    assert (ex.shown == np.array([0, 0, 24, 24])).all()


def _class_images(folder, per_class: int, size: int, seed: int):
    """Noise photos of three classes; 'red' ones carry a saturated red square somewhere (red channel only)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    rows = []
    names = ["red", "green", "blue"]
    order = rng.permutation(np.repeat(np.arange(3), per_class))
    for i, c in enumerate(order):
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        a[:, :, 0] //= 2  # background red stays low, so the square is what a red detector finds
        if names[c] == "red":
            y, x = rng.integers(0, size - 5, 2)
            a[y : y + 5, x : x + 5, 0] = 255
        Image.fromarray(a).save(folder / f"p{i:03d}.png")
        rows.append(f"p{i:03d}.png\t{names[c]}")
    labels = folder.parent / "labels.tsv"
    labels.write_text("file\tlabel\n" + "\n".join(rows) + "\n")
    return labels


def _selective_net(seed: int) -> nn.Sequential:
    """Unit 0 sums the red channel over 5x5 (a red-square detector); units 1-8 are random filters over green
    and blue only, so they cannot know an image's class."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 9, 5, padding=2)
    with torch.no_grad():
        conv.weight[:, 0] = 0
        conv.weight[0] = 0
        conv.weight[0, 0] = 1.0 / 25
        conv.bias.zero_()
    return nn.Sequential(conv)


def test_label_profile_finds_a_planted_class_unit_and_lift_one_for_random_units(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact
    from scopecli.jobs.collect import run_collect

    labels = _class_images(tmp_path / "data", 30, 20, seed=4)
    model = loaded(_selective_net(5), 20)
    settings = CollectSettings(top_k=10, bottom_k=0, patch_size=8, probe=0, batch=16, workers=0, device="cpu")
    out = tmp_path / "a.h5"
    run_collect(model, open_source(tmp_path / "data", labels=labels), ["0"], settings, output=str(out), quiet=True)
    with open_artifact(out) as art:
        planted = art.unit("0:0").label_profile
        assert planted.rows[0].class_name == "red"
        assert planted.rows[0].fraction == 1.0 and planted.rows[0].base_rate == pytest.approx(1 / 3)
        assert planted.rows[0].lift == pytest.approx(3.0)
        assert planted.images[0] == 10 and planted.note == ""
        top_lifts = [art.unit(f"0:{u}").label_profile.rows[0].lift for u in range(1, 9)]
    # a unit blind to the class: its top class is whatever 10 draws of three equal classes give (lift ~1.2-1.5)
    assert float(np.median(top_lifts)) < 1.8
    r = scope_cli("query", out, "--label", "red", "--json")
    assert r.code == 0, r.stderr
    hits = json.loads(r.stdout)
    assert (hits[0]["layer"], hits[0]["unit"], hits[0]["top_label"]) == ("0", 0, "red")
    assert hits[0]["lift"] == pytest.approx(3.0) and all(h["lift"] < 3.0 for h in hits[1:])


def test_label_profile_with_one_class_says_uninformative(tmp_path):
    from scopecli.artifact import open_artifact
    from scopecli.jobs.collect import run_collect

    noise_images(tmp_path / "data", 10, 16, seed=3)
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"img_{i:03d}.png\tcat\n" for i in range(10)))
    model = loaded(_selective_net(1), 16)
    run_collect(model, open_source(tmp_path / "data", labels=labels), ["0"],
                CollectSettings(top_k=3, bottom_k=0, patch_size=8, probe=0, batch=5, workers=0, device="cpu"),
                output=str(tmp_path / "a.h5"), quiet=True)
    with open_artifact(tmp_path / "a.h5") as art:
        prof = art.unit("0:1").label_profile
    assert "uninformative" in prof.note and prof.rows[0].lift == pytest.approx(1.0)


def _grouped_copies(folder, sources: int, copies: int, size: int, seed: int):
    """Each source photo saved `copies` times with a one-pixel shift (the demo's crops and mirrors)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    rows = []
    for s in range(sources):
        a = rng.integers(0, 256, (size + copies, size + copies, 3), dtype=np.uint8)
        for c in range(copies):
            name = f"s{s:02d}_c{c}.png"
            Image.fromarray(a[c : c + size, c : c + size]).save(folder / name)
            rows.append(f"{name}\tsource{s:02d}")
    groups = folder.parent / "groups.tsv"
    groups.write_text("\n".join(rows) + "\n")
    return groups


def _sources(res, layer, groups_of):
    ex = res.examples[layer]["top"]
    names = res.images.paths
    return [[groups_of[names[i]] for i in ex.image_index[u] if i >= 0] for u in range(ex.score.shape[0])]


def test_per_source_keeps_one_example_per_source_photo(tmp_path):
    groups = _grouped_copies(tmp_path / "data", 8, 3, 16, seed=9)
    groups_of = dict(line.split("\t") for line in groups.read_text().split("\n") if line)
    model = loaded(_deep_cnn(4), 16)
    base = dict(top_k=5, bottom_k=0, patch_size=8, probe=0, batch=7, workers=0, device="cpu")
    plain = collect(model, open_source(tmp_path / "data"), ["2"], CollectSettings(**base))
    # without groups the shifted copies of one photo crowd a unit's top 5
    assert any(len(set(s)) < len(s) for s in _sources(plain, "2", groups_of))
    grouped = collect(model, open_source(tmp_path / "data", groups=groups), ["2"], CollectSettings(**base))
    for s in _sources(grouped, "2", groups_of):
        assert len(s) == 5 and len(set(s)) == 5
    two = collect(model, open_source(tmp_path / "data", groups=groups), ["2"], CollectSettings(**base, per_source=2))
    assert all(max(s.count(g) for g in s) <= 2 for s in _sources(two, "2", groups_of))
    assert any(max(s.count(g) for g in s) == 2 for s in _sources(two, "2", groups_of))


def test_per_source_is_exact_across_shards_and_pack(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    groups = _grouped_copies(tmp_path / "data", 7, 3, 40, seed=2)
    common = ["collect", "tinymodels:tiny_cnn", "--data", tmp_path / "data", "--groups", groups, "--top-k", 4,
              "--bottom-k", 2, "--batch", 4, "--probe", 0, "--patch-size", 16, "--workers", 0, "--quiet", "--lossless"]
    single, packed = collect_single_and_packed(scope_cli, common, tmp_path)
    groups_of = dict(line.split("\t") for line in groups.read_text().split("\n") if line)
    with open_artifact(single) as a, open_artifact(packed) as b:
        paths = b.dataset.paths
        for layer in a.layers:
            for which in ("top", "bottom"):
                ea, eb = a.examples(layer, which), b.examples(layer, which)
                np.testing.assert_array_equal(ea.image_index, eb.image_index)
                np.testing.assert_array_equal(ea.score, eb.score)
                for row in eb.image_index:
                    src = [groups_of[paths[i]] for i in row if i >= 0]
                    assert len(src) == len(set(src))


def test_a_unit_that_never_fires_is_said_not_drawn(tmp_path, scope_cli):
    from scopecli.jobs.collect import run_collect

    noise_images(tmp_path / "data", 8, 16, seed=6)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.bias[1] = -100.0  # unit 1 is dead after the ReLU
    model = loaded(nn.Sequential(conv, nn.ReLU()), 16)
    run_collect(model, open_source(tmp_path / "data"), ["1"],
                CollectSettings(top_k=3, bottom_k=0, patch_size=8, probe=0, batch=4, workers=0, device="cpu"),
                output=str(tmp_path / "a.h5"), quiet=True)
    r = scope_cli("show", tmp_path / "a.h5", "1:1", "--json")
    assert r.code == 0, r.stderr
    top = json.loads(r.stdout)["examples"]["top"]
    assert top and all(e["fires"] is False for e in top)
    assert all(max(max(row) for row in e["heatmap"]) == 0 for e in top)
    alive = json.loads(scope_cli("show", tmp_path / "a.h5", "1:0", "--json").stdout)["examples"]["top"]
    assert all(e["fires"] is True for e in alive)
    r = scope_cli("show", tmp_path / "a.h5", "1:1", "-o", tmp_path / "card.png")
    assert r.code == 0, r.stderr
    r = scope_cli("show", tmp_path / "a.h5", "1:1")
    assert "no response" in r.stdout


def test_label_profile_where_no_class_repeats_says_uninformative(tmp_path):
    from scopecli.artifact import open_artifact
    from scopecli.jobs.collect import run_collect

    noise_images(tmp_path / "data", 12, 16, seed=8)
    labels = tmp_path / "labels.tsv"  # one photo per class, as in a one-image-per-class sample
    labels.write_text("".join(f"img_{i:03d}.png\tclass{i}\n" for i in range(12)))
    run_collect(loaded(_selective_net(2), 16), open_source(tmp_path / "data", labels=labels), ["0"],
                CollectSettings(top_k=4, bottom_k=0, patch_size=8, probe=0, batch=6, workers=0, device="cpu"),
                output=str(tmp_path / "a.h5"), quiet=True)
    with open_artifact(tmp_path / "a.h5") as art:
        prof = art.unit("0:2").label_profile
    assert "no class repeats" in prof.note and [r.count for r in prof.rows] == [1, 1, 1, 1]
