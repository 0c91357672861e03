"""The gallery's Jinja2 templates: they ship, they autoescape, they hold no script, new pages can reuse them."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest

from scopecli.export import pages
from scopecli.export.names import href
from scopecli.export.pages import (
    DiffRow,
    DiffSide,
    ExampleCard,
    LayerView,
    LinkRow,
    ModelView,
    RenderCard,
    Tile,
)

EXPORT = Path(pages.__file__).parent
TEMPLATES = EXPORT / "templates"
ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script> & \"q\""
EVIL_ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;"


def _template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.rglob("*") if p.is_file())


def test_templates_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(re.match(r"jinja2\s*>=\s*3\.1", d) for d in project["project"]["dependencies"])
    patterns = project["tool"]["setuptools"]["package-data"]["scopecli.export"]
    shipped = {p for pattern in patterns for p in EXPORT.glob(pattern) if p.is_file()}
    files = _template_files()
    assert {"base.html", "index.html", "model.html", "layer.html", "unit.html"} <= {p.name for p in files}
    missing = [p.relative_to(EXPORT).as_posix() for p in files if p not in shipped]
    assert not missing, f"templates not in [tool.setuptools.package-data]: {missing}"


def test_environment_autoescapes_and_every_template_compiles():
    env = pages.environment()
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    names = env.list_templates()
    assert sorted(names) == sorted(p.relative_to(TEMPLATES).as_posix() for p in _template_files())
    for name in names:
        env.get_template(name)
    markupsafe_spelling = EVIL_ESCAPED.replace("&#x27;", "&#39;").replace("&quot;", "&#34;")
    assert env.from_string("{{ x }}").render(x=EVIL) == markupsafe_spelling


def test_templates_hold_no_script_handlers_or_safe_filter():
    for path in _template_files():
        text = re.sub(r"\{#.*?#\}", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)  # not comments
        # one script, the package's heatmap drawing (static/heat.js, allowed by its hash in the CSP), nothing else
        assert text.lower().count("<script") == text.count("<script>{{ heat_js }}</script>"), path
        assert not re.search(r"\son[a-z]+\s*=", text, re.IGNORECASE), path  # inline event handlers
        assert "|safe" not in text.replace(" ", ""), path  # markup is marked safe in Python, nowhere else
        assert "javascript:" not in text.lower(), path


def test_the_only_script_is_allowed_by_its_hash_and_reads_no_page_text():
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(pages.HEAT_JS.encode()).digest()).decode()
    for csp in (pages.CSP, pages.SERVE_CSP):
        (script,) = [d.strip() for d in csp.split(";") if d.strip().startswith("script-src")]
        assert script == f"script-src 'sha256-{digest}'"  # no 'unsafe-inline', no source but this one script
    assert "innerHTML" not in pages.HEAT_JS and "eval" not in pages.HEAT_JS and "fetch" not in pages.HEAT_JS


def test_href_only_makes_relative_paths():
    assert href("javascript:alert(1)") == "javascript%3Aalert%281%29"  # no scheme survives
    assert href("a b/<x>'\"&?#.html") == "a%20b/%3Cx%3E%27%22%26%3F%23.html"
    assert pages.environment().from_string('<a href="{{ u|href }}">').render(u="x\" onclick=\"y") == \
        '<a href="x%22%20onclick%3D%22y">'


def _hostile_model() -> tuple[ModelView, LayerView]:
    lv = LayerView(name=f"layer {EVIL}", slug="01-layer", units=3, shape=(3, 2, 2), rf_size=5, rf_stride=2,
                   rendered=1, collected=1, tiles=[Tile(1, "img/r1_0.png", "render", 32, 32, f"cap {EVIL}")])
    info = {"model": {"spec": EVIL, "architecture": EVIL, "weights": EVIL, "fingerprint": EVIL,
                      "preprocess": {"crop": EVIL}},
            "dataset": {"count": 1, "classes": 1, "skipped": 0, "fingerprint": EVIL},
            "commands": [EVIL, "", "second"], "size_bytes": 1000, "format_version": EVIL}
    return ModelView(0, "01-m", f"model {EVIL}", f"file {EVIL}.h5", info, [lv]), lv


def _assert_safe(html: str) -> None:
    assert EVIL not in html and "<script" not in html
    assert EVIL_ESCAPED in html
    assert '<meta http-equiv="Content-Security-Policy" content="default-src &#x27;none&#x27;;' in html
    assert '<meta name="referrer" content="no-referrer">' in html


def test_every_page_kind_escapes_hostile_strings():
    m, lv = _hostile_model()
    render = RenderCard("../img/r1_0.png", 32, 32, EVIL, 1, 1.0, 0.5, 0.9, True, f"meta {EVIL}",
                        '<svg class="chart trace"></svg>')
    example = ExampleCard("../img/t1_0.jpg", 24, 24, 0, 0.5, EVIL, f"dir/{EVIL}.jpg", True)
    link = LinkRow(f"other {EVIL}", f"../../../../m/02-x/01-l/u/{EVIL}.html", 0.9, [EVIL, "best match"], True,
                   0.1, f"diff {EVIL}.h5")
    diff = DiffRow(f"d {EVIL}.h5", DiffSide(EVIL, f"m/{EVIL}/index.html"), DiffSide(EVIL, None), [(EVIL, EVIL, 3)])
    html = {
        "index": pages.index_page([m], [diff]),
        "model": pages.model_page(m),
        "layer": pages.layer_page(m, lv, 1, 128),
        "unit": pages.unit_page(m, lv, 1, 1, None, None, [render], {"top": [example], "bottom": []},
                                {"mean": 1.0, "p99": 2.0}, None, '<svg class="chart strip"></svg>', [link]),
    }
    for kind, text in html.items():
        _assert_safe(text)
        for ref in re.findall(r'(?:href|src)="([^"]*)"', text):
            assert re.fullmatch(r"[A-Za-z0-9._/%~-]+", ref), (kind, ref)  # percent-encoded relative paths
    unit = html["unit"]
    assert '<svg class="chart trace"></svg>' in unit and '<svg class="chart strip"></svg>' in unit  # Markup
    assert "(not exported)" in html["index"]


def test_a_new_page_kind_reuses_base_and_partials():
    """What a new view (comparison page, atlas) starts from: extend base.html, import partials."""
    page = pages.environment().from_string(
        '{% extends "base.html" %}'
        '{% from "partials/common.html" import crumb, section with context %}'
        '{% from "partials/figures.html" import render_figures with context %}'
        '{% block title %}{{ title }} · scope{% endblock %}'
        '{% block crumbs %}{{ crumb(title) }}{% endblock %}'
        '{% block main %}{% call section(title) %}{{ render_figures(renders, title) }}{% endcall %}{% endblock %}'
    ).render(root="../", title=EVIL, renders=[RenderCard("r.png", 8, 8, "channel", 0, 1.0, 1.0, float("nan"),
                                                         False, "m", None)])
    assert "<script" not in page and 'href="../style.css"' in page and "Content-Security-Policy" in page
    assert '<figure class="render"><img class="big px" src="../r.png"' in page  # srcs are site-root-relative
    assert page.count("&lt;script&gt;") == 4  # title, crumb, section heading, alt text
