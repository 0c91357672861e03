"""`scope serve` through real HTTP: a real server process (`--port 0 --json`) on small artifacts built here.

One module-scoped server holds two artifacts and a diff file of them; tests that need their own file
(damaged, replaced on disk) start their own. Every server is stopped with SIGINT (Ctrl-C) and must exit 0.
Pictures are checked byte for byte against what the artifact stores, JSON against the Python API.
"""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

import h5py
import numpy as np
import pytest

from artifact_factory import FAKE_FINGERPRINT, fake_layers, fake_model_info, fake_probe, make_artifact
from conftest import assert_one_line_error
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.images import image_kind
from scopecli.export.names import slug

CONV, FC = "features.1/conv", "head.fc"  # the factory's two layers
CONV_SLUG, FC_SLUG = "01-features.1-conv", "02-head.fc"
N_IMAGES = 120  # `scope diff` needs at least 100 shared probe images
OTHER_FINGERPRINT = hashlib.sha256(b"another fake model").hexdigest()
A_UNITS = [0, 1, 2, 3, 4]  # A lists 5 of conv's 6 units (2 grid pages of 4); B lists all 6


# ---------------------------------------------------------------------------------------------- artifacts


def build_artifact(path, seed: int, fingerprint: str, units=None) -> str:
    """The factory's artifact (renders, examples, labels, inputs, caricatures, an atlas on head.fc) with a
    probe over all its images, so that `scope diff` can compare two of them."""
    make_artifact(path, seed=seed, n_images=N_IMAGES, fingerprint=fingerprint, units=units)
    with ArtifactWriter(path, fake_model_info(fingerprint), "probe", {}) as w:
        for li, rec in enumerate(fake_layers()):
            w.put_probe(rec.name, fake_probe(rec, range(N_IMAGES), seed + li))
    return str(path)


def stored_pictures(path) -> set[bytes]:
    """Every encoded picture the artifact stores: renders, example patches, caricatures (and photos), atlas cells."""
    out = set()
    with open_artifact(path) as art:
        for layer in art.layers:
            for u in range(art.layer(layer).units):
                view = art.unit(layer, u)
                out.update(r.encoded for r in view.renders)
                for exs in view.examples.values():
                    out.update(e.encoded for e in exs if e.span[1])
            for c in art.caricatures(layer):
                out.update((c.encoded, c.photo_encoded))
            atlas = art.atlas(layer)
            if atlas is not None:
                out.update(c.encoded for c in atlas.cells)
    return out


def h5_layer_key(f: h5py.File, layer: str) -> str:
    """The group name a layer is stored under (names with '/' are escaped)."""
    return next(k for k in f["layers"] if unquote(k) == layer)


# ---------------------------------------------------------------------------------------------- HTTP


