"""HTML of the gallery's four page kinds: index of models, model (layer list), layer grid, unit.

The pages are Jinja2 templates in `templates/` (a `base.html` layout, one template per page kind,
small partials for figures, cards and the pager); this module holds the data they show and one
render function per page kind. Why templates: they are the convention people know how to edit, and
with autoescape every stored string is escaped unless it is deliberately marked safe (only the
SVG charts, which `charts.py` builds from numbers). Links go through the `href` filter (see
`names.py`). The site must open from `file://` with no server, script or network request, so each
page is static HTML with one shared stylesheet; the Content-Security-Policy meta tag forbids any
other origin even if something slipped through.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import hashlib
import re
from pathlib import Path
from dataclasses import dataclass, field

import jinja2
from markupsafe import Markup

from scopecli.artifact.elements.inputs import InputCard, InputsPanel as InputsView  # noqa: F401 (the inputs panel)
from scopecli.core.version import __version__
from scopecli.export.names import fmt, href, imgsrc, short_hash

# static/heat.js without its comment and indentation (it is inlined in every unit page that has heatmaps)
HEAT_JS = "\n".join(line.strip() for line in re.sub(r"/\*.*?\*/", "", (Path(__file__).with_name("static") / "heat.js")
                                                  .read_text(encoding="utf-8"), flags=re.S).splitlines() if line.strip())
# the only script a page may run: the heatmap drawing above, allowed by its hash (nothing from a file can run)
_HEAT_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(HEAT_JS.encode("utf-8")).digest()).decode("ascii") + "'"
CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'self' file: 'unsafe-inline'; "
       f"script-src {_HEAT_HASH}; base-uri 'none'; form-action 'none'")
# `scope serve`: the same pages from a local server, plus the search form (its only form) and no framing
SERVE_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; "
             f"script-src {_HEAT_HASH}; form-action 'self'")  # (+ frame-ancestors in the HTTP header: not in a meta)
_SERVING = contextvars.ContextVar("scope_serving", default=False)
_NOTEBOOK = contextvars.ContextVar("scope_notebook", default=False)


@contextlib.contextmanager
def serving():
    """Render pages as `scope serve` answers them (its CSP, the search form) within this block."""
    token = _SERVING.set(True)
    try:
        yield
    finally:
        _SERVING.reset(token)


@contextlib.contextmanager
def in_notebook():
    """Render pages as notebook cells within this block: the main block only, in `notebook.html` (scoped CSS)."""
    token = _NOTEBOOK.set(True)
    try:
        yield
    finally:
        _NOTEBOOK.reset(token)


def environment() -> jinja2.Environment:
    return _environment(_SERVING.get(), _NOTEBOOK.get())


@functools.cache
def _notebook_css() -> str:
    """The gallery's stylesheet, to be nested under `.scope-nb` (page-level rules such as `body` then match nothing)."""
    css = (Path(__file__).with_name("static") / "style.css").read_text(encoding="utf-8")
    return re.sub(r"(^|[},\s]):root\b", r"\1&", css)  # its variables on the cell's element, not the notebook's root


@functools.cache
def _environment(serve: bool = False, notebook: bool = False) -> jinja2.Environment:
    """The templates of `scopecli/export/templates/`, autoescaped, with the gallery's filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("scopecli.export", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # package data: read once a process
    )
    env.filters.update(href=href, imgsrc=imgsrc, fmt=fmt, short_hash=short_hash)
    env.globals.update(csp=SERVE_CSP if serve else CSP, version=__version__, serving=serve, heat_js=Markup(HEAT_JS),
                       layout="notebook.html" if notebook else "base.html",
                       nb_css=Markup(_notebook_css()) if notebook else "")
    return env


def _render(template: str, **context) -> str:
    page = environment().get_template(template).render(**context)
    # Autoescape (markupsafe) writes ' and " as &#39; and &#34;; pages before the templates had
    # &#x27; and &quot; (html.escape). The same characters either way (a stored "&#39;" is written
    # "&amp;#39;", so only escapes match, and the pages have no <script> or <style>); spelling them as
    # before keeps exports comparable across versions.
    return page.replace("&#39;", "&#x27;").replace("&#34;", "&quot;")


def _svg(svg: str | None) -> Markup | None:
    """An SVG chart from `charts.py`: built from numbers (its few labels escaped there), so safe HTML."""
    return None if svg is None else Markup(svg)


@dataclass
class Tile:
    """One unit in a layer grid: its page, its thumbnail (relative to the layer folder) and a caption."""

    unit: int
    thumb: str
    kind: str  # "render" | "example"
    width: int
    height: int
    caption: str = ""
    label: str = ""  # on the by-label grid: the class the unit's top examples favour, with the lift
    lift_score: float = 0.0


@dataclass
class CaricatureCard:
    """A caricature on a layer page: the photo and its caricature (paths relative to the layer folder)."""

    src: str
    photo_src: str
    width: int
    height: int
    photo: str
    cosine: float
    magnitude_ratio: float
    meta: str


@dataclass
class AtlasCellCard:
    """One atlas cell on the atlas page: its place in the grid, its render, and the units nearest to it."""

    row: int
    col: int
    src: str
    count: int
    units: list[tuple[int, str | None]]  # (unit, its page relative to the layer folder, or None)

    @property
    def url(self) -> str | None:
        return self.units[0][1] if self.units else None


@dataclass
class AtlasPage:
    """A layer's activation atlas as the gallery shows it (paths relative to the layer folder)."""

    grid: int
    layout: str
    note: str
    seed: int
    vectors: int
    steps: int
    size: int
    mosaic: str
    mosaic_px: int
    cells: list[AtlasCellCard]


