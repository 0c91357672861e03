"""`scope export`: write artifacts (and diff files) as a static, offline, Microscope-like HTML gallery.

Why this shape: researchers look at units in a browser and share the folder. Images are copied
byte for byte from the artifact next to the pages (no re-encoding, no inlining); only renders larger
than a grid thumbnail get a small JPEG thumbnail. Pages are plain HTML + one stylesheet so the site
works from `file://`. The site is written into a staging folder and swapped in at the end, so a
failed export leaves the previous gallery as it was (see `folder.py`).

Layout of SITE/:
    index.html, style.css, .scope-export.json (marker listing every file written)
    m/<NN-model>/index.html                       layer list
    m/<NN-model>/<NN-layer>/index.html, page-K.html   unit grid, `per_page` units a page
    m/<NN-model>/<NN-layer>/u/<unit>.html         unit page
    m/<NN-model>/<NN-layer>/img/...               renders (r), thumbnails (s), top (t) / bottom (b) examples
    d/<NN-diff>/index.html, cka-*.png             comparison page of each --diff file (comparisons.py)
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from scopecli.core import heatmaps
from scopecli.core.version import __version__
from scopecli.artifact.elements.strongest import lift_score
from scopecli.artifact.images import encode_jpeg, image_kind
from scopecli.core.errors import ScopeError
from scopecli.export import charts, comparisons, folder
from scopecli.export.diffs import load_diff
from scopecli.export.names import fmt, slug
from scopecli.export.pages import (AtlasCellCard, AtlasPage, DiffRow, DiffSide, atlas_page, comparison_page,
    CaricatureCard, ExampleCard, InputCard, InputsView, LayerView, LinkRow, ModelView, RenderCard, Tile, index_page,
    layer_page, model_page, unit_page)
from scopecli.artifact import open_artifact

PER_PAGE = 128  # units per layer-grid page
THUMB = 192  # pixel side of generated grid thumbnails (renders up to THUMB_REUSE are used as they are)
THUMB_REUSE = 256
PIXELATED_BELOW = 56  # patches smaller than this are enlarged with visible pixels
STATIC = Path(__file__).with_name("static")
EXT = {"png": "png", "jpeg": "jpg"}


@dataclass
class _Counts:
    pages: int = 0
    images: int = 0
    bytes: int = 0
    units: int = 0
    links: int = 0


def _write(path: Path, data: bytes | str, counts: _Counts, image: bool = False) -> None:
    # "replace": text read from a damaged file may hold lone surrogates (undecodable bytes); a page shows "?"
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    path.write_bytes(raw)
    counts.bytes += len(raw)
    if image:
        counts.images += 1
    elif path.suffix == ".html":
        counts.pages += 1


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def _open_all(paths: list[str]):
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


def _display_names(arts, paths) -> list[str]:
    base = [str(a.model.get("name") or a.model.get("spec") or Path(p).stem) for a, p in zip(arts, paths)]
    return [f"{b} · {Path(p).name}" if base.count(b) > 1 else b for b, p in zip(base, paths)]


def _plan(arts, paths, names) -> list[tuple[ModelView, dict[str, np.ndarray]]]:
    """Slugs, layer facts and the units each layer lists (render or example present), before writing."""
    width = len(str(len(arts)))
    plan = []
    for i, (art, p) in enumerate(zip(arts, paths)):
        info = art.info()
        mv = ModelView(index=i, slug=f"{i + 1:0{max(2, width)}d}-{slug(Path(p).stem)}", name=names[i],
                       file=Path(p).name, info=info)
        listed = {}
        lw = max(2, len(str(len(art.layers))))
        for j, (name, li) in enumerate(zip(art.layers, info["layers"])):
            rec = art.layer(name)
            rendered = art.renders_present(name)
            top = art.examples_present(name, "top")
            bottom = art.examples_present(name, "bottom")
            listed[name] = np.nonzero(rendered | top | bottom)[0]
            mv.layers.append(LayerView(
                name=name, slug=f"{j + 1:0{lw}d}-{slug(name)}", units=rec.units, shape=tuple(rec.shape),
                rf_size=rec.rf_size, rf_stride=rec.rf_stride, rendered=int(rendered.sum()), collected=int(top.sum()),
                space=li.get("space"), listed_units=int(len(listed[name])),
            ))
        by_name = {lv.name: lv for lv in mv.layers}
        for lv in mv.layers:  # a unit space links to the layer it is fitted on, and that layer to its spaces
            base = by_name.get(lv.space["base"]) if lv.space else None
            if base is not None:
                lv.base = base
                base.spaces.append(lv)
        plan.append((mv, listed))
    return plan


def _unit_url(target_model: ModelView, layer_slug: str, unit: int) -> str:
    return f"../../../../m/{target_model.slug}/{layer_slug}/u/{unit}.html"


def _link_rows(links, plan, listed_sets) -> list[LinkRow]:
    rows = []
    for ln in links:
        url = None
        if ln.target.artifact is not None:
            mv = plan[ln.target.artifact][0]
            lv = next((x for x in mv.layers if x.name == ln.layer), None)
            if lv is not None and ln.unit in listed_sets[ln.target.artifact].get(ln.layer, ()):
                url = _unit_url(mv, lv.slug, ln.unit)
        rows.append(LinkRow(f"{ln.target.name} · {ln.layer}:{ln.unit}", url, ln.corr, ln.kinds, ln.above_floor,
                            ln.floor, ln.diff_name))
    return rows


def _thumb_bytes(render) -> tuple[bytes, int, int]:
    from PIL import Image

    img = Image.fromarray(render.image)
    scale = THUMB / max(img.width, img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    small = np.asarray(img.resize(size, Image.Resampling.LANCZOS))
    return encode_jpeg(small, 90, "thumbnail"), size[0], size[1]


def _pick_thumb_render(renders):
    order = {"channel": 0, "neuron": 1, "negative": 2}
    good = [r for r in renders if image_kind(r.encoded) is not None]
    return min(good, key=lambda r: (order.get(r.objective, 3), r.diversity_index), default=None)


@dataclass
class _Site:
    """What every layer of one export shares: the plan (cross-model links), page size, progress and tallies."""
    plan: list
    listed_sets: list[dict[str, set[int]]]
    links_by_key: dict
    per_page: int
    bar: object
    counts: _Counts


@dataclass
class _Layer:
    """One layer being written: its artifact and views, its folders, the site it belongs to, and the list
    its input-showing unit pages wait in (None: write them at once)."""
    site: _Site
    art: object
    mv: ModelView
    lv: LayerView
    dir: Path
    deferred: list | None = None

    def __post_init__(self):
        self.img_dir, self.unit_dir = self.dir / "img", self.dir / "u"
        self.rec = self.art.layer(self.lv.name)
        self.table = self.art.dataset
        self.stats_block = self.art.stats(self.lv.name)
        self.hist_rows = {}
        if self.stats_block is not None and "hist" in self.stats_block.sketch:
            self.hist_rows = {int(u): i for i, u in enumerate(self.stats_block.units)}

    def write_image(self, name: str, data: bytes) -> None:
        _write(self.img_dir / name, data, self.site.counts, image=True)

    def class_of(self, ii: int) -> str | None:
        """The dataset class name of image `ii`, None where the table lacks it."""
        table = self.table
        if table is None or not 0 <= ii < len(table.label):
            return None
        names, lab = table.class_names, int(table.label[ii])
        return names[lab] if 0 <= lab < len(names) else None


@dataclass
class _UnitPage:
    """What a unit's page shows, held until every listed unit (prev/next, grid page number) is known."""
    unit: int
    cards: list[RenderCard]
    examples: dict[str, list[ExampleCard]]
    stats: dict
    hist_svg: str | None
    strip_svg: str | None
    links: list[LinkRow]
    profile: object
    inputs: object