@dataclass
class Resp:
    status: int
    headers: object
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 303 comes back as it is


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def fetch(url: str, headers: dict | None = None, method: str = "GET") -> Resp:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _OPENER.open(req, timeout=60) as r:
            return Resp(r.status, r.headers, r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Resp(exc.code, exc.headers, exc.read())


def raw(url: str, target: str, method: str = "GET", host: str | None = None, body: bytes | None = None) -> Resp:
    """A request with a target sent exactly as written (no normalisation) and optionally another Host header."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        if tag in ("a", "link") and a.get("href"):
            self.links.append(a["href"])


def refs(text: str) -> _Refs:
    p = _Refs()
    p.feed(text)
    return p


def unit_links(text: str) -> set[int]:
    """Unit numbers a layer grid page links to (`u/N.html`)."""
    return {int(h[2:-5]) for h in refs(text).links if h.startswith("u/") and h.endswith(".html")}


# ---------------------------------------------------------------------------------------------- servers


class Served:
    """A `scope serve ... --port 0 --json` process; `stop()` sends SIGINT (Ctrl-C) and returns its exit code."""

    def __init__(self, args, log: Path):
        self.log = open(log, "w+")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "scopecli", "serve", *map(str, args), "--port", "0", "--json"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            first = ""
        if not first:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"scope serve printed no startup line; stderr: {self.stderr()}")
        self.info = json.loads(first)
        self.url = self.info["url"]
        self.port = urlsplit(self.url).port

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def get(self, path: str, headers: dict | None = None) -> Resp:
        return fetch(urljoin(self.url, path), headers)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = "did not stop within 10 s of SIGINT"
        self.proc.stdout.close()
        return code

    def stop_cleanly(self) -> None:
        code = self.stop()
        err = self.stderr()
        self.log.close()
        assert code == 0, (code, err)
        assert "Traceback" not in err, err


class serving:
    """`with serving(tmp, args) as s:` a server for one test, stopped (and checked to exit 0) at the end."""

    def __init__(self, tmp: Path, *args):
        self.s = Served(args, tmp / f"serve-{len(list(tmp.glob('serve-*')))}.log")

    def __enter__(self) -> Served:
        return self.s

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.s.stop_cleanly()
        else:
            self.s.stop()


@dataclass
class World:
    root: Path
    a: str
    b: str
    diff: str
    server: Served
    stored: list[set[bytes]]  # per served model
    token: str = ""  # the picture URLs' token of the files' current state

    def __post_init__(self):
        self.token = next(x for x in refs(self.server.get("/index.html").text).imgs if x.startswith("/img/")).split("/")[2]


def serve_two_and_a_diff(root: Path):
    """Artifacts a (units A_UNITS of conv) and b, their diff file, and `scope serve` of the three (per page 4)."""
    from scopecli.compare.diff import run_diff

    a = build_artifact(root / "a.h5", 0, FAKE_FINGERPRINT, units=A_UNITS)
    b = build_artifact(root / "b.h5", 3, OTHER_FINGERPRINT)
    d = root / "d.h5"
    run_diff(a, b, permutations=2).save(d)
    return a, b, d, Served([a, b, "--diff", d, "--per-page", 4], root / "server.log")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    a, b, d, server = serve_two_and_a_diff(root)
    try:
        yield World(root, a, b, str(d), server, [stored_pictures(a), stored_pictures(b)])
    finally:
        server.stop_cleanly()  # Ctrl-C stops it: exit 0, no traceback


def check_pictures(w: World, page_url: str, text: str) -> dict[str, bytes]:
    """Every <img src> of a page loads: an inline data: PNG/JPEG, or a 200 answer whose bytes are a picture the
    artifact stores (the atlas mosaic and the comparison heatmaps are drawn: a PNG). Returns src -> bytes."""
    import base64

    got = {}
    srcs = refs(text).imgs
    for src in srcs:
        if src.startswith("data:"):
            head, _, data = src.partition(",")
            assert head in ("data:image/png;base64", "data:image/jpeg;base64"), (page_url, src[:60])
            body = base64.b64decode(data)
            assert image_kind(body) is not None, (page_url, src[:60])
            got[src] = body
            continue
        url = urljoin(page_url, src)
        assert url.startswith(w.server.url), (page_url, src)  # the server's own pictures only
        r = fetch(url)
        assert r.status == 200, (page_url, src, r.status)
        assert r.headers["Content-Type"] in ("image/png", "image/jpeg"), (src, r.headers["Content-Type"])
        assert image_kind(r.body) is not None, src
        path = urlsplit(url).path
        if path.startswith("/img/"):
            _, _, token, mi, li, what = path.split("/")
            if what == "m":  # the atlas mosaic, drawn from the stored cells
                assert image_kind(r.body) == "png"
            else:
                assert r.body in w.stored[int(mi)], (page_url, src)
            assert "immutable" in r.headers["Cache-Control"]
        else:
            assert path.startswith("/d/") and path.endswith(".png"), src
        got[src] = r.body
    return got


# ---------------------------------------------------------------------------------------------- pages


def test_startup_line_names_the_url_and_the_artifacts(world):
    info = world.server.info
    assert info["artifacts"] == [world.a, world.b]
    assert world.server.url == f"http://127.0.0.1:{world.server.port}/" and world.server.port > 0
    assert world.server.proc.poll() is None


PAGES = {
    "root": "/",
    "index": "/index.html",
    "model": "/m/01-a/",
    "model-index": "/m/02-b/index.html",
    "grid-1": f"/m/01-a/{CONV_SLUG}/index.html",
    "grid-folder": f"/m/01-a/{CONV_SLUG}/",
    "grid-2": f"/m/01-a/{CONV_SLUG}/page-2.html",
    "by-label": f"/m/02-b/{CONV_SLUG}/by-label.html",
    "layer-extras": f"/m/01-a/{FC_SLUG}/index.html",
    "unit": f"/m/01-a/{CONV_SLUG}/u/3.html",
    "unit-b": f"/m/02-b/{FC_SLUG}/u/3.html",
    "atlas": f"/m/01-a/{FC_SLUG}/atlas.html",
    "comparison": "/d/01-d/index.html",
    "search-label": "/search?q=cat",
    "search-like": f"/search?q={quote('like:' + CONV + ':2')}",
    "search-empty": "/search?q=",
}


@pytest.mark.parametrize("kind", list(PAGES))
def test_every_page_kind_is_html_and_its_pictures_are_the_stored_bytes(world, kind):
    url = urljoin(world.server.url, PAGES[kind])
    r = fetch(url)
    assert r.status == 200, (kind, r.status, r.text[:300])
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.text.lstrip().lower().startswith("<!doctype html>")
    got = check_pictures(world, url, r.text)
    served = [s for s in got if not s.startswith("data:")]
    if kind not in ("search-empty",):
        assert served, kind  # each of these pages shows pictures from the file
    if kind in ("grid-1", "grid-folder"):
        assert unit_links(r.text) == set(A_UNITS[:4])
    if kind == "grid-2":
        assert unit_links(r.text) == {A_UNITS[4]}
    if kind == "by-label":
        assert unit_links(r.text) <= set(range(6)) and len(unit_links(r.text)) == 4
    if kind == "atlas":
        with open_artifact(world.a) as art:
            cells = {c.encoded for c in art.atlas(FC).cells}
        assert cells <= set(got.values())
    if kind == "comparison":
        assert sorted(s.rsplit("/", 1)[-1] for s in served) == ["cka-debiased.png", "cka-linear.png"]
        assert all(image_kind(got[s]) == "png" for s in served)


@pytest.mark.parametrize("model,path,layer,unit", [(0, "a", CONV, 3), (1, "b", FC, 3), (1, "b", CONV, 5)])
def test_unit_page_shows_the_stored_render_and_example_patches(world, model, path, layer, unit):
    slug = CONV_SLUG if layer == CONV else FC_SLUG
    url = urljoin(world.server.url, f"/m/0{model + 1}-{path}/{slug}/u/{unit}.html")
    r = fetch(url)
    assert r.status == 200
    got = check_pictures(world, url, r.text)
    srcs = [s for s in refs(r.text).imgs if s.startswith("/img/")]
    with open_artifact(world.a if model == 0 else world.b) as art:
        view = art.unit(layer, unit)
        render = view.renders[0].encoded
        patches = [e.encoded for which in ("top", "bottom") for e in view.examples[which] if e.span[1]]
    assert got[srcs[0]] == render  # the unit's render comes first
    shown = [got[s] for s in srcs[1:1 + len(patches)]]
    assert shown == patches  # then its top and bottom examples, in order
    assert len(patches) >= 6


def test_links_between_pages_all_answer(world):
    """Crawl from the index: every link on every page (relative in both the export and the server) answers 200."""
    base = world.server.url
    todo, seen, pages = [urljoin(base, "index.html")], set(), 0
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        r = fetch(url)
        assert r.status == 200, (url, r.status)
        if not r.headers["Content-Type"].startswith("text/html"):
            continue
        pages += 1
        for href in refs(r.text).links:
            target = urljoin(url, href).partition("#")[0]
            assert target.startswith(base), (url, href)
            todo.append(target)
    # every unit page of both models is reachable, and the atlas, the label pages and the comparison
    units = {urljoin(base, f"m/{m}/{ls}/u/{u}.html") for m, listed in (("01-a", A_UNITS), ("02-b", range(6)))
             for ls, us in ((CONV_SLUG, listed), (FC_SLUG, range(4))) for u in us}
    assert units <= seen, sorted(units - seen)
    others = {f"m/01-a/{FC_SLUG}/atlas.html", f"m/02-b/{CONV_SLUG}/by-label.html", f"m/01-a/{CONV_SLUG}/page-2.html",
              "d/01-d/index.html", "m/02-b/index.html"}
    assert {urljoin(base, x) for x in others} <= seen
    assert pages >= len(units) + 10


# ---------------------------------------------------------------------------------------------- search


def test_search_by_unit_address_redirects_to_the_unit_page(world):
    for q, where in [(f"{CONV}:2", f"/m/01-a/{CONV_SLUG}/u/2.html"), (f"{FC}:3", f"/m/01-a/{FC_SLUG}/u/3.html"),
                     (f"  {FC}:0 ", f"/m/01-a/{FC_SLUG}/u/0.html")]:
        r = world.server.get("/search?q=" + quote(q))
        assert r.status == 303, (q, r.status)
        assert r.headers["Location"] == where, (q, r.headers["Location"])
        assert world.server.get(r.headers["Location"]).status == 200


def test_search_by_address_finds_a_unit_only_the_second_model_lists(world):
    r = world.server.get("/search?q=" + quote(f"{CONV}:5"))  # A lists conv 0..4, B lists 0..5
    assert r.status == 303, r.text[-600:]
    assert r.headers["Location"] == f"/m/02-b/{CONV_SLUG}/u/5.html"


def _hits_shown(text: str, hits) -> None:
    """Each hit of the Python query is on the search page, linked to its unit page."""
    links = set(refs(text).links)
    for h in hits:
        assert f"{h.layer}:{h.unit}" in text, (h.layer, h.unit)
        mslug = "01-a" if h.artifact == "a" or Path(h.artifact).name == "a.h5" else "02-b"
        if mslug == "01-a" and h.layer == CONV and h.unit not in A_UNITS:
            continue
        assert f"/m/{mslug}/{CONV_SLUG if h.layer == CONV else FC_SLUG}/u/{h.unit}.html" in links, (h, links)


def test_search_by_label_lists_the_units_of_the_query(world):
    from scopecli.compare.query import run_query

    for label in ("cat", "ünïcode"):
        hits = run_query([world.a, world.b], label=label, top=30)
        assert hits, label
        r = world.server.get("/search?q=" + quote(label))
        assert r.status == 200
        _hits_shown(r.text, hits)


def test_search_like_lists_the_correlated_units(world):
    from scopecli.compare.query import run_query

    hits = run_query([world.a, world.b], like=f"{world.a}:{CONV}:2", top=30)
    assert hits
    r = world.server.get("/search?q=" + quote(f"like:{CONV}:2"))
    assert r.status == 200
    _hits_shown(r.text, hits)


def test_search_for_nonsense_is_a_page_not_an_error(world):
    for q in ("no-such-label-xyz", "like:nope:1", f"{CONV}:99", "<script>alert(1)</script>"):
        r = world.server.get("/search?q=" + quote(q))
        assert r.status == 200, q
        assert "<script>alert(1)" not in r.text


# ---------------------------------------------------------------------------------------------- JSON


def _roundtrip(obj):
    return json.loads(json.dumps(obj, default=str))


def test_api_models_lists_both(world):
    r = world.server.get("/api/models")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    models = json.loads(r.body)
    assert [(m["index"], m["slug"], m["file"], m["url"]) for m in models] == [
        (0, "01-a", "a.h5", "/m/01-a/"), (1, "02-b", "b.h5", "/m/02-b/")]
    assert models[1]["info"]["model"]["fingerprint"] == OTHER_FINGERPRINT


@pytest.mark.parametrize("m,path_i,addr", [("0", 0, f"{CONV}:3"), ("1", 1, f"{FC}:3"), ("02-b", 1, f"{CONV}:5"),
                                           ("0", 0, f"{FC}:0")])
def test_api_unit_equals_the_python_api(world, m, path_i, addr):
    from scopecli.compare.show import load_unit, unit_json

    r = world.server.get(f"/api/unit?m={m}&u={quote(addr)}")
    assert r.status == 200, r.text
    assert json.loads(r.body) == _roundtrip(unit_json(load_unit([world.a, world.b][path_i], addr)))


def test_api_layer_equals_the_python_api(world):
    from scopecli.compare.show import layer_json, load_layer

    r = world.server.get(f"/api/layer?m=0&layer={FC}")
    assert r.status == 200
    assert json.loads(r.body) == _roundtrip(layer_json(load_layer(world.a, FC)))


@pytest.mark.parametrize("query,kwargs", [("label=cat&top=5", {"label": "cat", "top": 5}),
                                          (f"label={quote('ünïcode')}&top=3", {"label": "ünïcode", "top": 3}),
                                          (f"like={quote(FC + ':1')}&top=7", {"like": "A:" + FC + ":1", "top": 7})])
def test_api_query_equals_the_python_api(world, query, kwargs):
    from scopecli.compare.query import run_query

    if "like" in kwargs:
        kwargs["like"] = kwargs["like"].replace("A", world.a, 1)
    r = world.server.get(f"/api/query?{query}")
    assert r.status == 200, r.text
    want = _roundtrip([h.to_json() for h in run_query([world.a, world.b], **kwargs)])
    assert json.loads(r.body) == want and len(want) == kwargs["top"]


@pytest.mark.parametrize("target", ["/api/unit?m=0&u=nonsense", f"/api/unit?m=0&u={CONV}:99", "/api/unit?m=7&u=x:1",
                                    "/api/layer?m=0&layer=nope", "/api/query?label=x&top=100000",
                                    "/api/query?label=x&top=0", "/api/query?top=5", "/api/query?like=nope:1"])
def test_api_bad_arguments_are_400_json(world, target):
    r = world.server.get(target)
    assert r.status == 400, (target, r.status)
    assert r.headers["Content-Type"] == "application/json"
    assert json.loads(r.body)["error"]


def test_api_unknown_endpoint_is_404_json(world):
    r = world.server.get("/api/nope")
    assert r.status == 404 and json.loads(r.body)["error"]


# ---------------------------------------------------------------------------------------------- caching


def test_etag_gives_304_for_a_page_and_a_picture(world):
    page = world.server.get(f"/m/01-a/{CONV_SLUG}/u/1.html")
    assert page.status == 200 and page.headers["ETag"]
    again = world.server.get(f"/m/01-a/{CONV_SLUG}/u/1.html", {"If-None-Match": page.headers["ETag"]})
    assert again.status == 304 and again.body == b""
    other = world.server.get(f"/m/01-a/{CONV_SLUG}/u/1.html", {"If-None-Match": '"not-it"'})
    assert other.status == 200 and other.body == page.body

    src = next(s for s in refs(page.text).imgs if s.startswith("/img/"))
    pic = world.server.get(src)
    assert pic.status == 200 and pic.headers["ETag"]
    assert "immutable" in pic.headers["Cache-Control"] and "max-age=" in pic.headers["Cache-Control"]
    again = world.server.get(src, {"If-None-Match": f'"x", {pic.headers["ETag"]}'})
    assert again.status == 304 and again.body == b""
    assert world.server.get(src).body == pic.body  # the same URL, the same bytes


def test_head_answers_headers_without_a_body(world):
    get = world.server.get("/index.html")
    head = fetch(urljoin(world.server.url, "/index.html"), method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(get.body))
    assert head.headers["ETag"] == get.headers["ETag"]


# ---------------------------------------------------------------------------------------------- refused


TRAVERSALS = [
    "/../etc/passwd", "/../../../../../../etc/passwd", "/m/..%2f..%2fetc/passwd", "/m/..%2F..%2F..%2Fetc%2Fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd", "/%2E%2E/%2E%2E/%2E%2E/etc/passwd", "/m/01-a/%2e%2e/index.html",
    "/m/01-a/../index.html", "/m/01-a/./index.html", "//etc/passwd", "///etc/passwd", "/img/{token}/../../x",
    "/img/{token}/0/0/..%2f..%2f..%2fetc%2fpasswd", "/index.html%00", "/index.html%00.png", "/%00/etc/passwd",
    "/m\\..\\..\\etc\\passwd", "/m/01-a/..\\..\\a.h5", "/m%5c..%5c..%5cetc%5cpasswd", "/{abs}", "/{abs_q}",
    "/%2F{abs_q}", "/a.h5", "/m/01-a/a.h5", "/m/01-a/../../a.h5", "/static/../a.h5", "/style.css/../a.h5",
    "/.%2e/a.h5", "/%252e%252e/etc/passwd", "/etc/passwd", "/proc/self/environ", "/m/01-a/01-features.1-conv/u/../../../../etc/passwd",
]


@pytest.mark.parametrize("spelling", TRAVERSALS)
def test_path_traversal_is_refused(world, spelling):
    token = world.token
    target = spelling.format(token=token, abs=world.a.lstrip("/"), abs_q=quote(world.a.lstrip("/"), safe=""))
    r = raw(world.server.url, target)
    assert r.status in (400, 404), (target, r.status)
    artifact = Path(world.a).read_bytes()
    assert b"\x89HDF" not in r.body and artifact[:4096] not in r.body
    assert b"root:" not in r.body  # /etc/passwd's first line


def test_too_long_requests_are_414(world):
    assert raw(world.server.url, "/" + "a" * 2100).status == 414
    assert raw(world.server.url, "/m/01-a/" + "x/" * 1100 + "index.html").status == 414
    assert raw(world.server.url, "/index.html?q=" + "a" * 10_000).status == 414
    assert raw(world.server.url, "/search?q=" + "%41" * 3400).status == 414


@pytest.mark.parametrize("target", [f"/m/01-a/{CONV_SLUG}/page-99999.html", f"/m/01-a/{CONV_SLUG}/page-3.html",
                                    f"/m/01-a/{CONV_SLUG}/page-0.html", f"/m/01-a/{CONV_SLUG}/page-1.html",
                                    f"/m/01-a/{CONV_SLUG}/u/5.html", f"/m/01-a/{CONV_SLUG}/u/999999999.html",
                                    f"/m/01-a/{CONV_SLUG}/atlas.html", f"/m/03-c/{CONV_SLUG}/index.html",
                                    "/m/01-a/99-nope/index.html", "/d/02-d/index.html", "/d/01-d/cka-other.png",
                                    "/img/000000000000/0/0/r0", "/img/{token}/0/0/r99", "/img/{token}/5/0/r0",
                                    "/img/{token}/0/9/r0", "/img/{token}/0/0/x0-999999", "/img/{token}/0/0/x1-10",
                                    "/img/{token}/0/0/q1", "/m/01-a"])
def test_unknown_pages_and_pictures_are_404(world, target):
    token = world.token
    r = raw(world.server.url, target.format(token=token))
    assert r.status == 404, (target, r.status)
    assert r.headers["Cache-Control"] == "no-store"


def _meta_csp(text: str) -> str:
    import html as _html
    import re

    m = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)"', text)
    assert m, text[:400]
    return _html.unescape(m.group(1))


@pytest.mark.parametrize("target", ["/nope.html", f"/m/01-a/{CONV_SLUG}/u/999.html"])
def test_error_pages_are_served_pages(world, target):
    """Regression: error pages were rendered outside pages.serving() (the static export's <meta> CSP with file:
    sources and form-action 'none', no search form, footer 'static files, no network')."""
    ok = world.server.get("/index.html")
    r = world.server.get(target)
    assert r.status == 404
    assert _meta_csp(r.text) == _meta_csp(ok.text)  # the policy every served page carries, not the export's
    assert 'action="/search"' in r.text and 'action="/search"' in ok.text


def test_meta_csp_holds_only_directives_a_meta_csp_may_hold(world):
    r = world.server.get("/index.html")
    assert "frame-ancestors" in r.headers["Content-Security-Policy"]  # the header is where it works
    assert "frame-ancestors" not in _meta_csp(r.text)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_writing_methods_are_405(world, method):
    r = raw(world.server.url, "/index.html", method=method, body=b"x=1" if method != "DELETE" else None)
    assert r.status == 405, method
    assert r.headers["Allow"] == "GET, HEAD"
    assert world.server.get("/index.html").status == 200  # still serving after a request body it did not read


def test_wrong_host_header_is_421(world):
    port = world.server.port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"127.0.0.1:{port + 1}",
                 f"10.0.0.1:{port}", ""):
        r = raw(world.server.url, "/index.html", host=host)
        assert r.status == 421, (host, r.status)
        assert b"<html" not in r.body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert raw(world.server.url, "/index.html", host=host).status == 200, host


def test_bad_encodings_are_400(world):
    for target in ("/%ff", "/index.html?%ff=1", "/search?q=%ff%fe"):
        assert raw(world.server.url, target).status == 400, target


# ---------------------------------------------------------------------------------------------- damage


def _damage(src: str, dst: Path, edit) -> str:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return str(dst)


def test_a_damaged_part_is_an_error_and_the_rest_still_answers(world, tmp_path):
    def edit(f):
        conv, fc = h5_layer_key(f, CONV), h5_layer_key(f, FC)
        for which in ("top", "bottom"):  # every example patch of conv becomes zeros
            g = f[f"layers/{conv}/examples/{which}"]
            if "blob" in g:
                g["blob"][...] = 0
        f[f"layers/{conv}/renders/blob"][...] = 0  # and every render of conv
        del f[f"layers/{fc}/strongest/score"]  # fc's label profiles cannot be read

    bad = _damage(world.a, tmp_path / "bad.h5", edit)
    with serving(tmp_path, bad, "--per-page", 4) as s:
        unit = s.get(f"/m/01-bad/{CONV_SLUG}/u/1.html")
        assert unit.status == 200
        imgs = [x for x in refs(unit.text).imgs if x.startswith("/img/")]
        assert len(imgs) == 9 and {s.get(x).status for x in imgs} == {404}  # zeros are never served as a picture
        for page in (f"/m/01-bad/{FC_SLUG}/by-label.html", f"/m/01-bad/{FC_SLUG}/u/1.html"):
            r = s.get(page)
            assert r.status in (404, 500), (page, r.status)
            assert r.headers["Content-Type"].startswith("text/html") and b"Traceback" not in r.body
            assert b'action="/search"' in r.body  # a page of the server (its header, its search box)
        for page in ("/", "/index.html", "/m/01-bad/", f"/m/01-bad/{CONV_SLUG}/index.html",
                     f"/m/01-bad/{CONV_SLUG}/page-2.html", f"/m/01-bad/{FC_SLUG}/index.html",
                     f"/m/01-bad/{FC_SLUG}/atlas.html", "/api/models", f"/api/unit?m=0&u={CONV}:2"):
            assert s.get(page).status == 200, page
        assert unit_links(s.get(f"/m/01-bad/{CONV_SLUG}/index.html").text) == {0, 1, 2, 3}
        atlas = s.get(f"/m/01-bad/{FC_SLUG}/atlas.html")
        assert all(s.get(x).status == 200 for x in refs(atlas.text).imgs if x.startswith("/img/"))
        assert s.proc.poll() is None


def _stats_damaged(world, tmp_path) -> str:
    def edit(f):
        del f[f"layers/{h5_layer_key(f, CONV)}/stats/max"]

    return _damage(world.a, tmp_path / "stats.h5", edit)


def test_damaged_layer_statistics_do_not_take_down_the_index(world, tmp_path):
    with serving(tmp_path, _stats_damaged(world, tmp_path)) as s:
        r = s.get("/index.html")
        assert r.status == 200, r.status


def test_damaged_layer_grid_is_the_same_error_every_time(world, tmp_path):
    with serving(tmp_path, _stats_damaged(world, tmp_path)) as s:
        first = s.get(f"/m/01-stats/{CONV_SLUG}/index.html")
        second = s.get(f"/m/01-stats/{CONV_SLUG}/index.html")
        assert first.status != 200  # the damage is reported...
        assert second.status == first.status, (first.status, second.status)  # ...every time, not a silent empty grid
        assert s.get("/index.html").status == 200


# ---------------------------------------------------------------------------------------------- replaced file


def test_a_file_replaced_while_served_is_shown_whole(tmp_path):
    v1 = make_artifact(tmp_path / "v1.h5", units=[0, 1, 2])
    v2 = make_artifact(tmp_path / "v2.h5", units=[0, 1, 2, 3], seed=5)  # one more unit, other pictures
    with open_artifact(v1) as art:
        old_render = art.unit(CONV, 0).renders[0].encoded
    with open_artifact(v2) as art:
        new_render = art.unit(CONV, 0).renders[0].encoded
        new_stored = {r.encoded for r in art.unit(CONV, 3).renders}
    assert old_render != new_render
    live = tmp_path / "live.h5"
    shutil.copy(v1, live)
    with serving(tmp_path, live) as s:
        page = s.get(f"/m/01-live/{CONV_SLUG}/u/0.html")
        old_src = refs(page.text).imgs[0]
        assert s.get(old_src).body == old_render
        assert s.get(f"/m/01-live/{CONV_SLUG}/u/3.html").status == 404
        assert unit_links(s.get(f"/m/01-live/{CONV_SLUG}/index.html").text) == {0, 1, 2}

        shutil.copy(v2, tmp_path / "live.h5.tmp")
        os.replace(tmp_path / "live.h5.tmp", live)  # a render finishing: the file replaced atomically

        assert unit_links(s.get(f"/m/01-live/{CONV_SLUG}/index.html").text) == {0, 1, 2, 3}
        unit3 = s.get(f"/m/01-live/{CONV_SLUG}/u/3.html")
        assert unit3.status == 200 and s.get(refs(unit3.text).imgs[0]).body in new_stored
        page2 = s.get(f"/m/01-live/{CONV_SLUG}/u/0.html")
        new_src = refs(page2.text).imgs[0]
        assert new_src != old_src and s.get(new_src).body == new_render
        stale = s.get(old_src)  # a picture URL of the old page: never bytes of another version
        assert stale.status == 404 and b"reload" in stale.body
        assert s.get(new_src).headers["Cache-Control"].endswith("immutable")

        (tmp_path / "live.h5.tmp").write_bytes(b"\x89HDF\r\n\x1a\n" + b"half written" * 100)
        os.replace(tmp_path / "live.h5.tmp", live)  # a file that cannot be read: a 503 page, never old bytes
        for path in ("/index.html", new_src, f"/m/01-live/{CONV_SLUG}/u/0.html"):
            r = s.get(path)
            assert r.status == 503, (path, r.status)
            assert r.headers["Content-Type"].startswith("text/html") and b"reload" in r.body
        shutil.copy(v1, tmp_path / "live.h5.tmp")
        os.replace(tmp_path / "live.h5.tmp", live)  # readable again: answered again, under a new token
        assert unit_links(s.get(f"/m/01-live/{CONV_SLUG}/index.html").text) == {0, 1, 2}
        back = refs(s.get(f"/m/01-live/{CONV_SLUG}/u/0.html").text).imgs[0]
        assert back not in (old_src, new_src) and s.get(back).body == old_render
        assert s.get(old_src).status == 404 and s.get(new_src).status == 404


# ---------------------------------------------------------------------------------------------- load


def test_concurrent_requests_all_get_their_bytes(world):
    jobs = []
    for path in ("/index.html", f"/m/01-a/{CONV_SLUG}/index.html", f"/m/02-b/{FC_SLUG}/u/2.html", "/api/models",
                 f"/m/01-a/{CONV_SLUG}/u/4.html", "/d/01-d/index.html", "/style.css"):
        r = world.server.get(path)
        assert r.status == 200
        jobs.append((path, r.body))
        if path.endswith(".html"):
            for src in refs(r.text).imgs:
                if src.startswith("/img/"):
                    jobs.append((src, world.server.get(src).body))
    pics = [j for j in jobs if j[0].startswith("/img/")]
    assert len(pics) > 20 and all(body in world.stored[int(p.split("/")[3])] for p, body in pics)

    def worker(i: int) -> list:
        bad = []
        for k in range(10):
            path, want = jobs[(i * 7 + k * 3) % len(jobs)]
            r = world.server.get(path)
            if r.status != 200 or r.body != want:
                bad.append((path, r.status))
        return bad

    with ThreadPoolExecutor(16) as pool:
        bad = [x for lst in pool.map(worker, range(16)) for x in lst]
    assert bad == []
    assert world.server.proc.poll() is None


# ---------------------------------------------------------------------------------------------- command line


def test_missing_file_is_a_one_line_error(scope_cli, tmp_path):
    assert_one_line_error(scope_cli("serve", tmp_path / "missing.h5"), contains="missing.h5")


def test_bad_port_is_a_one_line_error(scope_cli, world):
    assert_one_line_error(scope_cli("serve", world.a, "--port", 70000), contains="70000")
    assert_one_line_error(scope_cli("serve", world.a, "--port", -1))


def test_bad_diff_and_same_file_twice_are_one_line_errors(scope_cli, world, tmp_path):
    assert_one_line_error(scope_cli("serve", world.a, "--diff", tmp_path / "nope.h5"), contains="nope.h5")
    assert_one_line_error(scope_cli("serve", world.a, world.a), contains="twice")
    assert_one_line_error(scope_cli("serve", world.a, "--per-page", 0))


def test_listening_on_all_interfaces_warns(world, tmp_path):
    s = Served([world.a, "--host", "0.0.0.0"], tmp_path / "all.log")
    try:
        r = fetch(f"http://127.0.0.1:{s.port}/index.html")  # any Host header is answered there
        assert r.status == 200
    finally:
        code = s.stop()
    err = [line for line in s.stderr().splitlines() if line.strip()]
    assert code == 0, (code, err)
    assert len(err) == 1 and err[0].startswith("warning:") and "0.0.0.0" in err[0], err


def test_plain_startup_line_and_stop(world, tmp_path):
    """Without --json: 'serving N artifact(s) at URL  (Ctrl-C stops)', then 'stopped' after Ctrl-C."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "scopecli", "serve", world.a, world.b, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
        assert first.startswith("serving 2 artifact(s) at http://127.0.0.1:") and first.rstrip().endswith("(Ctrl-C stops)")
        url = first.split(" at ", 1)[1].split()[0]
        assert fetch(url).status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.strip() == "stopped" and err == ""


def test_dropped_connections_leave_no_traceback_and_the_server_answers(world):
    """Browsers reset connections (a closed tab, a cancelled picture): the server says nothing and goes on."""
    import socket
    import struct

    parts = urlsplit(world.server.url)
    for partial in (b"GET /index.html HTTP/1.1\r\nHo", b"GET /m/01-a/ HTTP/1.1\r\nHost: x\r\n\r\n", b""):
        s = socket.create_connection((parts.hostname, parts.port))
        s.sendall(partial)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        s.close()
    assert world.server.get("/index.html").status == 200
    err = world.server.stderr()
    assert "Traceback" not in err and "Exception occurred" not in err, err


@pytest.mark.parametrize("fixture", ["v0.1.0/tiny.h5", "artifact-1.0.h5", "artifact-1.1.h5"])
def test_old_files_serve_every_stored_patch_in_order(tmp_path, fixture):
    """Format 1.0 keeps the top and the bottom patches in two byte arrays (1.1 shares one): every example of
    every unit page is its own stored bytes, top then bottom."""
    path = tmp_path / Path(fixture).name
    shutil.copy(Path(__file__).parent / "fixtures" / fixture, path)
    with serving(tmp_path, path) as s, open_artifact(path) as art:
        pages = 0
        for j, layer in enumerate(art.layers):
            units = np.nonzero(art.examples_present(layer, "top") | art.examples_present(layer, "bottom"))[0]
            for u in units[:6]:
                page = s.get(f"/m/01-{slug(Path(fixture).stem)}/{j + 1:02d}-{slug(layer)}/u/{u}.html")
                assert page.status == 200, (layer, u)
                view = art.unit(layer, int(u))
                want = [e.encoded for w in ("top", "bottom") for e in view.examples.get(w, []) if e.encoded]
                patches = re.findall(r'<figure class="ex"[^>]*>(?:<div class="patch">)?<img[^>]*?src="([^"]+)"', page.text)
                assert [s.get(src).body for src in patches] == want, (layer, u)
                pages += 1
        assert pages >= 4