@dataclass
class LayerView:
    name: str
    slug: str
    units: int
    shape: tuple[int, int, int]
    rf_size: int
    rf_stride: int
    rendered: int
    collected: int
    tiles: list[Tile] = field(default_factory=list)
    pages: int = 1
    layer_renders: list = field(default_factory=list)  # RenderCards of whole-layer (deepdream) renders
    by_label: list[Tile] = field(default_factory=list)  # units with a label profile, highest lift first
    label_pages: int = 0
    space: dict | None = None  # a unit space's layer: base, method, k, nonlinearity, k_active, quality
    base: "LayerView | None" = None  # a unit space's layer: the layer it is fitted on
    spaces: list["LayerView"] = field(default_factory=list)  # the unit spaces fitted on this layer
    listed_units: int = 0  # units the plan lists (with a render or examples): the layer will have a page
    caricatures: list = field(default_factory=list)  # CaricatureCards (format 1.1)
    atlas: AtlasPage | None = None  # its activation atlas (format 1.1), on atlas.html
    labelled: bool = False  # its units have label profiles: the grid has a by-label ordering

    @property
    def linkable(self) -> bool:
        """Has, or will have once exported, a grid page (pages link to layers exported after them)."""
        return bool(self.listed_units) or self.has_page

    def space_text(self) -> str:
        """'sae, 768 units, topk 24 · held-out R² 0.91 · dead 2.0%' for a unit space's layer ('' otherwise)."""
        sp = self.space
        if not sp:
            return ""
        q = sp.get("quality") or {}
        nl = f"topk {sp.get('k_active')}" if sp.get("nonlinearity") == "topk" else sp.get("nonlinearity", "")
        parts = [f"{sp.get('method')}, {sp.get('k')} units, {nl}"]
        for key, label, spec in (("r2", "held-out R²", ".3f"), ("explained_variance", "explained variance", ".1%"),
                                 ("dead_fraction", "dead", ".1%")):
            if q.get(key) is not None:
                parts.append(f"{label} {fmt(q[key], spec)}")
        return " · ".join(parts)

    @property
    def has_page(self) -> bool:
        return bool(self.listed_units or self.tiles or self.layer_renders or self.caricatures or self.atlas)

    def page_file(self, page: int, sort: str = "") -> str:
        """Grid page `page` in unit order, or (sort "label") ordered by label lift."""
        if sort == "label":
            return "by-label.html" if page <= 1 else f"by-label-page-{page}.html"
        return "index.html" if page <= 1 else f"page-{page}.html"

    def pages_of(self, sort: str = "") -> int:
        return self.label_pages if sort == "label" else self.pages

    def pager(self, current: int, sort: str = "") -> list[tuple[str, int | None]]:
        """Pager items: ("prev"|"next"|"page"|"cur", page) and ("gap", None); the first, last and nearby pages."""
        items: list[tuple[str, int | None]] = []
        pages = self.pages_of(sort)
        if current > 1:
            items.append(("prev", current - 1))
        for p in range(1, pages + 1):
            if p == current:
                items.append(("cur", p))
            elif p <= 2 or p > pages - 2 or abs(p - current) <= 2:
                items.append(("page", p))
            elif items and items[-1][0] != "gap":
                items.append(("gap", None))
        if current < pages:
            items.append(("next", current + 1))
        return items


