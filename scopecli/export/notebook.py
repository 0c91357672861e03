"""Notebook display: an artifact, a unit and a render shown inline in Jupyter, from the gallery's own pages.

Why here: a researcher in a notebook should see what the gallery shows without exporting anything, and a third
copy of the layout would drift. So a unit's cell is the gallery's unit page (`SiteBuilder.unit_page`) rendered
with the `notebook.html` layout (its main block, the stylesheet scoped to one element) and every picture inlined
as a data URI. The reader's views (`scopecli.artifact.reader`) know nothing of pages; importing `scopecli`
registers these functions as their `_repr_html_` (`reader.register_repr`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import tempfile

from scopecli.artifact import reader
from scopecli.artifact.difffile import save_diff
from scopecli.artifact.images import image_kind
from scopecli.core.errors import ScopeError
from scopecli.export import pages
from scopecli.export.build import ImageRef, SiteBuilder

_MIME = {"png": "image/png", "jpeg": "image/jpeg"}


def _data_uri(ref: ImageRef) -> str:
    data = ref.load()
    return f"data:{_MIME.get(image_kind(data) or 'png', 'image/png')};base64,{base64.b64encode(data).decode('ascii')}"


def _builder(path: str) -> SiteBuilder:
    return SiteBuilder([path], images=_data_uri)


def unit_html(path: str, layer: str, unit: int) -> str:
    """The gallery's unit page of `layer:unit` of the artifact at `path`, as one notebook cell."""
    b = _builder(path)
    try:
        m = b.models[0]
        lv = next((v for v in m.layers if v.name == layer), None)
        if lv is None:
            raise ScopeError(f"{path}: layer {layer} has no renders or examples to show")
        page = b.unit_page(m, lv, int(unit))
        if page is None:
            return f"<p>{html.escape(layer)}:{int(unit)} has no render or examples in this file</p>"
        with pages.in_notebook():
            return page.html()
    finally:
        b.close()


def layer_html(path: str, layer: str, page: int = 1) -> str:
    """The gallery's grid of a layer's units (thumbnails with unit addresses; one grid page), as one notebook cell."""
    b = _builder(path)
    try:
        m = b.models[0]
        lv = next((v for v in m.layers if v.name == layer), None)
        if lv is None:
            return f"<p>{html.escape(layer)} has no renders or examples to show</p>"
        b.ensure_tiles(m, lv)
        b.ensure_extras(m, lv)
        if not lv.has_page:
            return f"<p>{html.escape(layer)}: nothing is stored for this layer</p>"
        with pages.in_notebook():
            return pages.layer_page(m, lv, max(1, min(int(page), lv.pages)), b.per_page)
    finally:
        b.close()


def artifact_html(path: str) -> str:
    """The gallery's model page of the artifact (its layers, with what each holds), as one notebook cell."""
    b = _builder(path)
    try:
        m = b.models[0]
        b.ensure_model(m)
        with pages.in_notebook():
            return pages.model_page(m)
    finally:
        b.close()


def _unit_repr(view) -> str | None:
    path = getattr(view, "artifact_path", None)
    return None if path is None else unit_html(path, view.layer, view.index)


def diff_html(res) -> str:
    """The gallery's comparison page of a `run_diff` result (CKA heatmaps with floors, best layer matches, unit
    matchings), as one notebook cell: the result is saved as a diff file in a temporary folder and shown as
    `scope export --diff` shows it."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "diff.h5")
        save_diff(res, saved)
        paths = list(dict.fromkeys([res.path_a, res.path_b]))
        b = SiteBuilder(paths, [saved], images=_data_uri)
        try:
            view = b.comparison(0)
            pngs = b.comparison_pngs[0]
            inline = {f"d/{view.slug}/{name}": png for name, png in pngs.items()}  # the page's srcs -> the bytes
            view.heatmaps = [dataclasses.replace(h, src="data:image/png;base64," + base64.b64encode(inline[h.src]).decode())
                             for h in view.heatmaps if h.src in inline]
            with pages.in_notebook():
                return pages.comparison_page(view)
        finally:
            b.close()


def _layer_repr(view) -> str:
    return layer_html(view.artifact_path, view.name)


def _artifact_repr(art) -> str | None:
    return artifact_html(art.path)


reader.register_repr("unit", _unit_repr)
reader.register_repr("artifact", _artifact_repr)
reader.register_repr("layer", _layer_repr)
reader.register_repr("diff", diff_html)