def _export_layer(job: _Layer, units: np.ndarray) -> None:
    """Write one layer's images, grid pages and unit pages. Unit pages that show strongest inputs need the
    input layer's thumbnails, known once every layer is done: they go to `job.deferred` (callables)."""
    job.img_dir.mkdir(parents=True)
    job.unit_dir.mkdir()
    _copy_layer_renders(job)
    _copy_caricatures(job)
    pending, lifts = [], {}  # lifts: unit -> (lift score, caption) for the by-label grid
    for u in (int(x) for x in units):
        page = _export_unit(job, u, lifts)
        if page is not None:
            pending.append(page)
        job.site.bar.advance()
    _write_unit_pages(job, pending)
    _order_grids(job.lv, lifts, job.site.per_page)
    _write_layer_pages(job)


def _copy_layer_renders(job: _Layer) -> None:
    """Whole-layer (deepdream) renders, copied as stored."""
    for j, r in enumerate(job.art.renders(job.lv.name, [-1])):
        kind = image_kind(r.encoded)
        if kind is not None:
            name = f"dd_{j}.{EXT[kind]}"
            job.write_image(name, r.encoded)
            job.lv.layer_renders.append(RenderCard(f"img/{name}", r.width, r.height, r.objective, r.diversity_index,
                                                   r.act_final, r.act_robust, r.dataset_max_ratio, False,
                                                   f"{r.param} · {r.steps} steps · {r.size}px · seed {r.seed}",
                                                   charts.trace_svg(r.act_trace)))


