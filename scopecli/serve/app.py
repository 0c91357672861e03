"""`scope serve`'s answers: a request (method, path, query, headers) in, a response out; no sockets here.

Why this shape: the gallery pages come from the same builder as the static export (`export/build.py`),
built when asked for, so a whole model is browsable the moment the server starts. Everything reachable
is a route matched by a strict pattern: slugs are looked up in the builder's lists and picture keys
are parsed into numbers checked against the artifact's index tables, so no URL ever becomes a file
path. Only GET and HEAD; only the named files; sizes and page numbers bounded; a damaged part of a file
is an error page for that part. The artifacts are re-checked (size, time, inode) at each request: a file
replaced on disk (a render adding units) is reopened whole, and picture URLs carry a token of the
files' state, so a page never mixes two versions and a picture URL's bytes never change (immutable).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote

from scopecli.compare.query import class_report, run_query
from scopecli.compare.show import layer_info, layer_json, unit_info, unit_json
from scopecli.core.errors import ScopeError
from scopecli.core.units import parse_unit_address
from scopecli.export import pages
from scopecli.export.build import PER_PAGE, ImageRef, SiteBuilder
from scopecli.export.names import fmt
from scopecli.artifact.images import image_kind

MAX_PATH = 1024  # longest request path answered
MAX_QUERY = 512  # longest query string answered
MAX_TOP = 100  # most hits a search or /api/query returns
STATIC = Path(pages.__file__).with_name("static")
CONTENT = {"png": "image/png", "jpeg": "image/jpeg"}
_SLUG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}"
_LAYER_PAGE = re.compile(rf"^/m/({_SLUG})/({_SLUG})/(index|page-(\d{{1,6}})|by-label|by-label-page-(\d{{1,6}})|atlas)\.html$")
_UNIT_PAGE = re.compile(rf"^/m/({_SLUG})/({_SLUG})/u/(\d{{1,9}})\.html$")
_MODEL_PAGE = re.compile(rf"^/m/({_SLUG})/(?:index\.html)?$")
_CLASS_PAGE = re.compile(rf"^/m/({_SLUG})/classes/(index|\d{{1,9}}-[A-Za-z0-9._-]{{1,60}})\.html$")  # format 1.3
_DIFF = re.compile(rf"^/d/({_SLUG})/(index\.html|cka-(?:linear|debiased)\.png)$")
_IMG = re.compile(r"^/img/([0-9a-f]{12})/(\d{1,4}/\d{1,5}/[a-z0-9-]{1,40})$")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict = field(default_factory=dict)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _html(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8", "replace"))


def _error(status: int, title: str, message: str) -> Response:
    with pages.serving():
        return _html(status, pages.error_page(title, message))


def _json(obj, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json")


def _state(paths: list[str]) -> tuple:
    """What identifies the files' current versions (a replaced file has a new inode or time)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None, None, None))
    return tuple(out)


class Catalog:
    """The served files and the builder of their current version, swapped whole when a file changes."""

    def __init__(self, artifact_paths, diff_paths=(), per_page: int = PER_PAGE, display: str | None = None):
        self.paths = [os.fspath(p) for p in artifact_paths]
        self.diff_paths = [os.fspath(p) for p in diff_paths]
        self.per_page = per_page
        self.display = display  # --display-channels for every model (None: each file's recorded mapping)
        self.lock = threading.RLock()  # h5py handles and the builder's caches are used by one thread at a time
        self.builder: SiteBuilder | None = None
        self.token = ""
        self._state = None
        self.reopen()

    def reopen(self) -> None:
        state = _state(self.paths + self.diff_paths)
        builder = SiteBuilder(self.paths, self.diff_paths, per_page=self.per_page, display=self.display)
        old, self.builder, self._state = self.builder, builder, state
        self.token = hashlib.sha256(repr(state).encode()).hexdigest()[:12]
        builder.images = self._image_src
        if old is not None:
            old.close()

    def refresh(self) -> bool:
        """Reopen when a file changed on disk; True when it did."""
        if _state(self.paths + self.diff_paths) == self._state:
            return False
        self.reopen()
        return True

    def _image_src(self, ref: ImageRef) -> str:
        return f"/img/{self.token}/{ref.key}"

    def close(self) -> None:
        if self.builder is not None:
            self.builder.close()


