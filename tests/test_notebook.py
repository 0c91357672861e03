"""Notebook display: a unit and a file show as the gallery's pages in a cell, pictures inline; a render as a PNG."""

from __future__ import annotations

import base64
import io
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

import scopecli
from scopecli.artifact.images import image_kind

FIXTURE = Path(__file__).parent / "fixtures" / "artifact-1.3.h5"


class _Check(HTMLParser):
    """Collects img srcs and open/close balance of the elements that must close."""

    def __init__(self):
        super().__init__()
        self.srcs, self.stack, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        elif tag in ("div", "section", "figure", "table", "p", "ul", "li"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("div", "section", "figure", "table", "p", "ul", "li"):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check(html: str) -> _Check:
    c = _Check()
    c.feed(html)
    c.close()
    assert not c.stack, c.stack[-5:]
    for src in c.srcs:  # every picture is inline and decodes
        m = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:60]
        data = base64.b64decode(m.group(2))
        assert image_kind(data) == m.group(1)
        Image.open(io.BytesIO(data)).load()
    return c


def test_a_unit_shows_as_its_gallery_page_inline(tmp_path):
    path = tmp_path / "f.h5"
    shutil.copy(FIXTURE, path)
    with scopecli.open_artifact(path) as art:
        html = art.unit("3:0")._repr_html_()
        file_html = art._repr_html_()
    assert html.startswith('<div class="scope-nb">') and "<html" not in html and "<head" not in html
    c = _check(html)
    text = " ".join(c.text)
    assert "3:0" in text.replace(" ", "") and len(c.srcs) >= 2  # the render and its examples
    assert ".scope-nb{" in html and ":root" not in html  # the stylesheet is scoped to the cell
    c = _check(file_html)
    assert "3" in " ".join(c.text)


def test_page_text_from_a_file_is_escaped(tmp_path, scope_cli):
    """A class name from a stranger's labels file is text in the cell, never markup."""
    from collect_builders import colour_images

    data = colour_images(tmp_path / "data", green="<img src=x onerror=alert(1)>")
    out = tmp_path / "d.h5"
    r = scope_cli("collect", "tinymodels:decisive_net", "--data", data, "--labels", tmp_path / "labels.tsv", "-o", out,
                  "--layer", "relu", "--top-k", "3", "--bottom-k", "1", "--probe", "4", "--batch", "4", "--workers", "0",
                  "--input-size", "32", "--quiet")
    assert r.code == 0, r.stderr
    assert scope_cli("effects", out, "--data", data, "--ablate-k", "1", "--draws", "2", "--quiet").code == 0
    with scopecli.open_artifact(out) as art:
        html = art.unit("relu:1")._repr_html_()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    _check(html)


def test_a_render_shows_as_a_png(tmp_path):
    path = tmp_path / "f.h5"
    shutil.copy(FIXTURE, path)
    with scopecli.open_artifact(path) as art:
        r = art.unit("3:0").renders[0]
        png = r._repr_png_()
        pixels = r.image
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "RGB" and im.size[0] >= pixels.shape[1]


def test_an_example_and_an_atlas_show_as_pngs(tmp_path):
    path = tmp_path / "f.h5"
    shutil.copy(FIXTURE, path)
    with scopecli.open_artifact(path) as art:
        example = art.unit("3:0").examples["top"][0]
        atlas = art.atlas("3")
        for png, least in ((example._repr_png_(), example.patch.shape[1]), (atlas._repr_png_(), atlas.grid * 16)):
            with Image.open(io.BytesIO(png)) as im:
                assert im.mode == "RGB" and im.size[0] >= least


def test_a_layer_shows_as_its_grid_of_units(tmp_path):
    path = tmp_path / "f.h5"
    shutil.copy(FIXTURE, path)
    with scopecli.open_artifact(path) as art:
        view = art.layer_view("3")
        html = view._repr_html_()
        units = view.record.units
    c = _check(html)
    text = " ".join(c.text)
    assert html.startswith('<div class="scope-nb">') and len(c.srcs) >= units  # a thumbnail per unit (+ views)
    assert all(str(u) in text for u in range(units))


def test_a_diff_result_shows_as_its_comparison_page(tmp_path):
    from compare_builders import diffable_pair

    from scopecli.compare.diff import run_diff

    a, b = diffable_pair(tmp_path, noise=0.1)
    scopecli.open_artifact(a).close()  # registers the notebook displays
    res = run_diff(a, b, permutations=2)
    html = res._repr_html_()
    c = _check(html)
    assert html.startswith('<div class="scope-nb">') and len(c.srcs) >= 2  # the two CKA heatmaps, inline
    assert "modelA" in html and "modelB" in html and "CKA" in html


def test_a_caricature_shows_with_its_photo(tmp_path):
    path = tmp_path / "f.h5"
    shutil.copy(FIXTURE, path)
    with scopecli.open_artifact(path) as art:
        car = art.caricatures("3")[0]
        with Image.open(io.BytesIO(car._repr_png_())) as im:
            assert im.size == (2 * car.width + 4, car.height)