def _copy_caricatures(job: _Layer) -> None:
    """Caricatures with the photo beside each, both copied as stored (skipped unless both are PNG/JPEG)."""
    for j, c in enumerate(job.art.caricatures(job.lv.name)):
        kinds = (image_kind(c.encoded), image_kind(c.photo_encoded))
        if None in kinds:
            continue
        name, photo = f"ca{j}.{EXT[kinds[0]]}", f"cp{j}.{EXT[kinds[1]]}"
        job.write_image(name, c.encoded)
        job.write_image(photo, c.photo_encoded)
        job.lv.caricatures.append(CaricatureCard(f"img/{name}", f"img/{photo}", c.width, c.height, c.source_name,
                                                 c.cosine, c.magnitude_ratio,
                                                 f"{c.param} · {c.steps} steps · power {c.power:g} · seed {c.seed}"))


def _export_unit(job: _Layer, u: int, lifts: dict) -> _UnitPage | None:
    """Copy one unit's images, add its grid tile and label lift; None when it has no picture to show."""
    view = job.art.unit(job.lv.name, u)
    stats = view.stats
    cards, tile = _render_cards(job, u, view.renders, stats.get("max"))
    examples = {which: _example_cards(job, u, view, which, letter)
                for which, letter in (("top", "t"), ("bottom", "b"))}
    profile = view.fields.get("label_profile")
    if profile is not None and profile.rows:
        lifts[u] = _best_lift(profile)
    if tile is None:
        tile = _example_tile(u, examples)
    if tile is None:  # no stored image is PNG/JPEG: nothing to show
        return None
    job.lv.tiles.append(tile)
    hist_svg, strip_svg = _unit_charts(job, u, stats, cards) if stats else (None, None)
    site = job.site
    links = _link_rows(site.links_by_key.get((job.mv.index, job.lv.name, u), []), site.plan, site.listed_sets)
    site.counts.links += len(links)
    site.counts.units += 1
    return _UnitPage(u, cards, examples, stats, hist_svg, strip_svg, links, profile, view.fields.get("inputs"))


def _render_cards(job: _Layer, u: int, renders, dmax) -> tuple[list[RenderCard], Tile | None]:
    """The unit's renders copied as stored, and its grid tile from the best one (shrunk when large)."""
    cards, tile = [], None
    best = _pick_thumb_render(renders)
    for j, r in enumerate(renders):
        kind = image_kind(r.encoded)
        if kind is None:
            continue
        name = f"r{u}_{j}.{EXT[kind]}"
        job.write_image(name, r.encoded)
        ratio, estimated = r.dataset_max_ratio, False
        if not _finite(ratio) and r.objective in ("channel", "neuron") and _finite(dmax) and dmax > 0 and _finite(r.act_final):
            ratio, estimated = r.act_final / dmax, True
        meta = f"{r.param} · {r.steps} steps · {r.size}px · seed {r.seed}"
        cards.append(RenderCard(f"../img/{name}", r.width, r.height, r.objective, r.diversity_index, r.act_final,
                                r.act_robust, ratio, estimated, meta, charts.trace_svg(r.act_trace)))
        if r is best:
            tile = _render_tile(job, u, r, name, ratio)
    return cards, tile


