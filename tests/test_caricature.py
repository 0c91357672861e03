"""Caricatures: `scope caricature` starts from the photo, exaggerates the layer's response to it, stores the
images with the evidence (`art.caricatures(layer)`), and `show`/`export` display them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from collect_builders import noise_images
from conftest import assert_one_line_error
from scopecli.artifact import open_artifact
from scopecli.artifact.validate import validate

RUN = ["--steps", 24, "--input-size", 32, "--quiet"]


@pytest.fixture
def photos(tmp_path):
    noise_images(tmp_path / "photos", 2, 40, seed=5)
    return sorted((tmp_path / "photos").glob("*.png"))


def test_caricature_exaggerates_the_photos_own_activation(tmp_path, photos, scope_cli):
    out = tmp_path / "c.h5"
    r = scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--image", photos[1], "--layer", "1,3",
                  "-o", out, *RUN, "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert len(summary["images"]) == 4  # two layers x two photos, one batched run
    with open_artifact(out) as art:
        for layer in ("1", "3"):
            items = art.caricatures(layer)
            assert [c.source_name for c in items] == [p.name for p in photos]
            for c, p in zip(items, photos):
                assert c.layer == layer and c.source_sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
                assert c.image.shape == (32, 32, 3) and c.image.dtype == np.uint8
                # the photo's own activation has cosine 1 and magnitude 1: the caricature beats its product
                # an optimisation outcome, not a rounding comparison: 1.22-1.26 here, and seeds, thread counts
                # and CPUs only change the trajectory by rounding; the evidence is computed in float64
                assert c.cosine * c.magnitude_ratio > 1.0
                assert 0 < c.cosine <= 1.0001 and c.steps == 24 and c.power == 1.0
                assert not np.array_equal(c.image, c.photo)
                # the stored photo is the centre crop the model saw (resize 37, crop 32), up to JPEG
                with Image.open(p) as im:
                    want = np.asarray(im.convert("RGB").resize((37, 37), Image.Resampling.BILINEAR))[2:34, 2:34]
                assert np.abs(c.photo.astype(int) - want.astype(int)).mean() < 12
    assert validate(out) == []


def test_parameterizations_start_from_the_photo():
    from scopecli.views.caricature import param_from_photos

    photos = torch.rand(2, 3, 24, 24) * 0.9 + 0.05
    for kind in ("fft", "pixel"):
        with torch.no_grad():
            image = param_from_photos(kind, photos)()
        # float32 round trip (pixel: logit, colour matrix, sigmoid; fft: also a 24x24 FFT): a few u * |logit|
        # (<= 6.2) through the inverse colour matrix, sigmoid' <= 1/4, measured 2e-7; 2e-4 leaves 100x on any
        # CPU's FFT, and a wrong inverse (no damping, scale or colour matrix) moves pixels by > 1e-2
        assert torch.allclose(image, photos, atol=2e-4), kind


def test_dot_compare_is_the_squared_norm_on_the_photo_itself():
    from scopecli.render.objectives import DotCompare

    r = torch.randn(3, 4, 5, 5)
    obj = DotCompare("x", [0, 1, 2], 3, power=2.0)
    score = obj({"x": r, "x@reference": r})
    # DotCompare sums n = 100 products in float32 (the dot, both norms): each sum of these non-negative terms
    # errs by at most n*u relative in any order, cos**2 by 2*(3 n u), so the score by 7 n u (4e-5); the
    # reference is float64. A wrong power or floor is off by a factor, not by 1e-5.
    want = r.double().flatten(1).pow(2).sum(1)
    rtol = 7 * 100 * 2.0**-24
    assert torch.allclose(score.double(), want, rtol=rtol, atol=0)
    # a pattern opposite to the photo's gets the floor weight 0.1 ** power, with its negative dot product
    assert torch.allclose(obj({"x": -r, "x@reference": r}).double(), -0.01 * want, rtol=rtol, atol=0)


def test_same_run_same_pixels(tmp_path, photos, scope_cli):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for out in (a, b):
        assert scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--layer", "3", "-o", out, *RUN).code == 0
    with open_artifact(a) as x, open_artifact(b) as y:
        assert np.array_equal(x.caricatures("3")[0].image, y.caricatures("3")[0].image)


def test_show_and_export_display_the_layer_caricatures(tmp_path, photos, scope_cli):
    out = tmp_path / "c.h5"
    assert scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--layer", "3", "-o", out, *RUN).code == 0
    r = scope_cli("show", out, "3", "--json")
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["caricatures"][0]["photo"] == photos[0].name and info["caricatures"][0]["cosine"] > 0
    r = scope_cli("show", out, "3")
    assert r.code == 0 and "caricatures" in r.stdout and photos[0].name in r.stdout
    card = tmp_path / "layer.png"
    assert scope_cli("show", out, "3", "-o", card).code == 0
    with Image.open(card) as im:
        assert im.width > 200 and np.asarray(im).std() > 10
    from export_helpers import check_site_links

    from scopecli.artifact.display import DisplaySpec, display_bytes
    from scopecli.export import export_site

    site = tmp_path / "site"
    export_site([out], site)
    from export_helpers import page_refs, src_bytes

    layer_page = site / "m/01-c/01-3/index.html"
    page = layer_page.read_text()
    shown = [src_bytes(layer_page, v) for tag, v in page_refs(layer_page)[0] if tag == "img"]
    with open_artifact(out) as art:
        c = art.caricatures("3")[0]
        spec = DisplaySpec.of(art.model)  # a 32 px model: shown enlarged with nearest neighbour
        assert "Caricatures" in page and display_bytes(c.encoded, c.height, c.width, spec) in shown
        assert display_bytes(c.photo_encoded, c.height, c.width, spec) in shown
    check_site_links(site)


def test_bad_inputs_are_one_line_errors(tmp_path, photos, scope_cli):
    out = tmp_path / "c.h5"
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert_one_line_error(scope_cli("caricature", "tinymodels:tiny_cnn", "--image", text, "--layer", "3", "-o", out,
                                    *RUN), 2, "not an image")
    assert_one_line_error(scope_cli("caricature", "tinymodels:tiny_cnn", "--image", tmp_path / "none.png", "--layer",
                                    "3", "-o", out, *RUN), 2, "no such file")
    assert_one_line_error(scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--layer", "3",
                                    "--param", "maco", "-o", out, *RUN), 2, "starts from the photo")
    assert_one_line_error(scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--layer", "nosuch",
                                    "-o", out, *RUN), 2, "unknown layer")
    assert_one_line_error(scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--layer", "3",
                                    "--power", "-1", "-o", out, *RUN), 2, "--power")
    assert not out.exists()
    # a failed run leaves an existing artifact as it was
    assert scope_cli("caricature", "tinymodels:tiny_cnn", "--image", photos[0], "--layer", "3", "-o", out, *RUN).code == 0
    before = out.read_bytes()
    assert_one_line_error(scope_cli("caricature", "tinymodels:tiny_cnn", "--image", text, "--layer", "3", "-o", out,
                                    *RUN), 2, "not an image")
    assert out.read_bytes() == before
