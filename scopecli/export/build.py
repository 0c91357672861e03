"""Artifacts -> page objects: what the gallery shows of them, built once for every way of looking.

Why one builder: the static export (`site.py`) and `scope serve` (`scopecli.serve`) must show the
same pages. This module reads the artifacts and makes the page objects of `pages.py` (thumbnail choice,
activation ratios, histogram markers, label lifts, strongest inputs, links); each writer only decides
where pictures live. Pictures are `ImageRef`s: a stable key, a loader for the bytes a browser is sent
(the stored bytes, or for N-channel, 16-bit and small-input models their `display` composite; one
DisplaySpec per model), and whether more than one page shows them. A writer's `images(ref)` turns one
into the `src` the page uses: the static export writes shared pictures once, content-addressed, and
inlines the rest; the server answers a URL per key. Nothing is read before a page asks for it, so a server starts at once on a file
of any size: opening reads the file's metadata and each layer's presence masks, no unit.

URL layout (the static folder and the server share it, so every relative link works in both):
    index.html                                    models, comparisons
    m/<NN-model>/index.html                       layer list
    m/<NN-model>/<NN-layer>/index.html, page-K.html, by-label[-page-K].html, atlas.html
    m/<NN-model>/<NN-layer>/u/<unit>.html         unit page
    m/<NN-model>/classes/index.html, <index>-<name>.html   classes with effects (format 1.3), one page each
    d/<NN-diff>/index.html                        comparison page of a diff file
Picture srcs are site-root-relative (the templates prefix `root`), absolute (`/img/...`, the server)
or `data:` URIs (inline).
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from scopecli.artifact import open_artifact, registry
from scopecli.artifact.display import (DisplaySpec, default_names, display_bytes, enlarge_factor, for_screen,
    mosaic as display_mosaic, plane_pngs, stored_channels)
from scopecli.artifact.reader import clean_corruption
from scopecli.artifact.elements.strongest import lift_score
from scopecli.artifact.images import encode_jpeg, image_kind
from scopecli.core import heatmaps
from scopecli.core.errors import ScopeError
from scopecli.export import charts, comparisons
from scopecli.export.diffs import load_diff
from scopecli.export.names import fmt, slug
from scopecli.export.pages import (AtlasCellCard, AtlasPage, CaricatureCard, ChannelCard, ClassEntry, ClassLayer,
    ClassUnitCard, DiffRow, DiffSide, ExampleCard, LayerView, LinkRow, ModelView, Panel, RenderCard, Tile, unit_page)

PER_PAGE = 128  # units per layer-grid page
THUMB = 192  # pixel side of generated grid thumbnails (renders up to THUMB_REUSE are used as they are)
THUMB_REUSE = 256
PIXELATED_BELOW = 56  # patches smaller than this are enlarged with visible pixels
ATLAS_MOSAIC_PX = 2048  # side of the atlas mosaic image (cells scaled to fit)
_OBJECTIVE_ORDER = {"channel": 0, "neuron": 1, "negative": 2}
KEY = re.compile(r"^(\d{1,4})/(\d{1,5})/(x([tb])(\d{1,15})-(\d{1,12})|[rscpa](\d{1,9})|k(\d{1,9})-(\d{1,2})|m)$")


@dataclass(frozen=True)
class ImageRef:
    """A stored (or drawn-from-stored) picture: `key` names it within the site ("M/L/x<offset>-<length>" a
    patch, "M/L/r<row>" a render, "s" its thumbnail, "c"/"p" a caricature and its photo, "a" an atlas cell,
    "m" the atlas mosaic, "k<row>-<channel>" one channel of a render in gray); `shared`: shown on more than one
    page. `load` gives the bytes a browser is sent: the stored bytes when a browser shows them right, else
    what `scopecli.artifact.display` makes of them (gray, a false-colour composite, enlarged)."""

    key: str
    load: Callable[[], bytes] = field(compare=False, repr=False)
    shared: bool = True


ImageSink = Callable[[ImageRef], "str | None"]  # ref -> the src a page uses (None: not a PNG/JPEG)


def data_uri(data: bytes) -> str | None:
    """An inline `data:` URI of PNG/JPEG bytes (None for anything else)."""
    kind = image_kind(data)
    return None if kind is None else f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def open_all(paths: list[str]):
    """Open every artifact (one-line error, and none left open, if one fails or is given twice)."""
    arts, seen = [], {}
    try:
        for p in paths:
            real = os.path.realpath(p) if os.path.exists(p) else p
            if real in seen:
                raise ScopeError(f"{p}: given twice (same file as {seen[real]})")
            seen[real] = p
            arts.append(open_artifact(p))
    except BaseException:
        for a in arts:
            a.close()
        raise
    return arts


def display_names(arts, paths) -> list[str]:
    base = [str(a.model.get("name") or a.model.get("spec") or Path(p).stem) for a, p in zip(arts, paths)]
    return [f"{b} · {Path(p).name}" if base.count(b) > 1 else b for b, p in zip(base, paths)]


@dataclass
class UnitPage:
    """Everything a unit page shows (`pages.unit_page` arguments)."""

    m: ModelView
    lv: LayerView
    unit: int
    list_page: int
    prev_unit: int | None
    next_unit: int | None
    cards: list[RenderCard]
    examples: dict[str, list[ExampleCard]]
    stats: dict
    hist_svg: str | None
    strip_svg: str | None
    links: list[LinkRow]
    panels: list[Panel]  # the sections of the file's further elements (label profile, strongest inputs, ...)
    channels: list[ChannelCard] = field(default_factory=list)  # each channel of the best render (not plain RGB)
    channel_note: str = ""  # how the colour pictures are composed ("red=DAPI green=GFP blue=-", depth, scale)

    def html(self) -> str:
        return unit_page(self.m, self.lv, self.unit, self.list_page, self.prev_unit, self.next_unit, self.cards,
                         self.examples, self.stats, self.hist_svg, self.strip_svg, self.links, self.panels,
                         self.channels, self.channel_note)


class _LayerState:
    """What the builder has worked out about one layer so far (each part once, when first needed)."""

    def __init__(self, index: int, listed: np.ndarray):
        self.index = index  # the layer's place in its model (picture keys name it)
        self.listed = listed  # units with a render or examples, ascending
        self.position = {int(u): i for i, u in enumerate(listed)}
        self.tiles_done = False
        self.extras_done = False
        self.labels_done = False
        self.spans: dict[tuple[str, int, int], tuple[int, int]] | None = None  # (blob "t"/"b", offset, length) of
        # every patch -> its (height, width)
        self.shared_spans: set[tuple[str, int]] | None = None  # (blob, offset) of patches more than one unit shows
        self.blobs: dict[str, object] | None = None  # "t"/"b" -> the example set whose byte array that key reads


@clean_corruption
class SiteBuilder:
    """The page objects of a set of artifacts (and diff files), built lazily.

    `images`: the writer's ImageSink. `per_page`: units per grid page. `display`: channels shown as red, green,
    blue ('3,1,0' or names) instead of each file's recorded mapping. The artifacts stay open until
    `close()`; the builder is not thread-safe (a server serialises calls).
    """

    def __init__(self, artifact_paths, diff_paths=(), images: ImageSink | None = None, per_page: int = PER_PAGE,
                 display: str | None = None):
        self.paths = [os.fspath(p) for p in artifact_paths]
        if not self.paths:
            raise ScopeError("give at least one artifact file")
        if int(per_page) < 1:
            raise ScopeError(f"per_page must be at least 1, got {per_page}")
        self.per_page = int(per_page)
        self.path = ", ".join(self.paths)  # what a one-line error on a damaged file names
        self.images: ImageSink = images or (lambda ref: None)
        self.arts = open_all(self.paths)
        self._plane_cache: tuple[tuple, list[bytes]] | None = None  # the channels of the last render split up
        try:
            # how each model's pictures are shown (`display`: --display-channels for every model instead of theirs)
            self.specs = [DisplaySpec.of(a.model).remapped(display) for a in self.arts]
            self.names = display_names(self.arts, self.paths)
            fingerprints = [(os.path.realpath(p), str(a.model.get("fingerprint") or a.fingerprint))
                            for a, p in zip(self.arts, self.paths)]
            self.diffs = [load_diff(os.fspath(d), fingerprints, self.names) for d in diff_paths]
            self.models: list[ModelView] = []
            self._state: list[dict[str, _LayerState]] = []
            self._classes_done: set[int] = set()  # models whose class list (effects) is read
            self._plan()
            self.comparisons = self._comparison_views()
            self.links_by_key: dict = {}
            for d in self.diffs:
                for key, lst in d.links.items():
                    self.links_by_key.setdefault(key, []).extend(lst)
        except BaseException:
            self.close()
            raise
        self.comparison_pngs: dict[int, dict[str, bytes]] = {}  # comparison k -> its heatmaps, once built

    def close(self) -> None:
        for a in self.arts:
            a.close()

    # ------------------------------------------------------------------------------------------ the plan

    def _plan(self) -> None:
        """Slugs, layer facts and the units each layer lists (a render or examples stored): presence masks only."""
        width = len(str(len(self.arts)))
        for i, (art, p) in enumerate(zip(self.arts, self.paths)):
            info = art.info()
            mv = ModelView(index=i, slug=f"{i + 1:0{max(2, width)}d}-{slug(Path(p).stem)}", name=self.names[i],
                           file=Path(p).name, info=info, has_effects=bool(art.effect_layers()))
            states = {}
            lw = max(2, len(str(len(art.layers))))
            for j, (name, li) in enumerate(zip(art.layers, info["layers"])):
                rec = art.layer(name)
                rendered = art.renders_present(name)
                top = art.examples_present(name, "top")
                listed = np.nonzero(rendered | top | art.examples_present(name, "bottom"))[0]
                states[name] = _LayerState(j, listed)
                mv.layers.append(LayerView(
                    name=name, slug=f"{j + 1:0{lw}d}-{slug(name)}", units=rec.units, shape=tuple(rec.shape),
                    rf_size=rec.rf_size, rf_stride=rec.rf_stride, rendered=int(rendered.sum()),
                    collected=int(top.sum()), space=li.get("space"), listed_units=int(len(listed)),
                    pages=max(1, math.ceil(len(listed) / self.per_page)),
                    labelled=art.element_group(name, "strongest") is not None and bool(len(listed)),
                ))
            by_name = {lv.name: lv for lv in mv.layers}
            for lv in mv.layers:  # a unit space links to the layer it is fitted on, and that layer to its spaces
                base = by_name.get(lv.space["base"]) if lv.space else None
                if base is not None:
                    lv.base = base
                    base.spaces.append(lv)
            self.models.append(mv)
            self._state.append(states)

    def model(self, slug_: str) -> ModelView | None:
        return next((m for m in self.models if m.slug == slug_), None)

    def layer_view(self, m: ModelView, slug_: str) -> LayerView | None:
        return next((lv for lv in m.layers if lv.slug == slug_), None)

    def listed(self, m: ModelView, lv: LayerView) -> np.ndarray:
        return self._state[m.index][lv.name].listed

    def position(self, m: ModelView, lv: LayerView, unit: int) -> int | None:
        """Where the layer lists `unit` (its index among the listed units, i.e. its grid tile), or None."""
        return self._state[m.index][lv.name].position.get(int(unit))

    # ------------------------------------------------------------------------------------------ pictures

    def _key(self, m: ModelView, lv: LayerView, what: str) -> str:
        return f"{m.index}/{self._state[m.index][lv.name].index}/{what}"

    def _shown(self, m: ModelView, load: Callable[[], bytes], height: int, width: int,
               what: str) -> Callable[[], bytes]:
        """The loader of what a browser is sent for a stored picture (every picture a page shows goes through
        here or `_thumb_ref`, `_mosaic_png`, `_planes`): the stored bytes for 8-bit RGB and gray, else the
        display composite (`display.display_bytes` with the model's DisplaySpec)."""
        spec, h, w = self.specs[m.index], int(height), int(width)
        return lambda: display_bytes(load(), h, w, spec, what)

    def _render_ref(self, m, lv, section, row: int, shared: bool) -> ImageRef:
        off, ln = int(section.cols["offset"][row]), int(section.cols["length"][row])
        h, w = int(section.cols["height"][row]), int(section.cols["width"][row])
        return ImageRef(self._key(m, lv, f"r{row}"),
                        self._shown(m, lambda: section._read(off, ln), h, w, f"render {lv.name} row {row}"), shared)

    def _thumb_ref(self, m, lv, section, row: int) -> ImageRef:
        spec = self.specs[m.index]

        def load():
            return thumb_bytes(section.view(row).image, spec)[0]
        return ImageRef(self._key(m, lv, f"s{row}"), load, True)

    def _patch_ref(self, m, lv, which: str, span: tuple[int, int], load, shared: bool, height: int,
                   width: int) -> ImageRef:
        off, ln = span
        b = self._blob_key(m, lv, which)
        return ImageRef(self._key(m, lv, f"x{b}{off}-{ln}"), self._shown(m, load, height, width, f"patch of {lv.name}"),
                        shared)

    def _planes(self, m, lv, section, row: int) -> list[bytes]:
        """Each channel of render `row` as an 8-bit gray PNG (decoded once for all its channels)."""
        key = (m.index, lv.name, row)
        if self._plane_cache is None or self._plane_cache[0] != key:
            off, ln = int(section.cols["offset"][row]), int(section.cols["length"][row])
            h, w = int(section.cols["height"][row]), int(section.cols["width"][row])
            self._plane_cache = (key, plane_pngs(section._read(off, ln), h, w, self.specs[m.index],
                                                 f"render {lv.name} row {row}"))
        return self._plane_cache[1]

    def _plane_count(self, m, lv, section, row: int) -> int:
        """How many channel panels render `row` has: its stored channels (from the picture's header), for
        models that show them (not plain RGB); 0 otherwise."""
        if not self.specs[m.index].per_channel:
            return 0
        off, ln = int(section.cols["offset"][row]), int(section.cols["length"][row])
        found = stored_channels(section._read(off, ln), int(section.cols["height"][row]))
        return found[0] if found is not None else 0

    def _caricature_refs(self, m, lv, j: int, c) -> tuple[ImageRef, ImageRef]:
        what = f"caricature {lv.name} #{j}"
        return (ImageRef(self._key(m, lv, f"c{j}"), self._shown(m, lambda: c.encoded, c.height, c.width, what), True),
                ImageRef(self._key(m, lv, f"p{j}"), self._shown(m, lambda: c.photo_encoded, c.height, c.width,
                                                                 f"photo of {what}"), True))

    def _atlas_ref(self, m, lv, j: int, c) -> ImageRef:
        return ImageRef(self._key(m, lv, f"a{j}"), self._shown(m, lambda: c.encoded, c.height, c.width,
                                                               f"atlas cell {lv.name} #{j}"), False)

    def _example_blobs(self, m, lv) -> dict[str, object]:
        """"t"/"b" -> the layer's top/bottom example set (present ones only)."""
        st = self._state[m.index][lv.name]
        if st.blobs is None:
            sec = self.arts[m.index].section(lv.name, "examples")
            sets = {w[0]: sec.set(w) for w in ("top", "bottom")} if sec is not None else {}
            st.blobs = {k: v for k, v in sets.items() if v is not None}
        return st.blobs

    def _blob_key(self, m, lv, which: str) -> str:
        """The byte array a patch of set `which` lies in: "t" or "b". Since format 1.1 both sets share one
        (a patch is stored once for both), which then reads as "t" for both."""
        sets = self._example_blobs(m, lv)
        if which[0] == "b" and "t" in sets and "b" in sets and sets["t"].blob.id == sets["b"].blob.id:
            return "t"
        return which[0]

    def _shared_offsets(self, m, lv) -> set[tuple[str, int]]:
        """(blob, offset) of patches that more than one unit shows (each is then one file in a static export)."""
        st = self._state[m.index][lv.name]
        if st.shared_spans is None:
            keys = []
            for which in ("top", "bottom"):
                s = self._example_blobs(m, lv).get(which[0])
                if s is not None:
                    b = self._blob_key(m, lv, which)
                    keys += [(b, int(o)) for o in s.offset[s.length > 0]]
            seen, shared = set(), set()
            for k in keys:
                (shared if k in seen else seen).add(k)
            st.shared_spans = shared
        return st.shared_spans

    def image(self, key: str) -> bytes | None:
        """The bytes of the picture `key` names (None: no such picture). The server's only way to pictures:
        a key is parsed into numbers and checked against the artifact's index tables, never used as a path."""
        mt = KEY.match(key or "")
        if mt is None:
            return None
        mi, li = int(mt.group(1)), int(mt.group(2))
        if mi >= len(self.models) or li >= len(self.models[mi].layers):
            return None
        m = self.models[mi]
        lv, art = m.layers[li], self.arts[mi]
        what = mt.group(3)
        if what.startswith("x"):
            b, off, ln = mt.group(4), int(mt.group(5)), int(mt.group(6))
            size = self._spans(m, lv).get((b, off, ln))
            if size is None:
                return None
            s = self._example_blobs(m, lv)[b]
            return self._shown(m, lambda: s._read(off, ln), size[0], size[1], f"patch of {lv.name}")()
        if what == "m":
            atlas = art.atlas(lv.name)
            return None if atlas is None or not atlas.cells else _mosaic_png(atlas, self.specs[mi])
        if what[0] == "k":
            row, ch = int(mt.group(8)), int(mt.group(9))
            s = art.section(lv.name, "renders")
            if s is None or row >= s.n or ch >= self._plane_count(m, lv, s, row):
                return None
            return self._planes(m, lv, s, row)[ch]
        n = int(mt.group(7))
        kind = what[0]
        if kind in "rs":
            s = art.section(lv.name, "renders")
            if s is None or n >= s.n:
                return None
            if kind == "r":
                return self._render_ref(m, lv, s, n, True).load()
            return self._thumb_ref(m, lv, s, n).load()
        if kind in "cp":
            cs = art.caricatures(lv.name)
            return None if n >= len(cs) else self._caricature_refs(m, lv, n, cs[n])["cp".index(kind)].load()
        atlas = art.atlas(lv.name)
        return None if atlas is None or n >= len(atlas.cells) else self._atlas_ref(m, lv, n, atlas.cells[n]).load()

    def _spans(self, m, lv) -> dict[tuple[str, int, int], tuple[int, int]]:
        """Every stored patch as (blob, offset, length) -> its (height, width): the only byte ranges a picture
        key may name."""
        st = self._state[m.index][lv.name]
        if st.spans is None:
            spans = {}
            for which in ("top", "bottom"):
                s = self._example_blobs(m, lv).get(which[0])
                if s is not None:
                    has = s.length > 0
                    b = self._blob_key(m, lv, which)
                    spans.update(((b, o, n), (h, w)) for o, n, h, w in zip(
                        s.offset[has].tolist(), s.length[has].tolist(), s.height[has].tolist(), s.width[has].tolist()))
            st.spans = spans
        return st.spans

    # ------------------------------------------------------------------------------------------ layers

    def ensure_tiles(self, m: ModelView, lv: LayerView) -> None:
        """The layer's grid tiles: each listed unit's best render (shrunk when large), else its first top (else
        bottom) example. Reads the layer's index tables, no image."""
        st = self._state[m.index][lv.name]
        if st.tiles_done:
            return
        art = self.arts[m.index]
        rs = art.section(lv.name, "renders")
        stats = art.stats(lv.name)
        tiles = []
        for u in (int(x) for x in st.listed):
            tile = self._render_tile(m, lv, rs, u, stats) if rs is not None else None
            if tile is None:
                tile = self._example_tile(m, lv, u)
            tiles.append(tile)
        lv.tiles = tiles
        st.tiles_done = True  # only once read whole: a damaged layer is the same error at every request

    def _render_tile(self, m, lv, rs, u: int, stats) -> Tile | None:
        rows = list(rs.rows_of(u))
        if not rows:
            return None
        cols = rs.cols
        row = _best_render(rs, rows)
        w, h = int(cols["width"][row]), int(cols["height"][row])
        act = float(cols["act_final"][row])
        ratio = _ratio(float(cols["dataset_max_ratio"][row]), str(cols["objective"][row]), act,
                       _stat_of(stats, u, "max"))[0]
        caption = f"{cols['objective'][row]} act {fmt(act)}" + (f", ×{fmt(ratio, '.2f')} dataset max" if _finite(ratio) else "")
        if max(w, h) <= THUMB_REUSE:
            return Tile(u, self.images(self._render_ref(m, lv, rs, row, True)) or "", "render", w, h, caption)
        return Tile(u, self.images(self._thumb_ref(m, lv, rs, row)) or "", "render", *thumb_size(w, h), caption)

    def _example_tile(self, m, lv, u: int) -> Tile:
        found = _tile_example(self._example_blobs(m, lv), u)
        if found is None:
            return Tile(u, "", "example", 0, 0, "no picture stored")
        which, k = found
        s = self._example_blobs(m, lv)[which[0]]
        row = s.row_of(u)
        off, ln = int(s.offset[row, k]), int(s.length[row, k])
        ref = self._patch_ref(m, lv, which, (off, ln), lambda: s._read(off, ln), True, int(s.height[row, k]),
                              int(s.width[row, k]))
        cls = self._class_of(m, int(s.image_index[row, k]))
        return Tile(u, self.images(ref) or "", "example", int(s.width[row, k]), int(s.height[row, k]),
                    f"{which} example {fmt(float(s.score[row, k]))}" + (f" ({cls})" if cls else ""))

    def _class_of(self, m: ModelView, ii: int) -> str | None:
        labels = self.arts[m.index].image_labels()
        if labels is None or not 0 <= ii < len(labels[0]):
            return None
        lab, names = int(labels[0][ii]), labels[1]
        return names[lab] if 0 <= lab < len(names) else None

    def ensure_extras(self, m: ModelView, lv: LayerView) -> None:
        """The layer's whole-layer renders, caricatures and atlas (what its first grid page and the model page show)."""
        st = self._state[m.index][lv.name]
        if st.extras_done:
            return
        art = self.arts[m.index]
        rs = art.section(lv.name, "renders")
        layer_renders, caricatures = [], []
        if rs is not None:
            for row in rs.rows_of(-1):
                r = rs.view(row)
                layer_renders.append(RenderCard(
                    self.images(self._render_ref(m, lv, rs, row, True)) or "", r.width, r.height, r.objective,
                    r.diversity_index, r.act_final, r.act_robust, r.dataset_max_ratio, False,
                    f"{r.param} · {r.steps} steps · {r.size}px · seed {r.seed}", charts.trace_svg(r.act_trace)))
        for j, c in enumerate(art.caricatures(lv.name)):
            ref, photo_ref = self._caricature_refs(m, lv, j, c)
            src, photo = self.images(ref), self.images(photo_ref)
            if not src or not photo:
                continue
            caricatures.append(CaricatureCard(src, photo, c.width, c.height, c.source_name, c.cosine,
                                              c.magnitude_ratio,
                                              f"{c.param} · {c.steps} steps · power {c.power:g} · seed {c.seed}"))
        atlas = art.atlas(lv.name)
        lv.atlas = self._atlas_page(m, lv, atlas) if atlas is not None and atlas.cells else None
        lv.layer_renders, lv.caricatures = layer_renders, caricatures
        st.extras_done = True

    def _atlas_page(self, m, lv, atlas) -> AtlasPage:
        cell_px = max(8, min(atlas.size, ATLAS_MOSAIC_PX // atlas.grid))
        spec = self.specs[m.index]
        mosaic = self.images(ImageRef(self._key(m, lv, "m"), lambda: _mosaic_png(atlas, spec), True)) or ""
        listed = self._state[m.index][lv.name].position
        cells = []
        for j, c in enumerate(atlas.cells):
            src = self.images(self._atlas_ref(m, lv, j, c)) or ""
            units = [(u, f"u/{u}.html" if u in listed else None) for u in c.nearest_units(3)]
            cells.append(AtlasCellCard(c.position[0], c.position[1], src, c.count, units))
        return AtlasPage(atlas.grid, atlas.layout, atlas.layout_note, atlas.seed, atlas.vectors, atlas.steps,
                         atlas.size, mosaic, cell_px * atlas.grid, cells)

    def ensure_labels(self, m: ModelView, lv: LayerView) -> None:
        """The by-label ordering of the grid: units whose top examples favour a class most, first."""
        st = self._state[m.index][lv.name]
        if st.labels_done:
            return
        self.ensure_tiles(m, lv)
        if not lv.labelled:
            st.labels_done = True
            return
        art = self.arts[m.index]
        el = registry.layer_element("strongest")
        section, slot = art.section(lv.name, "strongest"), art.slot(lv.name)
        lifts = {}
        for t in lv.tiles:
            profile = el.unit_value(section, t.unit, slot, art)
            if profile is not None and profile.rows:
                lifts[t.unit] = _best_lift(profile)
        lv.by_label = sorted((replace(t, label=lifts[t.unit][1], lift_score=lifts[t.unit][0])
                              for t in lv.tiles if t.unit in lifts), key=lambda t: (-t.lift_score, t.unit))
        lv.label_pages = max(1, math.ceil(len(lv.by_label) / self.per_page)) if lv.by_label else 0
        lv.labelled = bool(lv.by_label)
        st.labels_done = True

    def ensure_layer(self, m: ModelView, lv: LayerView) -> None:
        self.ensure_tiles(m, lv)
        self.ensure_extras(m, lv)
        self.ensure_labels(m, lv)

    def ensure_model(self, m: ModelView, layers: int | None = None) -> list[str]:
        """What the model page (or, first `layers` layers, the index card) shows: each layer's tiles and extras.
        A damaged layer is left without pictures; returns its one-line errors (the page still shows)."""
        errors = []
        for lv in m.layers[:layers]:
            try:
                self.ensure_tiles(m, lv)
                self.ensure_extras(m, lv)
            except ScopeError as exc:
                errors.append(f"{lv.name}: {exc}")
        if layers is None:
            try:
                self.ensure_classes(m)
            except ScopeError as exc:
                errors.append(f"classes: {exc}")
        return errors

    # ------------------------------------------------------------------------------------------ units

    def unit_page(self, m: ModelView, lv: LayerView, u: int) -> UnitPage | None:
        """The page of unit `u` (None: the layer does not list it)."""
        st = self._state[m.index][lv.name]
        i = st.position.get(int(u))
        if i is None:
            return None
        u = int(u)
        art = self.arts[m.index]
        rec = art.layer(lv.name)
        view = art.unit(lv.name, u)
        stats = view.stats
        cards = self._render_cards(m, lv, u, stats.get("max"), view.renders)
        shared = self._shared_offsets(m, lv)
        rs = art.section(lv.name, "renders")
        has_render = rs is not None and len(rs.rows_of(u)) > 0
        # the unit's grid tile when it is an example, (set, rank): shown on the grid page too
        tile = None if has_render else _tile_example(self._example_blobs(m, lv), u)
        examples = {}
        for which in ("top", "bottom"):
            out = []
            for e in view.examples.get(which, []):
                if not e.span[1]:
                    continue
                on_two_pages = (self._blob_key(m, lv, which), e.span[0]) in shared or tile == (which, e.rank)
                src = self.images(self._patch_ref(m, lv, which, e.span, lambda e=e: e.encoded, on_two_pages,
                                                  e.height, e.width))
                if not src:
                    continue
                card = ExampleCard(src, e.width, e.height, e.rank, e.score, self._class_of(m, e.image_index),
                                   e.image_path, max(e.width, e.height) < PIXELATED_BELOW)
                _add_heat(card, e, rec, 1.0 if which == "top" else -1.0)
                out.append(card)
            examples[which] = out
        hist_svg, strip_svg = self._unit_charts(m, lv, u, stats, cards) if stats else (None, None)
        links = self._link_rows(self.links_by_key.get((m.index, lv.name, u), []))
        prev_u = int(st.listed[i - 1]) if i > 0 else None
        next_u = int(st.listed[i + 1]) if i + 1 < len(st.listed) else None
        best = _best_render(rs, list(rs.rows_of(u))) if has_render else None
        channels = self._channel_cards(m, lv, rs, best) if best is not None else []
        return UnitPage(m, lv, u, i // self.per_page + 1, prev_u, next_u, cards, examples, stats, hist_svg,
                        strip_svg, links, self._panels(m, view), channels, self._channel_note(m, rs, best))

    def _channel_cards(self, m, lv, rs, row: int | None) -> list[ChannelCard]:
        """Each channel of the unit's best render as a gray picture, named (models other than plain RGB)."""
        n = self._plane_count(m, lv, rs, row) if row is not None else 0
        if not n:
            return []
        spec = self.specs[m.index]
        names = spec.names if n == spec.channels else default_names(n)
        w, h = int(rs.cols["width"][row]), int(rs.cols["height"][row])
        cards = []
        for ch in range(n):
            ref = ImageRef(self._key(m, lv, f"k{row}-{ch}"), lambda ch=ch: self._planes(m, lv, rs, row)[ch], False)
            src = self.images(ref)
            if src:
                cards.append(ChannelCard(src, w, h, ch, names[ch]))
        return cards

    def _channel_note(self, m, rs, row: int | None) -> str:
        """How a unit page's pictures are shown, when not as stored: the composite's channels, depth and
        enlargement ("" for 8-bit RGB models of usual input size, and for files without an input spec)."""
        spec = self.specs[m.index]
        parts = [f"composite: {spec.describe()}" if spec.describe() else
                 ("one channel, shown in gray" if spec.channels == 1 and spec.enlarge_small else "")]
        if spec.bit_depth == 16:
            parts.append("16-bit values scaled to 8 bits for display")
        if spec.small:
            k = enlarge_factor(int(rs.cols["height"][row]), int(rs.cols["width"][row])) if row is not None else 1
            parts.append(f"input {spec.input_size} px: pictures enlarged" + (f" ×{k}" if k > 1 else "")
                         + " with nearest neighbour for display")
        return " · ".join(p for p in parts if p)

    def _render_cards(self, m, lv, u: int, dmax, views=()) -> list[RenderCard]:
        """The unit's render cards; `views`: the unit's render views (`art.unit(...).renders`, one per row in row
        order), whose faithfulness evidence (format 1.3) each card shows where it was measured."""
        rs = self.arts[m.index].section(lv.name, "renders")
        rows = list(rs.rows_of(u)) if rs is not None else []
        best = _best_render(rs, rows)
        views = list(views) if len(views) == len(rows) else [None] * len(rows)
        cards = []
        for row, v in zip(rows, views):
            r = rs.view(row)
            tile_itself = row == best and max(r.width, r.height) <= THUMB_REUSE
            src = self.images(self._render_ref(m, lv, rs, row, tile_itself))
            if not src:
                continue
            ratio, estimated = _ratio(r.dataset_max_ratio, r.objective, r.act_final, dmax)
            meta = f"{r.param} · {r.steps} steps · {r.size}px · seed {r.seed}"
            card = RenderCard(src, r.width, r.height, r.objective, r.diversity_index, r.act_final, r.act_robust, ratio,
                              estimated, meta, charts.trace_svg(r.act_trace))
            sim = getattr(v, "path_similarity", None) if v is not None else None
            if sim is not None and _finite(sim):  # measured: shown with its chance level, flagged when not above it
                card.path_similarity = float(sim)
                base = getattr(v, "path_baseline", None)
                card.path_baseline = float(base) if _finite(base) else None
                card.path_flagged = bool(getattr(v, "path_flagged", None))
            cards.append(card)
        return cards

    def _unit_charts(self, m, lv, u: int, stats: dict, cards: list[RenderCard]) -> tuple[str | None, str | None]:
        """The unit's activation histogram (from the collect sketch, when stored) and quantile strip."""
        markers = [(stats.get("mean"), "mean", "m-mean"), (stats.get("p99"), "p99", "m-q")]
        seen = set()
        for c in cards:  # the first render of each objective marks its activation
            if c.objective in ("channel", "neuron", "negative") and c.objective not in seen:
                seen.add(c.objective)
                markers.append((c.act_final, "render" if c.objective != "negative" else "neg. render", "m-render"))
        block = self.arts[m.index].stats(lv.name)
        counts_h = None
        if block is not None and "hist" in block.sketch:
            i = int(np.searchsorted(block.units, u))
            if i < len(block.units) and int(block.units[i]) == u:
                counts_h = charts.rebin_sketch(block.sketch["hist"][i], block.sketch_attrs, stats.get("min"),
                                               stats.get("max"))
        hist_svg = charts.histogram_svg(counts_h, stats["min"], stats["max"], markers) if counts_h is not None else None
        return hist_svg, charts.quantile_strip_svg(stats)

    def _link_rows(self, links) -> list[LinkRow]:
        rows = []
        for ln in links:
            url = None
            if ln.target.artifact is not None:
                mv = self.models[ln.target.artifact]
                lv = next((x for x in mv.layers if x.name == ln.layer), None)
                if lv is not None and ln.unit in self._state[mv.index][lv.name].position:
                    url = f"../../../../m/{mv.slug}/{lv.slug}/u/{ln.unit}.html"
            rows.append(LinkRow(f"{ln.target.name} · {ln.layer}:{ln.unit}", url, ln.corr, ln.kinds, ln.above_floor,
                                ln.floor, ln.diff_name))
        return rows

    def _panels(self, m: ModelView, view) -> list[Panel]:
        """The unit's sections from the elements that declare a panel, in the registry's order."""
        links = _UnitLinks(self, m)
        out = []
        for el in registry.layer_elements():
            if el.panel is None or el.unit_field is None or el.unit_field not in view.fields:
                continue
            ctx = el.panel_context(view.fields[el.unit_field], links)
            if ctx is not None:
                out.append(Panel(el.panel, ctx))
        return out

    def unit_link(self, m: ModelView, layer: str, unit: int):
        """(page url from a unit page, thumbnail src, width, height) of a unit this gallery lists, else None."""
        lv = next((x for x in m.layers if x.name == layer), None)
        if lv is None:
            return None
        pos = self.position(m, lv, unit)
        if pos is None:
            return None
        self.ensure_tiles(m, lv)
        t = lv.tiles[pos]
        return f"../../{lv.slug}/u/{int(unit)}.html", t.thumb, t.width, t.height

    # ------------------------------------------------------------------------------------------ classes

    def ensure_classes(self, m: ModelView) -> None:
        """The model's classes with effects (format 1.3), by output index: the union over its layers' effects,
        each named as the first layer names it. Reads the effects' small tables; nothing for older files."""
        if m.index in self._classes_done:
            return
        art = self.arts[m.index]
        found: dict[int, ClassEntry] = {}
        for layer in art.effect_layers() if m.has_effects else []:
            b = art.effects(layer)
            if b is None:
                continue
            for idx, name, n in zip(b.classes.tolist(), b.class_names, b.images.tolist()):
                c = found.get(int(idx))
                if c is None:
                    c = found[int(idx)] = ClassEntry(int(idx), str(name), f"{int(idx)}-{slug(str(name), 'class')}", 0)
                c.images = max(c.images, int(n))
                c.layers.append(layer)
        m.classes = [found[k] for k in sorted(found)]
        self._classes_done.add(m.index)

    def class_of(self, m: ModelView, index: int) -> ClassEntry | None:
        """The model's class of output index `index`, when it has effects."""
        if not m.has_effects:
            return None
        self.ensure_classes(m)
        return next((c for c in m.classes if c.index == int(index)), None)

    def class_by_slug(self, m: ModelView, slug_: str) -> ClassEntry | None:
        """The class a page name names: looked up in the model's list, never parsed into a path."""
        if not m.has_effects:
            return None
        self.ensure_classes(m)
        return next((c for c in m.classes if c.slug == slug_), None)

    def find_classes(self, text: str, limit: int = 20) -> list[tuple[ModelView, ClassEntry]]:
        """Classes whose name is or contains `text` (case, '_' and spaces ignored), exact names first."""
        want = _norm_class(text)
        if not want:
            return []
        exact, partial = [], []
        for m in self.models:
            if not m.has_effects:
                continue
            self.ensure_classes(m)
            for c in m.classes:
                name = _norm_class(c.name)
                if name == want or want == str(c.index):
                    exact.append((m, c))
                elif want in name:
                    partial.append((m, c))
        return (exact + partial)[:limit]

    def class_layers(self, m: ModelView, c: ClassEntry) -> list[ClassLayer]:
        """What a class page shows: per layer with effects of the class, its top units (with the grid's tile where
        the gallery lists the unit) and the ablation evidence."""
        art = self.arts[m.index]
        out = []
        for layer in c.layers:
            ce = art.class_units(layer, c.index)
            lv = next((x for x in m.layers if x.name == layer), None)
            ablated = set((ce.ablation or {}).get("units", []))
            cards = []
            for cu in ce.units:
                pos = self.position(m, lv, cu.unit) if lv is not None else None
                url, thumb, w, h = None, "", 0, 0
                if pos is not None:
                    self.ensure_tiles(m, lv)
                    t = lv.tiles[pos]
                    url, thumb, w, h = f"../{lv.slug}/u/{cu.unit}.html", t.thumb, t.width, t.height
                cards.append(ClassUnitCard(cu.unit, cu.share, cu.attribution, url, thumb, w, h, cu.unit in ablated))
            layer_url = f"../{lv.slug}/index.html" if lv is not None and lv.linkable else None
            out.append(ClassLayer(layer, layer_url, ce.target, ce.images, cards, ce.sentence(),
                                  _accuracy_text(ce.ablation)))
        return out

    # ------------------------------------------------------------------------------------------ comparisons

    def _comparison_views(self) -> list:
        """A comparison page per diff file, named before any model page is built (they link to it)."""
        views = []
        for k, d in enumerate(self.diffs):
            def side(s) -> DiffSide:
                return DiffSide(s.name, None if s.artifact is None else f"m/{self.models[s.artifact].slug}/index.html")

            view = comparisons.ComparisonView(k, comparisons.comparison_slug(k, d.path, len(self.diffs)),
                                              Path(d.path).name, side(d.a), side(d.b))
            for s, other in ((d.a, d.b), (d.b, d.a)):
                if s.artifact is not None:
                    entry = (f"vs {other.name} ({view.file})", view.url)
                    if entry not in self.models[s.artifact].comparisons:
                        self.models[s.artifact].comparisons.append(entry)
            views.append(view)
        return views

    def diff_rows(self) -> list[DiffRow]:
        return [DiffRow(Path(d.path).name, v.a, v.b, d.pairs, v.url) for d, v in zip(self.diffs, self.comparisons)]

    def comparison(self, k: int):
        """Comparison view `k`, filled from its diff file once; its heatmaps (PNG bytes by name, a file next to
        the page: d/<slug>/<name>) are in `self.comparison_pngs[k]`."""
        d, view = self.diffs[k], self.comparisons[k]
        if k in self.comparison_pngs:
            return view
        sides = {"a": d.a, "b": d.b}

        def layer_of(side: str, layer: str):
            s = sides[side]
            if s.artifact is None:
                return None, None
            mv = self.models[s.artifact]
            return mv, next((x for x in mv.layers if x.name == layer), None)

        def layer_ref(side: str, layer: str) -> comparisons.LayerRef:
            mv, lv = layer_of(side, layer)
            linked = lv is not None and (lv.listed_units or lv.has_page)
            return comparisons.LayerRef(layer, f"../../m/{mv.slug}/{lv.slug}/index.html" if linked else None)

        def unit_ref(side: str, layer: str, unit: int) -> comparisons.UnitRef:
            mv, lv = layer_of(side, layer)
            if lv is None or unit not in self._state[mv.index][lv.name].position:
                return comparisons.UnitRef(f"{layer}:{unit}", None)
            return comparisons.UnitRef(f"{layer}:{unit}", f"../../m/{mv.slug}/{lv.slug}/u/{unit}.html")

        pngs: dict[str, bytes] = {}
        comparisons.build(view, d.data, unit_ref, layer_ref, pngs.__setitem__)
        for h in view.heatmaps:  # the templates take srcs from the site root
            h.src = f"d/{view.slug}/{h.src}"
        self.comparison_pngs[k] = pngs
        return view


# ---------------------------------------------------------------------------------------------- helpers


@dataclass
class _UnitLinks:
    """What an element's panel may ask of the gallery: `unit(layer, unit)` (see `LayerElement.panel_context`)."""

    site: SiteBuilder
    m: ModelView

    def unit(self, layer: str, unit: int):
        return self.site.unit_link(self.m, layer, unit)

    def class_page(self, index: int) -> str | None:
        """The page of the model's class `index` (its output index) from a unit page, or None."""
        c = self.site.class_of(self.m, index)
        return None if c is None else f"../../classes/{c.file}"


def _norm_class(text) -> str:
    """A class name as searched: lower case, '_' as a space, single spaces."""
    return " ".join(str(text).replace("_", " ").lower().split())


def _accuracy_text(a: dict | None) -> str:
    """'mean logit 13.4 · accuracy on its images 100% → 50% with these units ablated (random units: 100% ± 0%)'."""
    if not a:
        return ""
    r = np.asarray(a["random_acc"], float)
    rand = f"{fmt(r.mean(), '.0%')} ± {fmt(r.std(), '.0%')}" if r.size else "–"
    return (f"mean logit {fmt(a['base_logit'])} · accuracy on its images {fmt(a['base_acc'], '.0%')} → "
            f"{fmt(a['top_acc'], '.0%')} with these units ablated (random {a['k']}: {rand})")


def thumb_bytes(image: np.ndarray, spec: DisplaySpec = DisplaySpec()) -> tuple[bytes, int, int]:
    """A grid thumbnail (JPEG, THUMB px on its longer side) of a large render, as a screen shows it (`for_screen`:
    the composite of an N-channel picture)."""
    from PIL import Image

    img = Image.fromarray(for_screen(image, spec))
    size = thumb_size(img.width, img.height)
    small = np.asarray(img.resize(size, Image.Resampling.LANCZOS))
    return encode_jpeg(small, 90, "thumbnail"), size[0], size[1]


def thumb_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the grid thumbnail of a large render: THUMB px on its longer side."""
    scale = THUMB / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _best_render(rs, rows) -> int | None:
    """The row that stands for a unit (its grid tile): channel before neuron before negative, first diversity."""
    return min(rows, key=lambda i: (_OBJECTIVE_ORDER.get(rs.cols["objective"][i], 3), int(rs.cols["diversity_index"][i])),
               default=None)


def _tile_example(sets: dict, u: int) -> tuple[str, int] | None:
    """(set, rank) of the example that stands for a unit without renders: its first stored top, else bottom."""
    for which in ("top", "bottom"):
        s = sets.get(which[0])
        row = s.row_of(u) if s is not None else None
        if row is not None:
            ks = np.flatnonzero((s.image_index[row] >= 0) & (s.length[row] > 0))
            if len(ks):
                return which, int(ks[0])
    return None


def _mosaic_png(atlas, spec: DisplaySpec = DisplaySpec()) -> bytes:
    """The atlas mosaic as a screen shows it (each cell's composite; `AtlasView.mosaic` for 8-bit RGB)."""
    cell_px = max(8, min(atlas.size, ATLAS_MOSAIC_PX // atlas.grid))
    buf = io.BytesIO()
    display_mosaic(atlas.cells, atlas.grid, cell_px, spec).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _stat_of(stats, u: int, key: str) -> float | None:
    if stats is None:
        return None
    i = int(np.searchsorted(stats.units, u))
    if i < len(stats.units) and int(stats.units[i]) == u:
        return float(getattr(stats, key)[i])
    return None


def _ratio(stored, objective: str, act, dmax) -> tuple[float, bool]:
    """The render's activation over the dataset maximum: stored, else computed here for unit objectives."""
    if _finite(stored):
        return float(stored), False
    if objective in ("channel", "neuron") and _finite(dmax) and dmax > 0 and _finite(act):
        return float(act) / float(dmax), True
    return (float(stored) if stored is not None else math.nan), False


def _best_lift(profile) -> tuple[float, str]:
    """(lift score, caption) of the class the unit's top examples favour most."""
    best = max(profile.rows, key=lambda r: lift_score(r.count, profile.images[0], r.base_rate))
    return (lift_score(best.count, profile.images[0], best.base_rate), f"{best.class_name} ×{fmt(best.lift, '.1f')}")


def _add_heat(card: ExampleCard, e, rec, sign: float) -> None:
    """Give an example card its heatmap (the stored grid, drawn by the page's script) and peak ring."""
    where = heatmaps.placement(e, rec)
    if where is None:
        return
    card.fires = heatmaps.fires(e.heatmap, sign)
    if card.fires and e.heat_stored is not None:
        card.heat_data = heat_data(*e.heat_stored)
        card.heat_sign = -1 if sign < 0 else 1
    left, top, w, h = where
    card.heat_style = f"left:{100 * left:.2f}%;top:{100 * top:.2f}%;width:{100 * w:.2f}%;height:{100 * h:.2f}%"
    p = heatmaps.peak(e, rec)
    if p is not None:
        card.peak_style = f"left:{100 * p[0]:.2f}%;top:{100 * p[1]:.2f}%"


def heat_data(q: np.ndarray, rng) -> str:
    """A stored heatmap as the page's script reads it: "WIDTH LOW HIGH BASE64(uint8 grid)" (a few dozen bytes)."""
    q = np.ascontiguousarray(q, np.uint8)
    lo, hi = (str(np.float32(x)) for x in rng[:2])  # the shortest text that reads back as the stored float32
    return f"{q.shape[-1]} {lo} {hi} {base64.b64encode(q.tobytes()).decode('ascii')}"
