"""HTML of the gallery's four page kinds: index of models, model (layer list), layer grid, unit.

Why plain string templates: the site must open from `file://` with no server, script or network
request, so each page is static HTML with one shared stylesheet. Every stored string passes
through `esc` and every link through `href` (see `names.py`); the Content-Security-Policy meta
tag forbids any other origin even if something slipped through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scopecli import __version__
from scopecli.export.names import esc, fmt, href, short_hash

CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'self' file: 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


@dataclass
class Tile:
    """One unit in a layer grid: its page, its thumbnail (relative to the layer folder) and a caption."""

    unit: int
    thumb: str
    kind: str  # "render" | "example"
    width: int
    height: int
    caption: str = ""


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

    @property
    def has_page(self) -> bool:
        return bool(self.tiles or self.layer_renders)

    def page_file(self, page: int) -> str:
        return "index.html" if page <= 1 else f"page-{page}.html"


@dataclass
class ModelView:
    index: int
    slug: str
    name: str
    file: str
    info: dict
    layers: list[LayerView] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name


def _head(title: str, root: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(CSP)}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        f"<title>{esc(title)}</title><link rel=\"stylesheet\" href=\"{href(root + 'style.css')}\"></head>\n<body>"
    )


def page(title: str, root: str, crumbs: list[tuple[str, str | None]], body: str) -> str:
    """A full page: dark header with breadcrumbs [(text, url or None)], then the body."""
    trail = ['<a class="brand" href="' + href(root + "index.html") + '">scope</a>']
    for text, url in crumbs:
        trail.append('<span class="sep">/</span>' + (f'<a href="{href(url)}">{esc(text)}</a>' if url else f'<span>{esc(text)}</span>'))
    return (
        _head(title, root)
        + f'<header class="top"><nav>{"".join(trail)}</nav></header>\n<main>'
        + body
        + f'</main>\n<footer>made by scope {esc(__version__)} · static files, no network</footer></body></html>\n'
    )


def _facts(rows: list[tuple[str, str]]) -> str:
    """A definition list; values are already-escaped HTML."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _img(src: str, w: int, h: int, alt: str, cls: str = "", lazy: bool = True) -> str:
    c = f' class="{esc(cls)}"' if cls else ""
    lz = ' loading="lazy" decoding="async"' if lazy else ""
    return f'<img{c} src="{href(src)}" width="{int(w)}" height="{int(h)}" alt="{esc(alt)}"{lz}>'


# ----------------------------------------------------------------------------------------------- index


def index_page(models: list[ModelView], diffs: list[dict]) -> str:
    cards = []
    for m in models:
        thumbs = [(lv, t) for lv in m.layers for t in lv.tiles[:1]][:4]
        more = [(lv, t) for lv in m.layers for t in lv.tiles[1:]]
        while len(thumbs) < 4 and more:
            thumbs.append(more.pop(0))
        mosaic = "".join(_img(f"m/{m.slug}/{lv.slug}/{t.thumb}", t.width, t.height, f"{lv.name}:{t.unit}")
                         for lv, t in thumbs)
        info = m.info
        model = info.get("model") or {}
        ds = info.get("dataset")
        units_r = sum(lv.rendered for lv in m.layers)
        units_c = sum(lv.collected for lv in m.layers)
        facts = [
            ("architecture", esc(model.get("architecture", "–"))),
            ("weights", esc(model.get("weights", "–"))),
            ("fingerprint", f'<code title="{esc(model.get("fingerprint", ""))}">{esc(short_hash(model.get("fingerprint")))}</code>'),
            ("layers", esc(len(m.layers))),
            ("units rendered", esc(units_r)),
            ("units collected", esc(units_c)),
            ("dataset", esc(f"{ds['count']} images, {ds['classes']} classes") +
             f' <code title="{esc(ds.get("fingerprint") or "")}">{esc(short_hash(ds.get("fingerprint")))}</code>'
             if ds else "–"),
            ("file", f"<code>{esc(m.file)}</code>"),
        ]
        cards.append(
            f'<a class="card model" href="{href(f"m/{m.slug}/index.html")}"><div class="mosaic">{mosaic}</div>'
            f'<h2>{esc(m.name)}</h2></a>' + _facts(facts)
        )
    body = ['<h1>Models</h1>']
    if models:
        body.append('<div class="cards">' + "".join(f'<section class="cardbox">{c}</section>' for c in cards) + "</div>")
    else:
        body.append('<p class="empty">No artifact had renders or dataset examples to show.</p>')
    if diffs:
        body.append("<h1>Model comparisons</h1><table class=\"list\"><thead><tr><th>diff file</th><th>A</th><th>B</th>"
                    "<th>layer pairs (mutual best matches)</th></tr></thead><tbody>")
        for d in diffs:
            pairs = ", ".join(f"{esc(a)} ↔ {esc(b)} ({n})" for a, b, n in d["pairs"]) or "–"
            body.append(f"<tr><td><code>{esc(d['file'])}</code></td><td>{d['a']}</td><td>{d['b']}</td><td>{pairs}</td></tr>")
        body.append("</tbody></table>")
    return page("scope gallery", "", [("models", None)], "".join(body))


