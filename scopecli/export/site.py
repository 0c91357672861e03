"""`scope export`: write artifacts (and diff files) as a static, offline, Microscope-like HTML gallery.

Why this shape: researchers look at units in a browser and share the folder, so the folder must not
be much bigger than the artifact it shows. The pages come from `build.py` (the same page objects
`scope serve` answers with); this module only decides where pictures live. Pictures are copied byte
for byte from the artifact (no re-encoding) wherever a browser shows them as stored (8-bit RGB and gray;
pictures of N channels, 16 bits or small inputs are their display composite, see build.ImageRef),
content-addressed: a picture more than one page shows (a grid thumbnail, a patch several units share) is
written once as `i/<h[:2]>/<h>.<ext>` (h: the first 20 hex digits of its sha256),
and a picture only one page shows is inlined in that page as a `data:` URI, as are the tiny heatmap
overlays, so the site holds a few files per unit. Pages are plain HTML + one stylesheet so the site
works from `file://`. The site is written into a staging folder and swapped in at the end, so a
failed export leaves the previous gallery as it was (see `folder.py`).

Layout of SITE/: the URL layout of `build.py` (with m/<model>/classes/ for files with effects), plus style.css, i/ (pictures), d/<NN-diff>/cka-*.png
and .scope-export.json (the marker listing every file written).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from scopecli.artifact.images import image_kind
from scopecli.core.errors import ScopeError
from scopecli.core.version import __version__
from scopecli.export import folder
from scopecli.export.build import PER_PAGE, ImageRef, SiteBuilder, data_uri
from scopecli.export.pages import (atlas_page, class_page, classes_page, comparison_page, index_page, layer_page,
    model_page)

STATIC = Path(__file__).with_name("static")
EXT = {"png": "png", "jpeg": "jpg"}
NAME_HEX = 20  # a picture's file name: the first 80 bits of its sha256 (a clash within one site: never in practice)


@dataclass
class _Counts:
    pages: int = 0
    images: int = 0
    bytes: int = 0
    units: int = 0
    links: int = 0
    inlined: int = 0


class _Writer:
    """Files of one export: pages, and pictures content-addressed under i/ (or inlined when one page shows them)."""

    def __init__(self, root: Path, counts: _Counts, inline: bool = True):
        self.root, self.counts, self.inline = root, counts, inline
        self._src: dict[str, str | None] = {}  # picture key -> src
        self._written: set[str] = set()

    def write(self, rel: str, data: bytes | str, image: bool = False) -> None:
        # "replace": text read from a damaged file may hold lone surrogates (undecodable bytes); a page shows "?"
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        self.counts.bytes += len(raw)
        if image:
            self.counts.images += 1
        elif rel.endswith(".html"):
            self.counts.pages += 1

    def image(self, ref: ImageRef) -> str | None:
        if ref.key in self._src:
            return self._src[ref.key]
        try:
            data = ref.load()
        except ScopeError:
            data = b""  # a damaged picture: the page shows a blank box, the rest of the site is written
        kind = image_kind(data) if data else None
        if kind is None:
            src = None
        elif self.inline and not ref.shared:
            self.counts.inlined += 1
            return data_uri(data)  # shown once: not remembered
        else:
            digest = hashlib.sha256(data).hexdigest()[:NAME_HEX]
            src = f"i/{digest[:2]}/{digest}.{EXT[kind]}"
            if src not in self._written:
                self._written.add(src)
                self.write(src, data, image=True)
        self._src[ref.key] = src
        return src


class _NoBar:
    def advance(self, n: float = 1, **_):
        pass


def export_site(artifact_paths, out_dir, diff_paths=(), progress=None, per_page: int = PER_PAGE,
                inline: bool = True, display: str | None = None) -> dict:
    """Write the gallery of `artifact_paths` (and unit links from `diff_paths`) to `out_dir`.

    `progress`: None for silence, or a factory like `scopecli.core.progress.progress` — called as
    `progress(total, description)` and used as a context manager whose value has `.advance(n)`.
    `inline`: pictures only one page shows go into that page (False: every picture is a file).
    `display`: `--display-channels` (channels shown as red, green, blue) instead of each file's recorded mapping.
    Returns a summary: site, index, url, models, layers, units, pages, images, bytes, diffs, links, seconds.
    `out_dir` may be new, empty, or a previous scope export (replaced); anything else is refused.
    """
    t0 = time.perf_counter()
    paths = [os.fspath(p) for p in artifact_paths]
    out = _checked_target(paths, out_dir, per_page)
    folder.check_replaceable(out)
    staging = None
    counts = _Counts()
    writer = None
    site = SiteBuilder(paths, diff_paths, per_page=per_page, display=display)
    try:
        staging = folder.new_staging(out)
        writer = _Writer(staging, counts, inline)
        site.images = writer.image
        _write_models(site, writer, progress)
        _write_front(site, writer)
        folder.write_marker(staging, {"writer": f"scope {__version__}", "artifacts": [Path(p).name for p in paths]})
        folder.swap_in(staging, out)
        staging = None
    finally:
        if staging is not None:
            folder.discard(staging)
        site.close()
    index = out / "index.html"
    return {
        "site": str(out), "index": str(index), "url": index.resolve().as_uri(),
        "models": len(site.models), "layers": sum(1 for mv in site.models for lv in mv.layers if lv.has_page),
        "units": counts.units, "pages": counts.pages, "images": counts.images, "inlined": counts.inlined,
        "bytes": counts.bytes, "diffs": len(site.diffs), "links": counts.links,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _checked_target(paths: list[str], out_dir, per_page) -> Path:
    """The site folder, once the arguments are known to make sense (one-line errors otherwise)."""
    if not paths:
        raise ScopeError("give at least one artifact file to export")
    if int(per_page) < 1:
        raise ScopeError(f"per_page must be at least 1, got {per_page}")
    out = Path(os.fspath(out_dir))
    if str(out) in ("", ".") or out.resolve() == Path(out.resolve().anchor):
        raise ScopeError(f"{out_dir}: give a folder for the site, e.g. -o site/")
    return out


def _write_models(site: SiteBuilder, w: _Writer, progress) -> None:
    """Every model's layers, unit pages and model page under m/, one progress step per listed unit."""
    total = sum(lv.listed_units for mv in site.models for lv in mv.layers)
    bar_cm = progress(total, "export") if progress is not None else None
    bar = bar_cm.__enter__() if bar_cm is not None else _NoBar()
    try:
        for mv in site.models:
            for lv in mv.layers:
                site.ensure_layer(mv, lv)
            for lv in mv.layers:
                _write_layer(site, w, mv, lv, bar)
            _write_classes(site, w, mv)
            w.write(f"m/{mv.slug}/index.html", model_page(mv))
    finally:
        if bar_cm is not None:
            bar_cm.__exit__(None, None, None)