def _render_tile(job: _Layer, u: int, r, name: str, ratio) -> Tile:
    """The grid tile of render `r`: the copied file itself up to THUMB_REUSE pixels, else a JPEG thumbnail."""
    caption = f"{r.objective} act {fmt(r.act_final)}" + (f", ×{fmt(ratio, '.2f')} dataset max" if _finite(ratio) else "")
    if max(r.width, r.height) <= THUMB_REUSE:
        return Tile(u, f"img/{name}", "render", r.width, r.height, caption)
    data, tw, th = _thumb_bytes(r)
    job.write_image(f"s{u}.jpg", data)
    return Tile(u, f"img/s{u}.jpg", "render", tw, th, caption)


def _example_cards(job: _Layer, u: int, view, which: str, letter: str) -> list[ExampleCard]:
    """The unit's `which` ("top"/"bottom") dataset examples copied as stored, each with its heatmap."""
    out = []
    for e in view.examples.get(which, []):
        data = e.encoded
        kind = image_kind(data) if data else None
        if kind is None:
            continue
        name = f"{letter}{u}_{e.rank}.{EXT[kind]}"
        job.write_image(name, data)
        card = ExampleCard(f"../img/{name}", e.width, e.height, e.rank, e.score, job.class_of(e.image_index),
                           e.image_path, max(e.width, e.height) < PIXELATED_BELOW)
        _add_heat(card, e, job.rec, 1.0 if which == "top" else -1.0, job.img_dir, f"h{letter}{u}_{e.rank}.png",
                  job.site.counts)
        out.append(card)
    return out


def _best_lift(profile) -> tuple[float, str]:
    """(lift score, caption) of the class the unit's top examples favour most."""
    best = max(profile.rows, key=lambda r: lift_score(r.count, profile.images[0], r.base_rate))
    return (lift_score(best.count, profile.images[0], best.base_rate), f"{best.class_name} ×{fmt(best.lift, '.1f')}")


def _example_tile(u: int, examples: dict[str, list[ExampleCard]]) -> Tile | None:
    """A unit without a render: its best top (else bottom) example is its thumbnail."""
    which = "top" if examples["top"] else "bottom"
    if not examples[which]:
        return None
    e = examples[which][0]
    return Tile(u, e.src[3:], "example", e.width, e.height,
                f"{which} example {fmt(e.score)}" + (f" ({e.class_name})" if e.class_name else ""))


def _unit_charts(job: _Layer, u: int, stats: dict, cards: list[RenderCard]) -> tuple[str | None, str]:
    """The unit's activation histogram (from the collect sketch, when stored) and quantile strip."""
    markers = [(stats.get("mean"), "mean", "m-mean"), (stats.get("p99"), "p99", "m-q")]
    seen = set()
    for c in cards:  # the first render of each objective marks its activation
        if c.objective in ("channel", "neuron", "negative") and c.objective not in seen:
            seen.add(c.objective)
            markers.append((c.act_final, "render" if c.objective != "negative" else "neg. render", "m-render"))
    row = job.hist_rows.get(u)
    counts_h = None
    if row is not None:
        block = job.stats_block
        counts_h = charts.rebin_sketch(block.sketch["hist"][row], block.sketch_attrs, stats.get("min"), stats.get("max"))
    hist_svg = charts.histogram_svg(counts_h, stats["min"], stats["max"], markers) if counts_h is not None else None
    return hist_svg, charts.quantile_strip_svg(stats)