# ----------------------------------------------------------------------------------------------- model


def model_page(m: ModelView) -> str:
    root = "../../"
    info = m.info
    model = info.get("model") or {}
    ds = info.get("dataset")
    pre = model.get("preprocess") or {}
    facts = [
        ("spec", esc(model.get("spec", "–"))),
        ("architecture", esc(model.get("architecture", "–"))),
        ("weights", esc(model.get("weights", "–"))),
        ("fingerprint", f"<code>{esc(model.get('fingerprint', '–'))}</code>"),
        ("input", esc(f"{pre.get('crop', '–')}px (resize {pre.get('resize', '–')}), mean {pre.get('mean', '–')}, std {pre.get('std', '–')}")),
        ("dataset", esc(f"{ds['count']} images, {ds['classes']} classes, {ds['skipped']} skipped") +
         f" <code>{esc(ds.get('fingerprint') or '')}</code>" if ds else "–"),
        ("file", f"<code>{esc(m.file)}</code> ({esc(fmt(info.get('size_bytes', 0) / 1e6, '.1f'))} MB, format {esc(info.get('format_version', '?'))})"),
        ("runs", "<br>".join(f"<code>{esc(c)}</code>" for c in (info.get("commands") or []) if c) or "–"),
    ]
    rows = []
    for lv in m.layers:
        strip = "".join(_img(f"{lv.slug}/{t.thumb}", t.width, t.height, f"{lv.name}:{t.unit}") for t in lv.tiles[:8])
        if not strip and lv.layer_renders:
            r = lv.layer_renders[0]
            strip = _img(f"{lv.slug}/{r.src}", r.width, r.height, f"{lv.name} deepdream")
        c, h, w = lv.shape
        name = f"<code>{esc(lv.name)}</code>"
        link = f'<a href="{href(lv.slug + "/index.html")}">{name}</a>' if lv.has_page else name
        rows.append(
            f'<tr><td>{link}</td>'
            f'<td class="num">{lv.units}</td><td class="num">{h}×{w}</td><td class="num">{lv.rf_size}/{lv.rf_stride}</td>'
            f'<td class="num">{lv.rendered}</td><td class="num">{lv.collected}</td>'
            + (f'<td><a class="strip" href="{href(lv.slug + "/index.html")}">{strip}</a></td></tr>' if lv.has_page
               else '<td class="muted">nothing stored</td></tr>')
        )
    body = (
        f"<h1>{esc(m.name)}</h1>" + _facts(facts)
        + '<h2>Layers</h2><table class="list layers"><thead><tr><th>layer</th><th class="num">units</th><th class="num">grid</th>'
        '<th class="num">RF size/stride</th><th class="num">rendered</th><th class="num">collected</th><th>preview</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table>"
    )
    return page(f"{m.name} · scope", root, [(m.name, None)], body)


# ----------------------------------------------------------------------------------------------- layer


