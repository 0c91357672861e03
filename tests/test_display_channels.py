"""Pictures of models other than 8-bit RGB show right everywhere (gallery export, `scope serve`, `scope show`,
Python): 1 channel as gray, N channels as the false-colour composite of the model's display channels, 16-bit
scaled to 8, small inputs enlarged with nearest neighbour; per-channel panels on unit pages. Files without an
input spec (format 1.0/1.1, 8-bit RGB) show their stored bytes as before (tests/test_golden_files.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artifact_factory import (fake_atlas, fake_caricatures, fake_examples, fake_image, fake_image_table, fake_layers,
    fake_model_info, fake_renders, fake_stats, make_artifact)
from export_helpers import page_refs, src_bytes
from scopecli import open_artifact
from scopecli.artifact import ArtifactWriter
from scopecli.artifact.display import DisplaySpec, display_bytes, for_screen
from scopecli.export import export_site

CONV, FC = "features.1/conv", "head.fc"
CONV_SLUG, FC_SLUG = "01-features.1-conv", "02-head.fc"
FIVE_NAMES = ["DAPI", "GFP", "RFP", "Cy5", "BF"]


def _smooth(rng, h: int, w: int, c: int, bits: int) -> np.ndarray:
    """A smooth HxWxC picture of `bits` bits (each channel its own pattern), plus a little noise."""
    y, x = np.mgrid[0:h, 0:w]
    top = (1 << bits) - 1
    chans = [np.sin(x / (2 + k) + rng.random() * 6) * np.cos(y / (3 + k)) for k in range(c)]
    arr = (np.stack(chans, -1) + 1) / 2 * top + rng.integers(0, 3, (h, w, c))
    return arr.clip(0, top).astype(np.uint16 if bits == 16 else np.uint8)


def _info(name: str, channels: int, bits: int, crop: int, names=(), display=()) -> dict:
    info = fake_model_info(hashlib.sha256(name.encode()).hexdigest(), spec=name)
    info["preprocess"].update(mean=[0.5] * channels, std=[0.5] * channels, crop=crop, resize=crop, channels=channels,
                              bit_depth=bits, value_range=None, channel_names=list(names),
                              display_channels=list(display))
    return info


def make_channels_artifact(path, channels: int, bits: int, crop: int, names=(), display=(), big: int = 0,
                           caricatures: bool = True) -> str:
    """The factory's two layers with renders, top/bottom examples, stats and an atlas (and caricatures), every
    picture of `channels` channels at `bits` bits; `big`: head.fc's renders are that large (grid thumbnails)."""
    rng = np.random.default_rng(channels * 100 + bits + crop)
    pic = (lambda h, w: _smooth(rng, h, w, channels, bits)) if channels != 3 or bits != 8 else \
        (lambda h, w: fake_image(rng, h, w))
    table = fake_image_table(12, 0)
    with ArtifactWriter(path, _info(Path(path).stem, channels, bits, crop, names, display), "test", {}) as w:
        w.set_dataset(table)
        for li, rec in enumerate(fake_layers()):
            w.ensure_layer(rec)
            us = list(range(rec.units))
            size = big if big and li == 1 else 32
            # the last unit: examples only
            w.put_renders(rec.name, [dataclasses.replace(r, image=pic(size, size))
                                     for r in fake_renders(rec, us[:-1], li, size=size)])
            for which, largest, seed in (("top", True, li), ("bottom", False, li + 50)):
                ex = fake_examples(rec, us, len(table), 3, seed, largest)
                ex = dataclasses.replace(ex, patches=[[None if p is None else pic(16, 16) for p in row]
                                                      for row in ex.patches])
                w.put_examples(rec.name, which, ex, "jpeg")
            w.put_stats(rec.name, fake_stats(rec, us, li))
            if li == 1:
                a = fake_atlas(rec)
                w.put(rec.name, "atlas", dataclasses.replace(a, images=[pic(16, 16) for _ in a.images]))
                if caricatures:
                    w.put(rec.name, "caricatures", [dataclasses.replace(c, image=pic(24, 24), photo=pic(24, 24))
                                                    for c in fake_caricatures(rec)])
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("channels")
    return {
        "one": make_channels_artifact(d / "one.h5", 1, 8, 224, names=["DNA"]),
        "five": make_channels_artifact(d / "five.h5", 5, 16, 224, names=FIVE_NAMES, display=[3, 1, -1], big=300,
                                       caricatures=False),  # (caricature photos are 8-bit RGB or gray)
        "small": make_channels_artifact(d / "small.h5", 3, 8, 32),
    }