def _write_unit_pages(job: _Layer, pending: list[_UnitPage]) -> None:
    """Unit pages, now that neighbours and grid page numbers are known (input-showing ones deferred)."""
    mv, lv, per_page = job.mv, job.lv, job.site.per_page
    listed_units = [t.unit for t in lv.tiles]
    where = {uu: i for i, uu in enumerate(listed_units)}
    for p in pending:
        i = where[p.unit]
        prev_u = listed_units[i - 1] if i > 0 else None
        next_u = listed_units[i + 1] if i + 1 < len(listed_units) else None
        args = (mv, lv, p.unit, i // per_page + 1, prev_u, next_u, p.cards, p.examples, p.stats, p.hist_svg,
                p.strip_svg, p.links, p.profile)

        def write(args=args, u=p.unit, inputs=p.inputs):
            _write(job.unit_dir / f"{u}.html", unit_page(*args, inputs=_input_cards(mv, inputs)), job.site.counts)

        if p.inputs and job.deferred is not None:
            job.deferred.append(write)
        else:
            write()


def _order_grids(lv: LayerView, lifts: dict, per_page: int) -> None:
    """Page counts of the unit grid and, where labels are profiled, of its by-label ordering."""
    lv.pages = max(1, math.ceil(len(lv.tiles) / per_page))
    if lifts:  # one more ordering of the grid (static pages: one page set per order)
        lv.by_label = sorted((replace(t, label=lifts[t.unit][1], lift_score=lifts[t.unit][0])
                              for t in lv.tiles if t.unit in lifts), key=lambda t: (-t.lift_score, t.unit))
        lv.label_pages = max(1, math.ceil(len(lv.by_label) / per_page))


def _write_layer_pages(job: _Layer) -> None:
    """The atlas and grid pages; a layer with nothing stored loses its folder, one without units its u/."""
    mv, lv, counts, per_page = job.mv, job.lv, job.site.counts, job.site.per_page
    atlas = job.art.atlas(lv.name)
    if atlas is not None and atlas.cells:
        lv.atlas = _export_atlas(atlas, lv, job.img_dir, counts)
    if not lv.has_page:  # nothing stored for this layer: no folder either
        shutil.rmtree(job.dir)
        return
    if lv.atlas is not None:
        _write(job.dir / "atlas.html", atlas_page(mv, lv), counts)
    if not lv.tiles:
        shutil.rmtree(job.unit_dir)
    for p in range(1, lv.pages + 1):
        _write(job.dir / lv.page_file(p), layer_page(mv, lv, p, per_page), counts)
    for p in range(1, lv.label_pages + 1):
        _write(job.dir / lv.page_file(p, "label"), layer_page(mv, lv, p, per_page, "label"), counts)


ATLAS_MOSAIC_PX = 2048  # side of the atlas mosaic image (cells scaled to fit)