def _pager(lv: LayerView, current: int) -> str:
    if lv.pages <= 1:
        return ""
    items = []
    if current > 1:
        items.append(f'<a rel="prev" href="{href(lv.page_file(current - 1))}">‹ prev</a>')
    for p in range(1, lv.pages + 1):
        if p == current:
            items.append(f'<span class="cur">{p}</span>')
        elif p <= 2 or p > lv.pages - 2 or abs(p - current) <= 2:
            items.append(f'<a href="{href(lv.page_file(p))}">{p}</a>')
        elif items and items[-1] != '<span class="gap">…</span>':
            items.append('<span class="gap">…</span>')
    if current < lv.pages:
        items.append(f'<a rel="next" href="{href(lv.page_file(current + 1))}">next ›</a>')
    return '<nav class="pager">' + "".join(items) + "</nav>"


def layer_page(m: ModelView, lv: LayerView, current: int, per_page: int) -> str:
    root = "../../../"
    tiles = lv.tiles[(current - 1) * per_page: current * per_page]
    cells = []
    for t in tiles:
        badge = '<span class="badge" title="no render: top dataset example">ex</span>' if t.kind == "example" else ""
        title = f"unit {t.unit}" + (f" · {t.caption}" if t.caption else "")
        cells.append(
            f'<a class="tile" href="{href(f"u/{t.unit}.html")}" title="{esc(title)}">'
            + _img(t.thumb, t.width, t.height, f"{lv.name}:{t.unit}")
            + f'<span class="uid">{t.unit}</span>{badge}</a>'
        )
    c, h, w = lv.shape
    first = (current - 1) * per_page
    shown = f"units {first + 1}–{first + len(tiles)} of {len(lv.tiles)} shown" if lv.pages > 1 else f"{len(lv.tiles)} units shown"
    body = (
        f'<h1><code>{esc(lv.name)}</code></h1><p class="sub">{esc(m.name)} · {lv.units} units · {h}×{w} · '
        f"receptive field {lv.rf_size}px, stride {lv.rf_stride} · {lv.rendered} rendered · {lv.collected} collected · "
        f"{esc(shown)}</p>"
        + (f'<section><h2>Layer visualization (DeepDream)</h2>{render_cards(lv.layer_renders, lv.name)}</section>'
           if current == 1 and lv.layer_renders else "")
        + (_pager(lv, current) + '<div class="grid">' + "".join(cells) + "</div>" + _pager(lv, current) if cells else "")
    )
    crumbs = [(m.name, "../index.html"), (lv.name, None if current == 1 else "index.html")]
    if current > 1:
        crumbs.append((f"page {current}", None))
    return page(f"{lv.name} · {m.name} · scope", root, crumbs, body)


# ----------------------------------------------------------------------------------------------- unit


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
    trace_svg: str | None


def render_cards(renders: list[RenderCard], what: str) -> str:
    """Render figures with objective, achieved activation, ratio to the dataset max and the trace."""
    cards = []
    for r in renders:
        ratio = "" if fmt(r.ratio) == "–" else (
            f' <span class="ratio" title="achieved activation / dataset maximum{" (computed by export)" if r.ratio_estimated else ""}">'
            f"×{esc(fmt(r.ratio, '.2f'))} dataset max</span>")
        label = r.objective + (f" #{r.diversity_index}" if r.diversity_index else "")
        cards.append(
            '<figure class="render">' + _img(r.src, r.width, r.height, f"{label} render of {what}",
                                             "big px" if max(r.width, r.height) < 128 else "big", lazy=False)
            + f'<figcaption><b>{esc(label)}</b> activation <b>{esc(fmt(r.act_final))}</b>{ratio}'
            + f'<br><span class="muted">robust {esc(fmt(r.act_robust))} · {esc(r.meta)}</span>'
            + (f'<br>{r.trace_svg}' if r.trace_svg else "") + "</figcaption></figure>"
        )
    return '<div class="renders">' + "".join(cards) + "</div>"


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


@dataclass
class LinkRow:
    html_target: str  # escaped HTML (a link or plain text)
    corr: float
    kinds: list[str]
    above_floor: bool | None
    floor: float
    diff_name: str