@pytest.fixture(scope="module")
def site(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    export_site([files["one"], files["five"], files["small"]], out)
    return out


SLUG = {"one": "01-one", "five": "02-five", "small": "03-small"}


def _img_tags(text: str) -> list[dict]:
    return [dict(re.findall(r'(\w+)="([^"]*)"', t)) for t in re.findall(r"<img [^>]*>", text)]


def _decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _to8(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype == np.uint8 else np.round(arr.astype(np.float64) / 257).astype(np.uint8)


def _expected_composite(stored: np.ndarray, mapping) -> np.ndarray:
    out = np.zeros(stored.shape[:2] + (3,), np.uint8)
    for j, k in enumerate(mapping):
        if k >= 0:
            out[:, :, j] = _to8(stored[:, :, k])
    return out


def _unit_pictures(page: Path) -> list[tuple[dict, np.ndarray]]:
    """(img tag attributes, decoded pixels) of every picture on a page."""
    text = page.read_text(encoding="utf-8")
    out = []
    for tag in _img_tags(text):
        out.append((tag, np.asarray(_decoded(src_bytes(page, html.unescape(tag["src"]))))))
    return out


# ---------------------------------------------------------------------------------------------- export


def test_every_picture_of_every_page_is_an_8bit_picture_a_browser_shows(site):
    seen = 0
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for tag in _img_tags(text):
            data = src_bytes(page, html.unescape(tag["src"]))
            im = _decoded(data)
            assert im.format in ("PNG", "JPEG"), (page, im.format)
            assert im.mode in ("RGB", "L"), (page, im.mode)  # 8-bit colour or 8-bit single-plane gray
            w, h = int(tag["width"]), int(tag["height"])
            assert im.width * h == im.height * w, (page, tag["alt"], im.size, (w, h))  # no planar strips
            seen += 1
    assert seen > 100


def test_five_channel_composite_is_the_display_channels_scaled_to_8_bits(site, files):
    page = site / "m" / SLUG["five"] / CONV_SLUG / "u" / "2.html"
    pics = _unit_pictures(page)
    with open_artifact(files["five"]) as art:
        spec = DisplaySpec.of(art.model)
        assert spec.mapping == (3, 1, -1) and spec.describe() == "red=Cy5 green=GFP blue=-"
        view = art.unit(CONV, 2)
        render = view.renders[0].image
        patches = [e.patch for which in ("top", "bottom") for e in view.examples[which] if e.span[1]]
    assert render.dtype == np.uint16 and render.shape == (32, 32, 5)
    shown = [p for tag, p in pics if tag["alt"].startswith("channel render")]
    assert len(shown) == 1 and np.array_equal(shown[0], _expected_composite(render, (3, 1, -1)))
    assert not shown[0][:, :, 2].any()  # blue shows no channel
    ex = [p for tag, p in pics if " example " in tag["alt"]]
    assert len(ex) == len(patches) == 6
    for got, want in zip(ex, patches):
        assert np.array_equal(got, _expected_composite(want, (3, 1, -1)))
    # the grid tile (the render) and the thumbnail of a large render are composites too
    grid = _unit_pictures(site / "m" / SLUG["five"] / CONV_SLUG / "index.html")
    assert np.array_equal(grid[2][1], shown[0])
    thumbs = _unit_pictures(site / "m" / SLUG["five"] / FC_SLUG / "index.html")
    assert thumbs[0][1].shape == (192, 192, 3) and thumbs[0][1][:, :, 2].mean() < 4  # (a JPEG: nearly 0)
    # atlas cells and mosaic
    atlas = _unit_pictures(site / "m" / SLUG["five"] / FC_SLUG / "atlas.html")
    with open_artifact(files["five"]) as art:
        cell = art.atlas(FC).cells[0].image
    assert any(np.array_equal(p, _expected_composite(cell, (3, 1, -1))) for _, p in atlas)
    mosaic = max((p for _, p in atlas), key=lambda p: p.size)
    assert mosaic.ndim == 3 and mosaic.shape[2] == 3 and mosaic.shape[0] > 16


def test_unit_page_shows_each_channel_named_and_the_mapping(site, files):
    page = site / "m" / SLUG["five"] / CONV_SLUG / "u" / "2.html"
    text = page.read_text(encoding="utf-8")
    assert "Channels of the render" in text
    assert "composite: red=Cy5 green=GFP blue=-" in text and "16-bit values scaled to 8 bits" in text
    panels = [(tag, p) for tag, p in _unit_pictures(page) if tag["alt"].startswith("channel ") and "(" in tag["alt"]]
    assert [re.search(r"\((.*)\)", t["alt"]).group(1) for t, _ in panels] == FIVE_NAMES
    for name in FIVE_NAMES:
        assert f"<b>{name}</b>" in text
    with open_artifact(files["five"]) as art:
        render = art.unit(CONV, 2).renders[0].image
    for k, (_, p) in enumerate(panels):
        assert p.ndim == 2 and np.array_equal(p, _to8(render[:, :, k]))  # 8-bit gray
    # a unit with examples only has no channel panels; the mapping still says how its patches are drawn
    text5 = (site / "m" / SLUG["five"] / CONV_SLUG / "u" / "5.html").read_text(encoding="utf-8")
    assert "Channels of the render" not in text5 and "red=Cy5 green=GFP blue=-" in text5
    # one channel: the stored 8-bit gray pictures as they are, one panel named after the channel
    one = site / "m" / SLUG["one"] / CONV_SLUG / "u" / "1.html"
    text1 = one.read_text(encoding="utf-8")
    assert "Channels of the render" in text1 and "<b>DNA</b>" in text1 and "one channel, shown in gray" in text1
    with open_artifact(files["one"]) as art:
        v = art.unit(CONV, 1)
        stored = {v.renders[0].encoded} | {e.encoded for w in ("top", "bottom") for e in v.examples[w] if e.span[1]}
    shown = {src_bytes(one, html.unescape(t["src"])) for t in _img_tags(text1)}
    assert stored <= shown
    assert all(_decoded(b).mode == "L" for b in shown)
    # plain RGB (here the 32-px model without display channels): no panels
    assert "Channels of the render" not in (site / "m" / SLUG["small"] / CONV_SLUG / "u" / "1.html").read_text()


def test_small_input_pictures_are_enlarged_by_an_integer_factor_with_nearest_neighbour(site, files):
    page = site / "m" / SLUG["small"] / CONV_SLUG / "u" / "1.html"
    text = page.read_text(encoding="utf-8")
    assert "input 32 px: pictures enlarged ×4 with nearest neighbour" in text
    pics = _unit_pictures(page)
    with open_artifact(files["small"]) as art:
        view = art.unit(CONV, 1)
        wanted = [view.renders[0].image] + [e.patch for w in ("top", "bottom") for e in view.examples[w] if e.span[1]]
        cell = art.atlas(FC).cells[0].image
    got = [p for _, p in pics]
    assert len(got) == len(wanted)
    for g, want in zip(got, wanted):
        k = g.shape[0] // want.shape[0]
        assert k >= 2 and g.shape == (want.shape[0] * k, want.shape[1] * k, 3) and k * want.shape[0] >= 128
        blocks = g.reshape(want.shape[0], k, want.shape[1], k, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()  # each model pixel a k x k block of one colour
        assert np.array_equal(blocks[:, 0, :, 0], want)
    atlas = _unit_pictures(site / "m" / SLUG["small"] / FC_SLUG / "atlas.html")
    assert any(np.array_equal(p, np.repeat(np.repeat(cell, 8, 0), 8, 1)) for _, p in atlas)


def test_files_without_an_input_spec_show_the_stored_bytes(tmp_path):
    path = make_artifact(tmp_path / "old.h5")
    with open_artifact(path) as art:
        spec = DisplaySpec.of(art.model)
        assert (spec.channels, spec.rgb, spec.bit_depth, spec.enlarge_small) == (3, (), 8, False)
        assert spec.input_size == 64 and not spec.small  # a 64-px model, but its file records no input spec
        assert not spec.per_channel and spec.describe() == ""
        v = art.unit(CONV, 1)
        for data, h, w in [(v.renders[0].encoded, v.renders[0].height, v.renders[0].width)] + \
                [(e.encoded, e.height, e.width) for e in v.examples["top"]]:
            assert display_bytes(data, h, w, spec) is data
    site = tmp_path / "site"
    export_site([path], site)
    text = (site / "m/01-old" / CONV_SLUG / "u/1.html").read_text(encoding="utf-8")
    assert "Channels of the render" not in text and "chnote" not in text


# ---------------------------------------------------------------------------------------------- serve


def test_server_shows_the_same_pictures_and_checks_channel_keys(site, files):
    from scopecli.serve.app import App, Catalog

    paths = [files["one"], files["five"], files["small"]]
    cat = Catalog(paths)
    app = App(cat)
    try:
        for name in ("one", "five", "small"):
            for rel in (f"{CONV_SLUG}/u/2.html", f"{CONV_SLUG}/index.html", f"{FC_SLUG}/atlas.html",
                        f"{FC_SLUG}/index.html"):
                r = app.handle("GET", f"/m/{SLUG[name]}/{rel}")
                assert r.status == 200, (name, rel, r.body[:300])
                served = [app.handle("GET", html.unescape(t["src"])) for t in _img_tags(r.body.decode())]
                assert all(x.status == 200 and x.content_type in ("image/png", "image/jpeg") for x in served)
                page = site / "m" / SLUG[name] / rel
                exported = [src_bytes(page, html.unescape(t["src"])) for t in _img_tags(page.read_text())]
                assert [x.body for x in served] == exported, (name, rel)  # the same builder, the same pictures
        text = app.handle("GET", f"/m/{SLUG['five']}/{CONV_SLUG}/u/2.html").body.decode()
        keys = re.findall(r'src="/img/[0-9a-f]{12}/(1/0/k\d+-\d+)"', text)
        assert len(keys) == 5
        row = keys[0].split("/k")[1].split("-")[0]
        tok = cat.token
        assert app.handle("GET", f"/img/{tok}/1/0/k{row}-4").status == 200
        for bad in (f"1/0/k{row}-5", "1/0/k9999-0", f"0/0/k{row}-1", f"2/0/k{row}-0", "1/0/k-1", "1/0/k1-999",
                    f"1/0/k{row}-../0"):
            assert app.handle("GET", f"/img/{tok}/{bad}").status == 404, bad
    finally:
        cat.close()


# ---------------------------------------------------------------------------------------------- show, Python


def test_scope_show_card_composes_five_channels(files, tmp_path, scope_cli):
    from scopecli.artifact.display import composite
    from scopecli.compare.show import _thumb, load_unit

    out = tmp_path / "card.png"
    r = scope_cli("show", files["five"], f"{CONV}:2", "-o", str(out))
    assert r.code == 0, r.stderr
    card = np.asarray(Image.open(out).convert("RGB"))
    info = load_unit(files["five"], f"{CONV}:2", pixels=True)
    spec = info["_display"]
    tile = np.asarray(_thumb(composite(info["renders"][0]["_image"], spec)))
    assert tile.shape == (112, 112, 3) and not tile[:, :, 2].any()  # blue shows no channel
    th = tile.shape[0]
    found = any(np.array_equal(card[y:y + th, 8:8 + th], tile) for y in range(card.shape[0] - th))
    assert found, "the render's composite is on the card"
    layer = tmp_path / "layer.png"
    r = scope_cli("show", files["five"], FC, "-o", str(layer))  # the atlas of 5-channel cells
    assert r.code == 0, r.stderr
    assert Image.open(layer).mode == "RGB"
    r = scope_cli("show", files["one"], f"{CONV}:1", "-o", str(tmp_path / "one.png"))
    assert r.code == 0, r.stderr


def test_python_for_screen_of_render_and_example_views(files):
    for name, shape in (("one", (32, 32, 3)), ("five", (32, 32, 3)), ("small", (128, 128, 3))):
        with open_artifact(files[name]) as art:
            spec = DisplaySpec.of(art.model)
            v = art.unit(CONV, 0)
            shown = for_screen(v.renders[0].image, spec)
            assert shown.dtype == np.uint8 and shown.shape == shape
            patch = for_screen(v.examples["top"][0].patch, spec)
            assert patch.dtype == np.uint8 and patch.ndim == 3 and patch.shape[2] == 3
