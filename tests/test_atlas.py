"""Activation atlases: `scope atlas` lays the layer's activation sample out in 2-D (UMAP, else PCA and it
says so), grids it, renders every non-empty cell's mean direction batched, and stores the atlas; the
gallery shows it on a zoomable page."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from collect_builders import noise_images
from conftest import assert_one_line_error
from scopecli.views import atlas as atlas_mod
from scopecli.artifact import open_artifact
from scopecli.artifact.display import DisplaySpec, display_bytes
from scopecli.artifact.validate import validate

COLLECT = ["--top-k", 2, "--bottom-k", 1, "--batch", 8, "--workers", 0, "--probe", 3, "--input-size", 32, "--quiet"]
ATLAS = ["--grid", 4, "--steps", 32, "--size", 32, "--layout", "pca", "--quiet"]


@pytest.fixture
def sampled(tmp_path, scope_cli):
    noise_images(tmp_path / "data", 10, 40, seed=2)
    out = tmp_path / "a.h5"
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", tmp_path / "data", "-o", out, "--layer", "3", *COLLECT,
                  "--sample", 300)
    assert r.code == 0, r.stderr
    return out


def test_atlas_cells_render_their_directions(sampled, scope_cli):
    r = scope_cli("atlas", sampled, "--layer", "3", *ATLAS, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["layout"] == "pca" and summary["vectors"] == 300 and summary["improved"] == summary["cells"]
    from scopecli.model.capture import capture
    from scopecli.model.layers import layouts_at
    from scopecli.model.weights import random_init
    from scopecli.render.objectives import CellDirectionScore

    import tinymodels

    model = random_init(tinymodels.tiny_cnn).eval()
    with open_artifact(sampled) as art:
        atlas = art.atlas("3")
        sample = art.sample("3")
        pre = art.model["preprocess"]
        for cell in atlas.cells:
            cell.image  # decoded while the file is open (images are read lazily)
    assert atlas.grid == 4 and atlas.layout == "pca" and len(atlas.cells) == summary["cells"] >= 4
    assert sum(c.count for c in atlas.cells) == len(sample)  # every sample vector is in one cell
    assert len({c.position for c in atlas.cells}) == len(atlas.cells)
    assert all(0 <= r < 4 and 0 <= c < 4 for r, c in (cell.position for cell in atlas.cells))
    # each cell's render raises its direction's score above the start, measured again here on the stored PNG
    images = torch.from_numpy(np.stack([c.image for c in atlas.cells])).permute(0, 3, 1, 2).float() / 255.0
    x = (images - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    lay = layouts_at(model, 32, ["3"])
    with torch.no_grad():
        acts = capture(model, x, ["3"])["3"]
    n = len(atlas.cells)
    score = CellDirectionScore("3", list(range(n)), np.stack([c.mean for c in atlas.cells]), n)({"3": acts})
    for cell, s in zip(atlas.cells, score.tolist()):
        assert cell.image.shape == (32, 32, 3) and cell.image.dtype == np.uint8
        # act_final was measured on the float picture, s on its 8-bit PNG in another batch: the PNG's half-step
        # (1/510 per pixel) moved it by <= 8e-4 relative here, float rounding by ~1e-6; 5% is 60x that, yet far
        # below the gap to the start (act_start is 25-90% lower), so another cell's or unit's score would miss
        assert s > cell.act_start and abs(s - cell.act_final) < 0.05 * abs(cell.act_final) + 1e-3
    assert validate(sampled) == []


def test_layout_is_deterministic_per_seed():
    x = np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32)
    a, used, _ = atlas_mod.layout_2d(x, "pca", seed=0)
    b, _, _ = atlas_mod.layout_2d(x, "pca", seed=0)
    assert used == "pca" and np.array_equal(a, b) and a.min() >= 0 and a.max() <= 1
    if not atlas_mod.umap_available():
        pytest.skip("umap-learn is not installed")
    u0, used, note = atlas_mod.layout_2d(x, "umap", seed=0)
    u0_again, _, _ = atlas_mod.layout_2d(x, "umap", seed=0)
    u1, _, _ = atlas_mod.layout_2d(x, "umap", seed=1)
    assert used == "umap" and note == ""
    assert np.array_equal(u0, u0_again)
    assert not np.allclose(u0, u1)


def test_without_umap_the_layout_is_pca_and_says_so(monkeypatch):
    monkeypatch.setattr(atlas_mod, "umap_available", lambda: False)
    x = np.random.default_rng(1).normal(size=(50, 4))
    coords, used, note = atlas_mod.layout_2d(x, "auto", seed=0)
    assert used == "pca" and "umap-learn is not installed" in note
    from scopecli.core.errors import ScopeError

    with pytest.raises(ScopeError, match="needs umap-learn"):
        atlas_mod.layout_2d(x, "umap", seed=0)


def test_grid_cells_average_the_vectors_of_each_cell():
    coords = np.array([[0.1, 0.1], [0.2, 0.05], [0.9, 0.1], [0.95, 0.99]])
    vectors = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 1.0]])
    cell, count, center, mean = atlas_mod.grid_cells(coords, vectors, 2)
    assert cell.tolist() == [[0, 0], [0, 1], [1, 1]]  # (row = second axis, column = first)
    assert count.tolist() == [2, 1, 1]
    assert np.allclose(mean, [[2.0, 1.0], [5.0, 5.0], [7.0, 1.0]])
    assert np.allclose(center[0], [0.075, 0.15])


def test_atlas_page_in_the_gallery(sampled, scope_cli, tmp_path):
    assert scope_cli("atlas", sampled, "--layer", "3", *ATLAS).code == 0
    from export_helpers import check_site_links, page_refs

    from scopecli.export import export_site

    site = tmp_path / "site"
    export_site([sampled], site)
    layer = site / "m/01-a/01-3"
    assert 'href="atlas.html"' in (layer / "index.html").read_text()
    page = layer / "atlas.html"
    srcs = [v for tag, v in page_refs(page)[0] if tag == "img"]
    from export_helpers import src_bytes

    from scopecli.artifact.images import image_kind

    assert not srcs[0].startswith("data:") and image_kind(src_bytes(page, srcs[0])) == "png"  # the mosaic: a file
    with open_artifact(sampled) as art:
        atlas = art.atlas("3")
        spec = DisplaySpec.of(art.model)  # a 32 px model: cells enlarged with nearest neighbour, as display_bytes does
        assert [src_bytes(page, s) for s in srcs[1:]] == [display_bytes(c.encoded, c.height, c.width, spec)
                                                          for c in atlas.cells]
    assert len(srcs) == 1 + len(atlas.cells)  # (metadata only here: no image is read after the file closes)
    text = page.read_text()
    first = atlas.cells[0]
    assert f'href="u/{first.nearest_units(1)[0]}.html"' in text  # a cell links to its nearest unit
    assert 'type="radio"' in text and "<script" not in text  # zoom without script
    check_site_links(site)
    r = scope_cli("show", sampled, "3", "--json")
    assert json.loads(r.stdout)["atlas"]["cells"] == len(atlas.cells)


def test_bad_inputs_are_one_line_errors(sampled, scope_cli, tmp_path):
    before = sampled.read_bytes()
    assert_one_line_error(scope_cli("atlas", sampled, "--layer", "3", "--grid", 20, "--layout", "pca"), 2,
                          "fewer than the 20x20 = 400 grid cells")
    assert_one_line_error(scope_cli("atlas", sampled, "--layer", "nosuch", *ATLAS), 2, "not in")
    assert_one_line_error(scope_cli("atlas", sampled, "--layer", "3", "--grid", 1), 2, "--grid")
    assert_one_line_error(scope_cli("atlas", sampled, "--layer", "3", "--layout", "tsne"), 2, "--layout")
    assert sampled.read_bytes() == before
    out = tmp_path / "nosample.h5"
    assert scope_cli("collect", "tinymodels:tiny_cnn", "--data", tmp_path / "data", "-o", out, "--layer", "3",
                     *COLLECT).code == 0
    assert_one_line_error(scope_cli("atlas", out, "--layer", "3", *ATLAS), 2, "--sample")
