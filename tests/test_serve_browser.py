"""`scope serve` in a real headless Chromium: no console errors, no broken images, no CSP violations, and
every request goes to the server itself.

Skipped when no chromium binary is installed (as test_export_browser.py). Full-page screenshots go to the
folder named by $SCOPE_SHOTS when set (to look at), else to the test's tmp folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from cdp import Browser, find_chromium
from test_export_browser import LOAD_ALL_IMAGES
from test_serve import CONV, CONV_SLUG, FC_SLUG, serve_two_and_a_diff

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    *_, server = serve_two_and_a_diff(tmp_path_factory.mktemp("serve-browser"))
    try:
        yield server
    finally:
        server.stop_cleanly()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ["SCOPE_SHOTS"]) if os.environ.get("SCOPE_SHOTS") else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check(page, url: str, origin: str) -> dict:
    page.goto(url)
    result = page.evaluate(LOAD_ALL_IMAGES, await_promise=True)
    page.settle(0.3)
    assert result["broken"] == [], (url, result["broken"])
    assert page.console_errors == [], (url, page.console_errors)
    assert page.log_errors == [], (url, page.log_errors)  # CSP violations and failed loads land here
    # the page, its stylesheet and pictures from this server, pictures inlined in the page; nothing else
    assert page.requests and all(u.startswith((origin + "/", "data:image/")) for u in page.requests), (url, page.requests)
    assert page.requests[0] == url
    return result


def _not_blank(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert arr.shape[0] > 200 and arr.shape[1] > 600
    assert arr.std() > 20  # a real page: dark header, pictures, text


def test_served_pages_load_cleanly(served, shots):
    origin = served.url.rstrip("/")
    pages = {
        "serve-index": f"{origin}/",
        "serve-grid": f"{origin}/m/01-a/{CONV_SLUG}/index.html",
        "serve-unit": f"{origin}/m/01-a/{CONV_SLUG}/u/3.html",
        "serve-comparison": f"{origin}/d/01-d/index.html",
        "serve-atlas": f"{origin}/m/01-a/{FC_SLUG}/atlas.html",
        "serve-search": f"{origin}/search?q=cat",
    }
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        counts = {}
        for name, url in pages.items():
            counts[name] = _check(page, url, origin)["count"]
            page.screenshot(str(shots / f"{name}.png"), full_page=True)
            assert page.evaluate("document.querySelector('form.search') !== null"), name  # served, not static
        # the index shows both models' mosaics, the grid its 4 units of page 1, the unit page its render and
        # 8 examples, the comparison page its two CKA heatmaps
        assert counts["serve-index"] >= 8 and counts["serve-grid"] == 4
        assert counts["serve-unit"] >= 1 + 8 and counts["serve-comparison"] == 2
        # the pictures really came from the server (not only inline)
        page.goto(pages["serve-unit"])
        page.evaluate(LOAD_ALL_IMAGES, await_promise=True)
        page.settle(0.2)
        assert sum(u.startswith(origin + "/img/") for u in page.requests) >= 9

        # the search box in the header: typing a unit address and submitting lands on its unit page
        page.goto(pages["serve-index"])
        page.evaluate(f"(() => {{ const f = document.querySelector('form.search'); f.q.value = {CONV + ':2'!r};"
                      " f.submit(); })()")
        assert page.wait_for_path("/u/2.html") == f"/m/01-a/{CONV_SLUG}/u/2.html"
    for name in pages:
        _not_blank(shots / f"{name}.png")
    print(f"screenshots: {shots}")


def test_search_page_and_error_page_in_the_browser(served, shots):
    """A label search lists pictures that load; a missing page is a 404 page that still renders with its style."""
    origin = served.url.rstrip("/")
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        count = _check(page, f"{origin}/search?q={quote('like:' + CONV + ':2')}", origin)["count"]
        assert count >= 3
        page.goto(f"{origin}/m/01-a/{CONV_SLUG}/u/999.html")
        page.settle(0.2)
        assert "not found" in page.evaluate("document.body.innerText").lower()
        # the stylesheet applied: the header is styled (a real background colour, not the default transparent)
        bg = page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
        assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg
        page.screenshot(str(shots / "serve-404.png"), full_page=True)


def _first_page_log(served) -> list[str]:
    with Browser() as browser:
        page = browser.new_page(1280, 900)
        page.goto(served.url)
        page.evaluate(LOAD_ALL_IMAGES, await_promise=True)
        page.settle(0.5)
        return page.log_errors


def test_served_pages_log_no_ignored_csp_directive(served):
    log = _first_page_log(served)
    assert not [e for e in log if "frame-ancestors" in e], log


def test_served_pages_log_no_favicon_404(served):
    log = _first_page_log(served)
    assert not [e for e in log if "favicon" in e], log