class App:
    """Routes of `scope serve`. `handle` never raises: every failure is a response."""

    def __init__(self, catalog: Catalog, allowed_hosts: set[str] | None = None):
        self.catalog = catalog
        self.allowed_hosts = allowed_hosts  # None: any Host header (tests); else the names this server answers to

    # ------------------------------------------------------------------------------------------ entry

    def handle(self, method: str, target: str, headers: dict | None = None) -> Response:
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        try:
            if method not in ("GET", "HEAD"):
                return Response(405, b"read-only: GET and HEAD only\n", "text/plain", {"Allow": "GET, HEAD"})
            if self.allowed_hosts is not None and headers.get("host", "").lower() not in self.allowed_hosts:
                return Response(421, b"unknown Host header\n", "text/plain")  # DNS rebinding: another site's name
            raw_path, _, raw_query = target.partition("?")
            if len(raw_path) > MAX_PATH or len(raw_query) > MAX_QUERY:
                return Response(414, b"request too long\n", "text/plain")
            path = unquote(raw_path, errors="strict")
            if "\x00" in path or "\\" in path or "/." in path or "//" in path:
                return self._not_found()
            if path.endswith("/") and path.count("/") == 4 and path.startswith("/m/"):  # a layer folder
                path += "index.html"
            query = {k: v[0] for k, v in parse_qs(raw_query, max_num_fields=8, errors="strict").items()}
            with self.catalog.lock:
                try:
                    self.catalog.refresh()
                except ScopeError as exc:
                    return _error(503, "file unreadable", f"{exc} (it may be being rewritten: reload)")
                resp = self._route(path, query)
        except (UnicodeDecodeError, ValueError):
            return Response(400, b"bad request\n", "text/plain")
        except ScopeError as exc:
            resp = _error(500, "cannot show this part of the file", str(exc))
        except Exception as exc:  # a damaged file can raise anything from h5py: one line, server stays up
            line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            resp = _error(500, "cannot show this part of the file", f"{type(exc).__name__}: {line}")
        return self._finish(resp, headers)

    def _finish(self, resp: Response, headers: dict) -> Response:
        h = resp.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        if resp.content_type.startswith("text/html"):
            h.setdefault("Content-Security-Policy", pages.SERVE_CSP + "; frame-ancestors 'none'")  # header only
            h.setdefault("X-Frame-Options", "DENY")
        if resp.status == 200:
            h.setdefault("ETag", _etag(resp.body))
            h.setdefault("Cache-Control", "no-cache")
            inm = headers.get("if-none-match")
            if inm and h["ETag"] in [x.strip() for x in inm.split(",")]:
                return Response(304, b"", resp.content_type, {k: v for k, v in h.items()})
        else:
            h.setdefault("Cache-Control", "no-store")
        return resp

    def _not_found(self, what: str = "no such page") -> Response:
        return _error(404, "not found", what)

    # ------------------------------------------------------------------------------------------ routes

    def _route(self, path: str, q: dict) -> Response:
        b = self.catalog.builder
        if path in ("/", "/index.html"):
            for m in b.models:
                b.ensure_model(m, layers=4)  # the index card's thumbnails; a damaged layer shows none
            with pages.serving():
                return _html(200, pages.index_page(b.models, b.diff_rows()))
        if path == "/favicon.ico":  # browsers ask for it on every page: nothing, not a 404 to log
            return Response(204, b"", "image/x-icon", {"Cache-Control": "public, max-age=86400"})
        if path == "/style.css":
            return Response(200, (STATIC / "style.css").read_bytes(), "text/css; charset=utf-8")
        if path.startswith("/img/"):
            return self._image(path)
        if path.startswith("/api/"):
            return self._api(path, q)
        if path == "/search":
            return self._search(q)
        mt = _CLASS_PAGE.match(path)
        if mt:
            return self._class(mt.group(1), mt.group(2))
        mt = _UNIT_PAGE.match(path)
        if mt:
            return self._unit(*mt.groups())
        mt = _LAYER_PAGE.match(path)
        if mt:
            return self._layer(mt.group(1), mt.group(2), mt.group(3), mt.group(4) or mt.group(5))
        mt = _MODEL_PAGE.match(path)
        if mt:
            m = b.model(mt.group(1))
            if m is None:
                return self._not_found()
            b.ensure_model(m)  # a damaged layer's row shows no preview; its own page says what is wrong
            with pages.serving():
                return _html(200, pages.model_page(m))
        mt = _DIFF.match(path)
        if mt:
            return self._diff(mt.group(1), mt.group(2))
        return self._not_found()

    def _layer_of(self, mslug: str, lslug: str):
        b = self.catalog.builder
        m = b.model(mslug)
        lv = b.layer_view(m, lslug) if m is not None else None
        return m, lv

    def _layer(self, mslug: str, lslug: str, kind: str, page: str | None) -> Response:
        b = self.catalog.builder
        m, lv = self._layer_of(mslug, lslug)
        if lv is None:
            return self._not_found()
        b.ensure_tiles(m, lv)
        b.ensure_extras(m, lv)
        if not lv.has_page:
            return self._not_found("nothing is stored for this layer")
        with pages.serving():
            if kind == "atlas":
                return _html(200, pages.atlas_page(m, lv)) if lv.atlas is not None else self._not_found()
            sort = "label" if kind.startswith("by-label") else ""
            if sort:
                b.ensure_labels(m, lv)
            n = int(page) if page else 1
            if n < 1 or n > lv.pages_of(sort) or (page and n == 1):
                return self._not_found(f"no page {n} (this layer has {lv.pages_of(sort)})")
            return _html(200, pages.layer_page(m, lv, n, b.per_page, sort))

    def _unit(self, mslug: str, lslug: str, unit: str) -> Response:
        b = self.catalog.builder
        m, lv = self._layer_of(mslug, lslug)
        if lv is None:
            return self._not_found()
        p = b.unit_page(m, lv, int(unit))
        if p is None:
            return self._not_found(f"{lv.name}:{unit} has no render or examples in this file")
        with pages.serving():
            return _html(200, p.html())

    def _class(self, mslug: str, name: str) -> Response:
        """A model's class index or one class page (files with effects): the name is looked up in the model's list."""
        b = self.catalog.builder
        m = b.model(mslug)
        if m is None or not m.has_effects:
            return self._not_found("no class pages: this file has no effects (scope effects FILE --data DIR)"
                                   if m is not None else "no such page")
        b.ensure_classes(m)
        with pages.serving():
            if name == "index":
                return _html(200, pages.classes_page(m))
            c = b.class_by_slug(m, name)
            if c is None:
                return self._not_found("no such class in this file")
            return _html(200, pages.class_page(m, c, b.class_layers(m, c)))

    def _diff(self, dslug: str, name: str) -> Response:
        b = self.catalog.builder
        k = next((i for i, v in enumerate(b.comparisons) if v.slug == dslug), None)
        if k is None:
            return self._not_found()
        view = b.comparison(k)
        if name == "index.html":
            with pages.serving():
                return _html(200, pages.comparison_page(view))
        data = b.comparison_pngs[k].get(name)
        return Response(200, data, "image/png") if data else self._not_found()

    def _image(self, path: str) -> Response:
        mt = _IMG.match(path)
        if mt is None:
            return self._not_found()
        if mt.group(1) != self.catalog.token:
            return self._not_found("the file changed since this page was made: reload the page")
        data = self.catalog.builder.image(mt.group(2))
        kind = image_kind(data) if data else None
        if kind is None:
            return self._not_found("no such picture")
        return Response(200, data, CONTENT[kind], {"Cache-Control": "public, max-age=31536000, immutable",
                                                   "ETag": _etag(data)})

    # ------------------------------------------------------------------------------------------ search

    def _find_unit(self, text: str, model: str | None = None):
        """(model, layer view, unit) for an address like `layer4.2:117` (`L@S:i`) in the served files, or None."""
        layer, unit = parse_unit_address(text)
        b = self.catalog.builder
        found = []
        for m in b.models:
            if model is not None and model not in (m.slug, str(m.index)):
                continue
            lv = next((x for x in m.layers if x.name == layer), None)
            if lv is not None and 0 <= unit < lv.units:
                found.append((m, lv, unit))
        listed = [f for f in found if self._unit_url(*f)]  # a model that shows it first
        return (listed or found or [None])[0]

    def _unit_url(self, m, lv, unit: int) -> str | None:
        listed = self.catalog.builder.position(m, lv, unit) is not None
        return f"/m/{m.slug}/{lv.slug}/u/{unit}.html" if listed else None

    def _query(self, q: dict) -> tuple[str, list]:
        """Run `scope query` on the served files: ('label'|'like', hits). ScopeError on a bad query."""
        top = q.get("top", "20")
        if not top.isdigit() or not 1 <= int(top) <= MAX_TOP:
            raise ScopeError(f"top must be 1..{MAX_TOP}")
        if "label" in q:
            return "label", run_query(self.catalog.paths, label=q["label"][:200], top=int(top))
        if "like" in q:
            found = self._find_unit(q["like"], q.get("m"))
            if found is None:
                raise ScopeError(f"no unit {q['like'][:80]} in the served files")
            m, lv, unit = found
            like = f"{self.catalog.paths[m.index]}:{lv.name}:{unit}"
            return "like", run_query(self.catalog.paths, like=like, top=int(top))
        raise ScopeError("give label=TEXT or like=LAYER:UNIT")

    def _class_hits(self, text: str) -> list[tuple[str, str]]:
        """(label, url) of the class pages whose class name is or contains `text` (files with effects)."""
        b = self.catalog.builder
        try:
            found = b.find_classes(text)
        except ScopeError:  # a damaged effects section: the search still answers
            return []
        many = len(b.models) > 1
        return [(f"{c.name} ({m.name})" if many else c.name, f"/m/{m.slug}/classes/{c.file}") for m, c in found]

    def _search(self, q: dict) -> Response:
        text = (q.get("q") or "").strip()[:200]
        if not text:
            return self._search_page(text, "search", [], "type a unit address, a label, or like:ADDRESS")
        if text.lower().startswith("like:"):
            q = {"like": text[5:].strip(), "top": "30"}
        else:
            try:
                found = self._find_unit(text)
            except ScopeError:
                found = None
            if found is not None:
                url = self._unit_url(*found)
                if url:
                    return Response(303, b"", "text/plain", {"Location": url})
                m, lv, unit = found
                return self._search_page(text, text, [], f"{lv.name}:{unit} of {m.name} has no render or examples stored")
            q = {"label": text, "top": "30"}
        classes = self._class_hits(text) if "label" in q else []
        try:
            kind, hits = self._query(q)
        except ScopeError as exc:
            return self._search_page(text, "search", [], str(exc), classes)
        title = f"units like {q['like']}" if kind == "like" else f"units for label “{q['label']}”"
        note = ("score: correlation of probe activations with the unit (scope query --like)" if kind == "like"
                else "score: lift score (scope query --label): how much more often the unit's top examples are this "
                     "class than the dataset is, shrunk toward 1 when few examples are")
        return self._search_page(text, title, [self._hit(h) for h in hits], note, classes)

    def _hit(self, h) -> pages.Hit:
        b = self.catalog.builder
        real = os.path.realpath(h.artifact)
        m = next((m for m, p in zip(b.models, b.paths) if os.path.realpath(p) == real), None)
        lv = next((x for x in m.layers if x.name == h.layer), None) if m is not None else None
        link = b.unit_link(m, h.layer, h.unit) if lv is not None else None  # (page url, thumbnail src, w, h)
        url = self._unit_url(m, lv, h.unit) if link else None
        thumb, w, hh = link[1:] if link else ("", 0, 0)
        top = f"most common class of its top examples: {h.top_label} ({fmt(h.top_label_frac, '.0%')})" if h.top_label else ""
        if h.purity is not None:  # a label query: how the unit answers it, then what it is mostly
            detail = f"{fmt(h.purity, '.0%')} of its top examples match, lift {fmt(h.lift, '.2f')}" + (f" · {top}" if top else "")
        else:
            detail = top
        name = m.name if m is not None else Path(h.artifact).name
        return pages.Hit(f"{name} · {h.layer}:{h.unit}", url, thumb, w, hh, fmt(h.score, ".3g"), detail)

    def _search_page(self, text: str, title: str, hits: list, note: str, classes=()) -> Response:
        with pages.serving():
            return _html(200, pages.search_page(text, title, hits, note, classes))

    # ------------------------------------------------------------------------------------------ JSON

    def _api(self, path: str, q: dict) -> Response:
        b = self.catalog.builder
        try:
            if path == "/api/models":
                return _json([{"index": m.index, "slug": m.slug, "name": m.name, "file": m.file, "url": f"/m/{m.slug}/",
                               "info": m.info} for m in b.models])
            if path == "/api/unit":
                m = self._model_arg(q)
                return _json(unit_json(unit_info(b.arts[m.index], q.get("u", ""), path=b.paths[m.index])))
            if path == "/api/layer":
                m = self._model_arg(q)
                return _json(layer_json(layer_info(b.arts[m.index], q.get("layer", ""), path=b.paths[m.index])))
            if path == "/api/query":
                _, hits = self._query(q)
                return _json([h.to_json() for h in hits])
            if path == "/api/class":  # format 1.3: what `scope query --class` answers
                m = self._model_arg(q)
                top = q.get("top", "20")
                if not top.isdigit() or not 1 <= int(top) <= MAX_TOP:
                    raise ScopeError(f"top must be 1..{MAX_TOP}")
                layer = q.get("layer")
                return _json(class_report(b.arts[m.index], q.get("c", "")[:200], [layer[:200]] if layer else None,
                                          int(top), path=b.paths[m.index]))
        except ScopeError as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"error": "no such endpoint: /api/models, /api/unit, /api/layer, /api/query, /api/class"}, 404)

    def _model_arg(self, q: dict):
        b = self.catalog.builder
        want = q.get("m", "0")
        m = next((m for m in b.models if want in (m.slug, str(m.index))), None)
        if m is None:
            raise ScopeError(f"no served model {want[:40]!r} (m=0..{len(b.models) - 1} or a slug)")
        return m