def _write_layer(site: SiteBuilder, w: _Writer, mv, lv, bar) -> None:
    """A layer's unit pages, grid pages (by unit and by label) and atlas page; nothing for an empty layer."""
    if not lv.has_page:
        return
    base = f"m/{mv.slug}/{lv.slug}"
    for u in site.listed(mv, lv):
        page = site.unit_page(mv, lv, int(u))
        w.write(f"{base}/u/{page.unit}.html", page.html())
        w.counts.units += 1
        w.counts.links += len(page.links)
        bar.advance()
    if lv.atlas is not None:
        w.write(f"{base}/atlas.html", atlas_page(mv, lv))
    for p in range(1, lv.pages + 1):
        w.write(f"{base}/{lv.page_file(p)}", layer_page(mv, lv, p, site.per_page))
    for p in range(1, lv.label_pages + 1):
        w.write(f"{base}/{lv.page_file(p, 'label')}", layer_page(mv, lv, p, site.per_page, "label"))


def _write_classes(site: SiteBuilder, w: _Writer, mv) -> None:
    """A model with effects (format 1.3): its class index and a page per class under m/<model>/classes/."""
    if not mv.has_effects:
        return
    site.ensure_classes(mv)
    for c in mv.classes:
        w.write(f"m/{mv.slug}/classes/{c.file}", class_page(mv, c, site.class_layers(mv, c)))
    w.write(f"m/{mv.slug}/classes/index.html", classes_page(mv))


def _write_front(site: SiteBuilder, w: _Writer) -> None:
    """The comparison pages, the index and the stylesheet."""
    for k, view in enumerate(site.comparisons):
        site.comparison(k)
        for name, data in site.comparison_pngs[k].items():
            w.write(f"d/{view.slug}/{name}", data, image=True)
        w.write(f"d/{view.slug}/index.html", comparison_page(view))
    w.write("index.html", index_page(site.models, site.diff_rows()))
    w.write("style.css", (STATIC / "style.css").read_bytes())