def _export_atlas(atlas, lv: LayerView, img_dir: Path, counts: _Counts) -> AtlasPage:
    """The atlas's cell renders copied as stored, one mosaic PNG of them all, and each cell's nearest units
    (its largest components) linked to their pages where this export has them."""
    import io

    cell_px = max(8, min(atlas.size, ATLAS_MOSAIC_PX // atlas.grid))
    buf = io.BytesIO()
    atlas.mosaic(cell_px).save(buf, format="PNG", optimize=True)
    _write(img_dir / "atlas.png", buf.getvalue(), counts, image=True)
    paged = {t.unit for t in lv.tiles}
    cells = []
    for c in atlas.cells:
        name = f"at{c.position[0]}_{c.position[1]}.png"
        _write(img_dir / name, c.encoded, counts, image=True)
        units = [(u, f"u/{u}.html" if u in paged else None) for u in c.nearest_units(3)]
        cells.append(AtlasCellCard(c.position[0], c.position[1], f"img/{name}", c.count, units))
    return AtlasPage(atlas.grid, atlas.layout, atlas.layout_note, atlas.seed, atlas.vectors, atlas.steps, atlas.size,
                     "img/atlas.png", cell_px * atlas.grid, cells)


def _input_cards(mv: ModelView, inputs) -> InputsView | None:
    """A unit's strongest inputs as the unit page shows them: each input unit's thumbnail and page when this
    export has them (paths relative to m/<model>/<layer>/u/), else its name alone."""
    if not inputs and not getattr(inputs, "note", ""):
        return None
    tiles: dict = {}
    cards = []
    for r in inputs:
        lv = next((x for x in mv.layers if x.name == r.layer), None)
        tile = None
        if lv is not None:
            if lv.name not in tiles:
                tiles[lv.name] = {t.unit: t for t in lv.tiles}
            tile = tiles[lv.name].get(r.unit)
        cards.append(InputCard(f"{r.layer}:{r.unit}", r.attribution,
                               None if tile is None else f"../../{lv.slug}/u/{r.unit}.html",
                               None if tile is None else f"../../{lv.slug}/{tile.thumb}",
                               0 if tile is None else tile.width, 0 if tile is None else tile.height))
    return InputsView(inputs.source_layer or "", inputs.examples, inputs.note, cards)


def _add_heat(card: ExampleCard, e, rec, sign: float, img_dir: Path, name: str, counts: _Counts) -> None:
    """Give an example card its heatmap overlay (a small RGBA PNG placed over the patch) and peak ring."""
    where = heatmaps.placement(e, rec)
    if where is None:
        return
    import io

    from PIL import Image

    card.fires = heatmaps.fires(e.heatmap, sign)
    if card.fires:
        buf = io.BytesIO()
        Image.fromarray(heatmaps.rgba(e.heatmap, sign), "RGBA").save(buf, format="PNG")
        _write(img_dir / name, buf.getvalue(), counts, image=True)
    card.heat_src = f"../img/{name}"
    left, top, w, h = where
    card.heat_style = f"left:{100 * left:.2f}%;top:{100 * top:.2f}%;width:{100 * w:.2f}%;height:{100 * h:.2f}%"
    peak = heatmaps.peak(e, rec)
    if peak is not None:
        card.peak_style = f"left:{100 * peak[0]:.2f}%;top:{100 * peak[1]:.2f}%"


def _comparison_views(diffs, plan) -> list:
    """A comparison page per diff file, named before the models are written (their pages link to it)."""
    views = []
    for k, d in enumerate(diffs):
        def side(s) -> DiffSide:
            return DiffSide(s.name, None if s.artifact is None else f"m/{plan[s.artifact][0].slug}/index.html")

        view = comparisons.ComparisonView(k, comparisons.comparison_slug(k, d.path, len(diffs)), Path(d.path).name,
                                          side(d.a), side(d.b))
        for s, other in ((d.a, d.b), (d.b, d.a)):
            if s.artifact is not None:
                entry = (f"vs {other.name} ({view.file})", view.url)
                if entry not in plan[s.artifact][0].comparisons:
                    plan[s.artifact][0].comparisons.append(entry)
        views.append(view)
    return views


def _export_comparison(d, view, plan, staging: Path, counts: _Counts) -> None:
    """Write one diff file's comparison page (and its heatmaps) under d/<slug>/."""
    out = staging / "d" / view.slug
    out.mkdir(parents=True)
    sides = {"a": d.a, "b": d.b}

    def layer_view(side: str, layer: str):
        s = sides[side]
        if s.artifact is None:
            return None, None
        mv = plan[s.artifact][0]
        return mv, next((x for x in mv.layers if x.name == layer), None)

    def layer_ref(side: str, layer: str) -> comparisons.LayerRef:
        mv, lv = layer_view(side, layer)
        url = f"../../m/{mv.slug}/{lv.slug}/index.html" if lv is not None and lv.has_page else None
        return comparisons.LayerRef(layer, url)

    paged: dict = {}  # (model slug, layer) -> units that got a page (listed and with a picture)

    def unit_ref(side: str, layer: str, unit: int) -> comparisons.UnitRef:
        mv, lv = layer_view(side, layer)
        if lv is None:
            return comparisons.UnitRef(f"{layer}:{unit}", None)
        key = (mv.slug, layer)
        if key not in paged:
            paged[key] = {t.unit for t in lv.tiles}
        url = f"../../m/{mv.slug}/{lv.slug}/u/{unit}.html" if unit in paged[key] else None
        return comparisons.UnitRef(f"{layer}:{unit}", url)

    def write_image(name: str, data: bytes) -> None:
        _write(out / name, data, counts, image=True)

    comparisons.build(view, d.data, unit_ref, layer_ref, write_image)
    _write(out / "index.html", comparison_page(view), counts)


class _NoBar:
    def advance(self, n: float = 1, **_):
        pass


def export_site(artifact_paths, out_dir, diff_paths=(), progress=None, per_page: int = PER_PAGE) -> dict:
    """Write the gallery of `artifact_paths` (and unit links from `diff_paths`) to `out_dir`.

    `progress`: None for silence, or a factory like `scopecli.core.progress.progress` — called as
    `progress(total, description)` and used as a context manager whose value has `.advance(n)`.
    Returns a summary: site, index, url, models, layers, units, pages, images, bytes, diffs, links, seconds.
    `out_dir` may be new, empty, or a previous scope export (replaced); anything else is refused.
    """
    t0 = time.perf_counter()
    paths = [os.fspath(p) for p in artifact_paths]
    out = _checked_target(paths, out_dir, per_page)
    folder.check_replaceable(out)
    arts = _open_all(paths)
    staging = None
    try:
        names = _display_names(arts, paths)
        fingerprints = [(os.path.realpath(p), str(a.model.get("fingerprint") or a.fingerprint)) for a, p in zip(arts, paths)]
        diffs = [load_diff(os.fspath(d), fingerprints, names) for d in diff_paths]
        plan = _plan(arts, paths, names)
        views = _comparison_views(diffs, plan)
        staging = folder.new_staging(out)
        counts = _Counts()
        _export_models(arts, plan, _merged_links(diffs), staging, progress, int(per_page), counts)
        _write_front(diffs, views, plan, paths, staging, counts)
        folder.swap_in(staging, out)
        staging = None
    finally:
        if staging is not None:
            folder.discard(staging)
        for a in arts:
            a.close()
    index = out / "index.html"
    return {
        "site": str(out), "index": str(index), "url": index.resolve().as_uri(),
        "models": len(plan), "layers": sum(1 for mv, _ in plan for lv in mv.layers if lv.has_page),
        "units": counts.units, "pages": counts.pages, "images": counts.images, "bytes": counts.bytes,
        "diffs": len(diffs), "links": counts.links, "seconds": round(time.perf_counter() - t0, 3),
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


def _merged_links(diffs) -> dict:
    """Every diff file's unit links by (model index, layer, unit), in diff order."""
    links_by_key: dict = {}
    for d in diffs:
        for key, lst in d.links.items():
            links_by_key.setdefault(key, []).extend(lst)
    return links_by_key


def _export_models(arts, plan, links_by_key: dict, staging: Path, progress, per_page: int, counts: _Counts) -> None:
    """Every model's layers and model page under m/, one progress step per listed unit."""
    listed_sets = [{k: set(v.tolist()) for k, v in listed.items()} for _, listed in plan]
    total = sum(len(v) for _, listed in plan for v in listed.values())
    bar_cm = progress(total, "export") if progress is not None else None
    bar = bar_cm.__enter__() if bar_cm is not None else _NoBar()
    try:
        site = _Site(plan, listed_sets, links_by_key, per_page, bar, counts)
        for (mv, listed), art in zip(plan, arts):
            mdir = staging / "m" / mv.slug
            mdir.mkdir(parents=True)
            deferred: list = []
            for lv in mv.layers:
                _export_layer(_Layer(site, art, mv, lv, mdir / lv.slug, deferred), listed[lv.name])
            for write in deferred:  # unit pages with strongest inputs: every layer's thumbnails are known
                write()
            _write(mdir / "index.html", model_page(mv), counts)
    finally:
        if bar_cm is not None:
            bar_cm.__exit__(None, None, None)


def _write_front(diffs, views, plan, paths: list[str], staging: Path, counts: _Counts) -> None:
    """The comparison pages, the index, the stylesheet and the marker that makes the folder replaceable."""
    for d, view in zip(diffs, views):
        _export_comparison(d, view, plan, staging, counts)
    diff_rows = [DiffRow(Path(d.path).name, v.a, v.b, d.pairs, v.url) for d, v in zip(diffs, views)]
    _write(staging / "index.html", index_page([mv for mv, _ in plan], diff_rows), counts)
    _write(staging / "style.css", (STATIC / "style.css").read_bytes(), counts)
    folder.write_marker(staging, {"writer": f"scope {__version__}", "artifacts": [Path(p).name for p in paths]})