def unit_page(m: ModelView, lv: LayerView, unit: int, list_page: int, prev_unit: int | None, next_unit: int | None,
              renders: list[RenderCard], examples: dict[str, list[ExampleCard]], stats: dict,
              hist_svg: str | None, strip_svg: str | None, links: list[LinkRow]) -> str:
    root = "../../../../"
    nav = []
    nav.append(f'<a class="prev" href="{href(f"{prev_unit}.html")}">‹ unit {prev_unit}</a>' if prev_unit is not None
               else '<span class="prev off">‹</span>')
    nav.append(f'<a class="up" href="{href("../" + lv.page_file(list_page))}">all units</a>')
    nav.append(f'<a class="next" href="{href(f"{next_unit}.html")}">unit {next_unit} ›</a>' if next_unit is not None
               else '<span class="next off">›</span>')
    c, h, w = lv.shape
    parts = [
        f'<div class="unithead"><h1><code>{esc(lv.name)}</code>:<span class="unitno">{unit}</span></h1>'
        f'<nav class="unitnav">{"".join(nav)}</nav></div>'
        f'<p class="sub">{esc(m.name)} · unit {unit} of {lv.units} · receptive field {lv.rf_size}px, stride {lv.rf_stride}</p>'
    ]
    if renders:
        parts.append('<section><h2>Feature visualization</h2>' + render_cards(renders, f"{lv.name}:{unit}") + "</section>")
    titles = {"top": "Dataset examples: highest activation", "bottom": "Dataset examples: lowest activation"}
    for which in ("top", "bottom"):
        exs = examples.get(which) or []
        if not exs:
            continue
        cells = []
        for e in exs:
            base = (e.image_path or "").rsplit("/", 1)[-1]
            cls = "px" if e.pixelated else ""
            cells.append(
                f'<figure class="ex" title="{esc(e.image_path or "")}">' + _img(e.src, e.width, e.height, f"{which} example {e.rank + 1}", cls)
                + f'<figcaption><b>{esc(fmt(e.score))}</b> <span class="cls">{esc(e.class_name or "")}</span>'
                + f'<span class="file">{esc(base)}</span></figcaption></figure>'
            )
        parts.append(f'<section><h2>{esc(titles[which])}</h2><div class="examples">' + "".join(cells) + "</div></section>")
    if stats:
        keys = [("count", "positions", ".0f"), ("mean", "mean", ".4g"), ("std", "std", ".4g"), ("min", "min", ".4g"),
                ("max", "max", ".4g"), ("frac_pos", "positive", ".1%")]
        keys += [(k, k, ".4g") for k in sorted(stats) if k.startswith("p") and k not in ("positions",)]
        table = "".join(f"<tr><th>{esc(label)}</th><td>{esc(fmt(stats.get(k), spec))}</td></tr>"
                        for k, label, spec in keys if k in stats)
        charts = "".join(x for x in (hist_svg, strip_svg) if x)
        parts.append('<section><h2>Activation statistics</h2><div class="stats">'
                     f'<div class="charts">{charts}</div><table class="numbers">{table}</table></div>'
                     '<p class="muted">over every spatial position of every collected image; histogram bars are log counts</p></section>')
    if links:
        rows = []
        for ln in links:
            chance = ("" if ln.above_floor is None else
                      (f'<span class="ok">above chance ({esc(fmt(ln.floor, ".2f"))})</span>' if ln.above_floor
                       else f'<span class="warn">at chance ({esc(fmt(ln.floor, ".2f"))})</span>'))
            rows.append(f"<tr><td>{ln.html_target}</td><td class=\"num\">{esc(fmt(ln.corr, '.3f'))}</td>"
                        f"<td>{esc(', '.join(ln.kinds))}</td><td>{chance}</td><td><code>{esc(ln.diff_name)}</code></td></tr>")
        parts.append('<section><h2>Matched units in other models</h2><table class="list"><thead><tr><th>unit</th>'
                     '<th>correlation</th><th>match</th><th>chance level</th><th>from</th></tr></thead><tbody>'
                     + "".join(rows) + "</tbody></table></section>")
    crumbs = [(m.name, "../../index.html"), (lv.name, "../" + lv.page_file(list_page)), (f"unit {unit}", None)]
    return page(f"{lv.name}:{unit} · {m.name} · scope", root, crumbs, "".join(parts))