@dataclass
class ModelView:
    index: int
    slug: str
    name: str
    file: str
    info: dict
    layers: list[LayerView] = field(default_factory=list)
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # (title, url from the site root)
    has_effects: bool = False  # a layer holds effects (format 1.3): the model has a class index (classes/index.html)
    classes: list["ClassEntry"] = field(default_factory=list)  # its classes with effects, once the builder read them

    @property
    def label(self) -> str:
        return self.name

    @property
    def rendered(self) -> int:
        return sum(lv.rendered for lv in self.layers)

    @property
    def collected(self) -> int:
        return sum(lv.collected for lv in self.layers)

    @property
    def mosaic(self) -> list[tuple[LayerView, Tile]]:
        """Up to four thumbnails for the index card: each layer's first unit, then more units in order."""
        thumbs = [(lv, t) for lv in self.layers for t in lv.tiles[:1]][:4]
        more = [(lv, t) for lv in self.layers for t in lv.tiles[1:]]
        while len(thumbs) < 4 and more:
            thumbs.append(more.pop(0))
        return thumbs


@dataclass
class RenderCard:
    src: str
    width: int
    height: int
    objective: str
    diversity_index: int
    act_final: float
    act_robust: float
    ratio: float
    ratio_estimated: bool
    meta: str
    trace_svg: str | None  # from charts.trace_svg; shown as markup
    # the render's faithfulness evidence (format 1.3; None: not measured, nothing shown): how closely it drives the
    # unit through the same path as its top dataset examples, the same against another unit's examples, and
    # whether it is not above that chance level (a warning is shown)
    path_similarity: float | None = None
    path_baseline: float | None = None
    path_flagged: bool | None = None

    def __post_init__(self):
        self.trace_svg = _svg(self.trace_svg)


@dataclass
class ChannelCard:
    """One channel of a unit's best render in gray (models other than plain RGB), with its name."""

    src: str
    width: int
    height: int
    channel: int
    name: str


@dataclass
class ExampleCard:
    src: str
    width: int
    height: int
    rank: int
    score: float
    class_name: str | None
    image_path: str | None
    pixelated: bool
    heat_data: str = ""  # the unit over the patch (format 1.1 files): "WIDTH LOW HIGH BASE64" of the stored grid
    heat_sign: int = 1  # -1: a bottom example (its negative part is drawn)
    heat_style: str = ""  # its placement over the patch: left/top/width/height in %
    peak_style: str = ""  # where the ring marks the strongest position: left/top in %
    fires: bool = True  # False: the unit does not respond on this patch (no overlay drawn)

    @property
    def file_name(self) -> str:
        return (self.image_path or "").rsplit("/", 1)[-1]


@dataclass
class LinkRow:
    """A matched unit in another model, from a diff file; `url` is None when that unit has no page."""

    label: str
    url: str | None
    corr: float
    kinds: list[str]
    above_floor: bool | None
    floor: float
    diff_name: str

    @property
    def match(self) -> str:
        return ", ".join(self.kinds)


@dataclass
class DiffSide:
    """Model A or B of a diff file; `url` (relative to the site root) is None when it was not exported."""

    name: str
    url: str | None


@dataclass
class DiffRow:
    file: str
    a: DiffSide
    b: DiffSide
    pairs: list[tuple[str, str, int]]  # (layer of A, layer of B, mutual best matches)
    url: str | None = None  # its comparison page, relative to the site root


# ----------------------------------------------------------------------------------------- page kinds


def index_page(models: list[ModelView], diffs: list[DiffRow]) -> str:
    return _render("index.html", root="", models=models, diffs=diffs)


def model_page(m: ModelView) -> str:
    return _render("model.html", root="../../", m=m)


def layer_page(m: ModelView, lv: LayerView, current: int, per_page: int, sort: str = "") -> str:
    first = (current - 1) * per_page
    tiles = lv.by_label if sort == "label" else lv.tiles
    return _render("layer.html", root="../../../", m=m, lv=lv, current=current, sort=sort,
                   tiles=tiles[first: first + per_page], first=first)


def atlas_page(m: ModelView, lv: LayerView) -> str:
    """A layer's activation atlas, at m/<model>/<layer>/atlas.html."""
    return _render("atlas.html", root="../../../", m=m, lv=lv, a=lv.atlas)


