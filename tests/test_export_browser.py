"""The exported gallery in a real headless Chromium: no console errors, no broken images, no network.

Skipped when no chromium binary is installed (CI installs Debian's `chromium`). Screenshots are
saved under the test's tmp folder (path printed with -s) for a human to look at.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from artifact_factory import make_artifact
from cdp import Browser, find_chromium
from export_helpers import make_nasty_artifact
from scopecli.export import export_site
from scopecli.export.pages import HEAT_JS

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH (apt-get install chromium)")

# Force every lazy image to load, wait for each to finish, report the ones that did not decode.
LOAD_ALL_IMAGES = """(async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => (i.complete && i.naturalWidth > 0) ? null : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 8000); })));
  return {count: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
          scripts: [...document.scripts].map(s => s.textContent),
          heat: [...document.querySelectorAll('canvas.heat')].map(c => c.width > 0 &&
            [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data].some((v, i) => i % 4 == 3 && v > 0))};
})()"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    a = make_artifact(root / "a.h5")
    b = make_artifact(root / "b.h5", renders=False, units=[1, 3], seed=2)
    n = make_nasty_artifact(root / "nasty.h5")
    out = root / "site"
    res = export_site([a, b, n], out, per_page=4)
    return out, res


def _check(page, url: str) -> dict:
    page.goto(url)
    result = page.evaluate(LOAD_ALL_IMAGES, await_promise=True)
    page.settle(0.3)
    assert result["broken"] == [], (url, result["broken"])
    assert all(t == HEAT_JS for t in result["scripts"]), url  # nothing from the artifact became a script
    assert all(result["heat"]), url  # every heatmap the page holds was drawn (some opaque pixel)
    assert page.console_errors == [], (url, page.console_errors)
    assert page.log_errors == [], (url, page.log_errors)  # CSP violations and failed loads land here
    # pages, files of the site and pictures inlined in the page (data: URIs), nothing else
    assert page.requests and all(u.startswith(("file://", "data:image/")) for u in page.requests), (url, page.requests)
    return result


def _not_blank(path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert arr.shape[0] > 200 and arr.shape[1] > 600
    assert arr.std() > 20  # a real page: dark header, thumbnails, text


def test_gallery_pages_load_cleanly_offline(site, tmp_path):
    out, res = site
    base = out.resolve().as_uri()
    pages = {
        "index": f"{base}/index.html",
        "model": f"{base}/m/01-a/index.html",
        "grid": f"{base}/m/01-a/01-features.1-conv/index.html",
        "grid2": f"{base}/m/01-a/01-features.1-conv/page-2.html",
        "unit": f"{base}/m/01-a/01-features.1-conv/u/4.html",
        "examples-only": f"{base}/m/02-b/01-features.1-conv/index.html",
    }
    nasty_layer = next((out / "m").glob("03-*/01-*"))
    pages["nasty-grid"] = (nasty_layer / "index.html").resolve().as_uri()
    pages["nasty-unit"] = (nasty_layer / "u/1.html").resolve().as_uri()
    shots = tmp_path / "shots"
    shots.mkdir()
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        counts = {}
        for name, url in pages.items():
            counts[name] = _check(page, url)["count"]
            page.screenshot(str(shots / f"{name}.png"), full_page=name in ("unit", "nasty-unit"))
        # the grid's lazy images really are many, and the unit page shows render + examples
        assert counts["grid"] == 4 and counts["grid2"] == 2 and counts["unit"] >= 1 + 4 + 4
        # the escaped class name reads as text in the page, as written in the artifact
        text = page.evaluate("document.body.innerText")
        assert "<script>alert('x')</script>" in text
        # links navigate: the unit page's "next" goes to unit 2
        page.evaluate("document.querySelector('a.next').click()")
        assert page.wait_for_path("/u/2.html").endswith("/u/2.html")
    for png in shots.glob("*.png"):
        _not_blank(png)
    keep = shutil.copytree(shots, tmp_path.parent / "export-screenshots", dirs_exist_ok=True)
    print(f"screenshots: {keep}")


def test_comparison_page_loads_cleanly_offline(tmp_path):
    """`scope export --diff`: the comparison page and a model page linking to it, in Chromium."""
    from test_export_comparison import _pair

    pa, pb, d, _ = _pair(tmp_path)
    out = tmp_path / "site"
    export_site([pa, pb], out, diff_paths=[d])
    base = out.resolve().as_uri()
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        assert _check(page, f"{base}/d/01-d/index.html")["count"] == 2  # the linear and the debiased heatmap
        page.screenshot(str(tmp_path / "comparison.png"), full_page=True)
        text = page.evaluate("document.body.innerText")
        assert "alpha vs beta" in text and "best match per layer of a" in text.lower()
        _check(page, f"{base}/m/01-a/index.html")
        assert "vs beta (d.h5)" in page.evaluate("document.body.innerText")
    _not_blank(tmp_path / "comparison.png")


def test_other_views_load_cleanly_offline(site, tmp_path):
    """Format 1.1 views: the activation atlas page, a layer page with caricatures, a unit page with strongest inputs."""
    out, _ = site
    layer = next((out / "m").glob("01-*/02-*"))
    pages = {"atlas": layer / "atlas.html", "caricatures": layer / "index.html", "inputs": layer / "u/0.html"}
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        for name, path in pages.items():
            count = _check(page, path.resolve().as_uri())["count"]
            assert count >= 2, name
            page.screenshot(str(tmp_path / f"{name}.png"), full_page=True)
            text = page.evaluate("document.body.innerText").lower()
            assert {"atlas": "activation atlas", "caricatures": "caricatures", "inputs": "strongest inputs"}[name] in text
        page.goto((layer / "atlas.html").resolve().as_uri())
        page.evaluate("document.getElementById('z2').click()")  # zoom: the map doubles in width, no script needed
        page.settle(0.2)
        assert page.evaluate("document.querySelector('img.atlasmap').getBoundingClientRect().width") > 1000
    for png in tmp_path.glob("*.png"):
        _not_blank(png)


READ_HEATMAPS = """[...document.querySelectorAll('canvas.heat')].map(c => ({
  h: c.getAttribute('data-h'), s: c.getAttribute('data-s'), w: c.width, ht: c.height,
  px: [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data]}))"""


def test_the_page_draws_each_heatmap_as_scope_does(site):
    """The browser's drawing of a stored heatmap equals `core.heatmaps.rgba` of the decoded grid (what 0.2.0
    wrote as a PNG): alpha exactly, colour within canvas rounding where the overlay is visible."""
    import base64

    from scopecli.artifact.elements.examples import decode_heat
    from scopecli.core.heatmaps import rgba

    out, _ = site
    drawn = 0
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        for unit in (1, 4):
            page.goto((out / f"m/01-a/01-features.1-conv/u/{unit}.html").resolve().as_uri())
            page.settle(0.3)
            for c in page.evaluate(READ_HEATMAPS):
                w, lo, hi, b64 = c["h"].split(" ")
                q = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(-1, int(w))
                want = rgba(decode_heat(q, np.array([float(lo), float(hi)], np.float32)), -1.0 if c["s"] else 1.0)
                got = np.asarray(c["px"], np.int64).reshape(c["ht"], c["w"], 4)
                assert got.shape == want.shape
                assert np.abs(got[..., 3] - want[..., 3]).max() <= 1
                seen = want[..., 3] >= 64  # premultiplied alpha rounds the colour of faint pixels
                assert np.abs(got[..., :3][seen] - want[..., :3][seen].astype(np.int64)).max() <= 3
                drawn += 1
    assert drawn >= 4