def comparison_page(c) -> str:
    """The page of one diff file (`comparisons.ComparisonView`), at d/<slug>/index.html."""
    return _render("comparison.html", root="../../", c=c)


STAT_ROWS = [("count", "positions", ".0f"), ("mean", "mean", ".4g"), ("std", "std", ".4g"), ("min", "min", ".4g"),
             ("max", "max", ".4g"), ("frac_pos", "positive", ".1%")]


@dataclass
class Panel:
    """An element's section of a unit page: its template (templates/panels/<panel>.html) and variables."""

    panel: str
    context: dict


def unit_page(m: ModelView, lv: LayerView, unit: int, list_page: int, prev_unit: int | None, next_unit: int | None,
              renders: list[RenderCard], examples: dict[str, list[ExampleCard]], stats: dict,
              hist_svg: str | None, strip_svg: str | None, links: list[LinkRow], panels: list[Panel] = (),
              channels: list[ChannelCard] = (), channel_note: str = "") -> str:
    """`channels`: each channel of the best render in gray, `channel_note` how the colour pictures are composed
    (both empty for plain RGB models: their page is as it always was)."""
    keys = STAT_ROWS + [(k, k, ".4g") for k in sorted(stats) if k.startswith("p") and k not in ("positions",)]
    stat_rows = [(label, fmt(stats.get(k), spec)) for k, label, spec in keys if k in stats]
    return _render("unit.html", root="../../../../", m=m, lv=lv, unit=unit, list_page=list_page,
                   prev_unit=prev_unit, next_unit=next_unit, renders=renders, examples=examples, stats=stats,
                   stat_rows=stat_rows, hist_svg=_svg(hist_svg), strip_svg=_svg(strip_svg), links=links,
                   panels=list(panels), channels=list(channels), channel_note=channel_note)

@dataclass
class Hit:
    """One unit a search answered (`scope serve`): its page and thumbnail (absolute URLs) and why it matched."""

    label: str
    url: str | None
    thumb: str
    width: int
    height: int
    score: str
    detail: str


def search_page(query: str, title: str, hits: list[Hit], note: str = "", classes=()) -> str:
    """What a `scope serve` search answered, at /search; `classes`: [(label, url)] of class pages whose name
    matched (files with effects)."""
    return _render("search.html", root="/", query=query, title=title, hits=hits, note=note, classes=list(classes))


# ----------------------------------------------------------------------------------------- classes (effects)


@dataclass
class ClassEntry:
    """A class of a model that has effects (format 1.3): its page is m/<model>/classes/<slug>.html."""

    index: int  # the model's output index
    name: str
    slug: str  # "<index>-<slug(name)>": unique within the model
    images: int  # images of the class the effects were computed on (the most over its layers)
    layers: list[str] = field(default_factory=list)  # layers whose effects have the class

    @property
    def file(self) -> str:
        return f"{self.slug}.html"


@dataclass
class ClassUnitCard:
    """One of a class's top units at a layer: its page and thumbnail (the grid's tile) where the gallery lists it."""

    unit: int
    share: float  # of the class's positive attribution at the layer
    attribution: float  # mean per image of the class
    url: str | None  # relative to m/<model>/classes/
    thumb: str
    width: int
    height: int
    ablated: bool = False  # one of the units the ablation check set to their mean


@dataclass
class ClassLayer:
    """A class page's section for one layer: its top units, and the ablation evidence (sentence "" when the
    class was not checked at this layer)."""

    layer: str
    url: str | None  # the layer's grid, relative to m/<model>/classes/
    target: str
    images: int
    units: list[ClassUnitCard]
    sentence: str = ""
    accuracy: str = ""  # "accuracy on its images 100% → 50% with them ablated (random units: 100% ± 0%)"


def classes_page(m: ModelView) -> str:
    """A model's classes with effects, at m/<model>/classes/index.html."""
    return _render("classes.html", root="../../../", m=m)


def class_page(m: ModelView, c: ClassEntry, layers: list[ClassLayer]) -> str:
    """One class: per layer with effects, its top units and the ablation check, at m/<model>/classes/<slug>.html."""
    return _render("class.html", root="../../../", m=m, c=c, layers=layers)


def error_page(title: str, message: str, root: str = "/") -> str:
    """A page that says what went wrong with one part of a file, in one line (`scope serve`)."""
    return _render("error.html", root=root, title=title, message=message)
