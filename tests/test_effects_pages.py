"""Where effects show (format 1.3): unit pages' votes, class pages in the export and the server, `scope query
--class`, `scope show`; and render path similarity next to each render where measured. Files built through the
real commands (collect, effects, render) on the tiny models; old files' pages are checked by the golden tests."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from collect_builders import colour_images
from conftest import assert_one_line_error
from export_helpers import check_site_links
from scopecli.artifact import open_artifact
from scopecli.export.site import export_site

COLLECT = ("--top-k", "3", "--bottom-k", "1", "--probe", "4", "--batch", "4", "--workers", "0", "--input-size", "32",
           "--quiet")
GREEN = "gr<een> & 'co'/.."  # a stranger's class name: escaped on every page, a safe file name
OLD = Path(__file__).parent / "fixtures" / "artifact-1.1.h5"


def _scope(*args) -> None:
    from scopecli.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, args


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """d.h5: decisive_net (relu:0 alone drives "red") with effects and the ablation check; c.h5: tiny_cnn with
    effects (collect --effects) and renders of layer 3; old.h5: a format 1.1 fixture without effects."""
    t = tmp_path_factory.mktemp("effects_pages")
    data = colour_images(t / "data", green=GREEN)
    labels = t / "labels.tsv"
    _scope("collect", "tinymodels:decisive_net", "--data", data, "--labels", labels, "-o", t / "d.h5",
           "--layer", "relu,flat", *COLLECT)
    _scope("effects", t / "d.h5", "--data", data, "--ablate-k", "1", "--draws", "4", "--quiet")
    _scope("collect", "tinymodels:tiny_cnn", "--data", data, "--labels", labels, "-o", t / "c.h5", "--layer", "1,3",
           "--effects", *COLLECT)
    _scope("render", "tinymodels:tiny_cnn", "--layer", "3", "--units", "0:2", "--steps", "8", "--input-size", "32",
           "-o", t / "c.h5", "--quiet")
    shutil.copy(OLD, t / "old.h5")
    return {"d": str(t / "d.h5"), "c": str(t / "c.h5"), "old": str(t / "old.h5"), "dir": t}


@pytest.fixture(scope="module")
def site(files):
    out = files["dir"] / "site"
    export_site([files["d"], files["c"], files["old"]], out)
    return out


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _main(text: str) -> str:
    """A page's <main> with picture srcs left out (the export and the server place pictures differently)."""
    body = text[text.index("<main>"): text.index("</main>")]
    return re.sub(r' src="[^"]*"', "", body)


def _rows(text: str, cls: str) -> list[str]:
    """The <tr> rows of the first table of class `cls`."""
    table = text[text.index(f'class="{cls}'):]
    table = table[: table.index("</table>")]
    return re.findall(r"<tr>(.*?)</tr>", table, re.S)


# ---------------------------------------------------------------------------------------------- export


def test_class_page_lists_the_decisive_unit_first_with_its_share_and_the_ablation(site, files):
    page = site / "m/01-d/classes/0-red.html"
    text = _text(page)
    relu = text[text.index("<h2>Layer relu</h2>"): text.index("<h2>Layer flat</h2>")]
    first = _rows(relu, "list classunits")[1]  # [0] is the header row
    assert 'href="../01-relu/u/0.html"' in first and "<code>relu:0</code>" in first
    assert '<td class="num">100.0%</td>' in first  # relu:0 holds all of red's positive attribution
    assert "ablated in the check" in first
    plain = html.unescape(relu)
    with open_artifact(files["d"]) as art:
        ce = art.class_units("relu", "red")
    assert ce.sentence().startswith("ablating these 1 units lowers red's logit by") and ce.sentence() in plain
    assert "accuracy on its images 100% →" in plain
    assert re.search(r'<img class="thumb" src="../../../i/[0-9a-f]{2}/[0-9a-f]{20}\.(png|jpg)"', relu)
    assert "<h1>red</h1>" in text and "output 0 · 4 images" in text


def test_class_index_and_model_page_link_the_classes(site):
    index = _text(site / "m/01-d/classes/index.html")
    rows = _rows(index, "list classes")[1:]
    assert len(rows) == 2
    assert '<a href="0-red.html">red</a>' in rows[0] and '<td class="num">4</td>' in rows[0]
    assert '<a href="1-gr-een-co.html">gr&lt;een&gt; &amp; &#x27;co&#x27;/..</a>' in rows[1]  # escaped, safe name
    assert "<script" not in _text(site / "m/01-d/classes/1-gr-een-co.html").lower()
    assert 'href="classes/index.html"' in _text(site / "m/01-d/index.html")
    assert (site / "m/02-c/classes/index.html").exists()
    assert check_site_links(site) > 0  # every link of the site, class pages included, resolves


def test_unit_page_shows_its_votes_with_class_links(site):
    text = _text(site / "m/01-d/01-relu/u/0.html")
    assert "<h2>What it votes for</h2>" in text
    votes = _rows(text, "list votes pos")
    assert "<th>votes for</th>" in votes[0]
    assert '<a href="../../classes/0-red.html">red</a>' in votes[1] and '<td class="num">+13' in votes[1]
    assert 'class="list votes neg"' not in text  # relu:0 votes against nothing
    green = _text(site / "m/01-d/01-relu/u/1.html")
    assert '<a href="../../classes/1-gr-een-co.html">gr&lt;een&gt; &amp; &#x27;co&#x27;/..</a>' in green
    blue = _text(site / "m/01-d/01-relu/u/2.html")  # the blue unit drives nothing: no section
    assert "What it votes for" not in blue


def test_old_files_have_no_class_pages_and_unchanged_unit_pages(site):
    old = site / "m/03-old"
    assert not (old / "classes").exists()
    assert "Classes" not in _text(old / "index.html")
    for page in old.glob("*/u/*.html"):
        t = _text(page)
        assert "votes" not in t and "path similarity" not in t


def test_renders_show_nothing_when_their_path_similarity_was_not_measured(site):
    text = _text(site / "m/02-c/02-3/u/0.html")
    assert 'class="render"' in text and "path similarity" not in text


@pytest.mark.parametrize("sim, base, flagged", [(0.62, 0.21, False), (0.12, 0.3, True)])
def test_path_similarity_is_shown_next_to_each_render_and_flagged(files, tmp_path, monkeypatch, scope_cli, sim,
                                                                  base, flagged):
    """The evidence as the render views give it (`path_similarity`, `path_baseline`, `path_flagged`)."""
    with open_artifact(files["c"]) as art:
        cls = type(art.unit("3", 0).renders[0])
    monkeypatch.setattr(cls, "path_similarity", property(lambda self: sim), raising=False)
    monkeypatch.setattr(cls, "path_baseline", property(lambda self: base), raising=False)
    monkeypatch.setattr(cls, "path_flagged", property(lambda self: flagged), raising=False)
    out = tmp_path / "site"
    export_site([files["c"]], out)
    text = html.unescape(_text(out / "m/01-c/02-3/u/0.html"))
    assert f"path similarity {sim:.2f} (random unit {base:.2f})" in text
    warning = "this picture may not show how the unit responds to photos"
    assert (warning in text) == flagged
    r = scope_cli("show", files["c"], "3:0", "--json")
    assert r.code == 0, r.stderr
    render = json.loads(r.stdout)["renders"][0]
    assert render["path_similarity"] == sim and render["path_baseline"] == base and render["path_flagged"] is flagged
    r = scope_cli("show", files["c"], "3:0")
    assert f"path similarity {sim:.2f} (random unit {base:.2f})" in r.stdout
    assert (warning in " ".join(r.stdout.split())) == flagged
    r = scope_cli("show", files["c"], "3:0", "-o", tmp_path / "card.png")
    assert r.code == 0 and (tmp_path / "card.png").exists()


# ---------------------------------------------------------------------------------------------- serve


@pytest.fixture(scope="module")
def app(files):
    from scopecli.serve.app import App, Catalog

    cat = Catalog([files["d"], files["c"], files["old"]])
    yield App(cat)
    cat.close()


@pytest.mark.parametrize("rel", ["m/01-d/classes/index.html", "m/01-d/classes/0-red.html",
                                 "m/01-d/classes/1-gr-een-co.html", "m/02-c/classes/0-red.html",
                                 "m/01-d/01-relu/u/0.html", "m/01-d/index.html"])
def test_server_answers_the_class_pages_as_exported(app, site, rel):
    r = app.handle("GET", "/" + rel)
    assert r.status == 200 and r.content_type.startswith("text/html")
    assert _main(r.body.decode()) == _main(_text(site / rel))  # the same builder, the same content
    for src in re.findall(r'src="(/img/[^"]+)"', r.body.decode()):
        assert app.handle("GET", html.unescape(src)).status == 200


def test_server_class_folder_answers_its_index(app):
    assert app.handle("GET", "/m/01-d/classes/").body == app.handle("GET", "/m/01-d/classes/index.html").body


@pytest.mark.parametrize("target", [
    "/m/01-d/classes/1-green.html", "/m/01-d/classes/2-red.html", "/m/01-d/classes/0-red",
    "/m/01-d/classes/999999999-red.html", "/m/01-d/classes/99999999999999999999-red.html",
    "/m/01-d/classes/-1-red.html", "/m/01-d/classes/0-red.html/", "/m/01-d/classes/page-2.html",
    "/m/01-d/classes/../index.html", "/m/01-d/classes/%2e%2e/01-relu/index.html", "/m/01-d/classes/..%2findex.html",
    "/m/01-d/classes/0-..%2f..%2f..%2fetc%2fpasswd.html", "/m/01-d/classes/x/0-red.html", "/m/01-d/classes",
    "/m/03-old/classes/index.html", "/m/03-old/classes/0-red.html", "/m/99-x/classes/index.html",
    "/m/01-d/classes/" + "9" * 2000 + ".html",
])
def test_server_refuses_bad_class_routes(app, target):
    r = app.handle("GET", target)
    assert r.status in (400, 404, 414), (target, r.status)
    assert b"ablating" not in r.body


@pytest.mark.parametrize("query, status, contains", [
    ("m=0&c=red", 200, '"class": "red"'), ("m=0&c=0&layer=flat&top=1", 200, '"layer": "flat"'),
    ("m=0&c=blue", 400, "no class"), ("m=2&c=red", 400, "no effects"), ("m=0&c=red&top=100000", 400, "top"),
    ("m=0&c=red&top=-1", 400, "top"), ("m=0&c=red&layer=../x", 400, "no effects at layer"), ("m=9&c=red", 400, "m=0"),
    ("m=0", 400, "--class"),
])
def test_server_api_class(app, query, status, contains):
    r = app.handle("GET", "/api/class?" + query)
    assert r.status == status and r.content_type == "application/json"
    assert contains in r.body.decode()


def test_server_search_by_class_name_links_its_class_page(app):
    text = app.handle("GET", "/search?q=red").body.decode()
    assert 'href="/m/01-d/classes/0-red.html"' in text and 'href="/m/02-c/classes/0-red.html"' in text
    text = app.handle("GET", "/search?q=" + "gr%3Ceen").body.decode()
    assert 'href="/m/01-d/classes/1-gr-een-co.html"' in text
    assert "class pages" not in app.handle("GET", "/search?q=zebra").body.decode()


# ---------------------------------------------------------------------------------------------- query, show


def test_query_class_lists_the_top_units_and_the_ablation_sentence(scope_cli, files):
    r = scope_cli("query", files["d"], "--class", "red")
    assert r.code == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "relu 0 100.0% +13" in out and "flat 0 100.0% +13" in out
    assert "ablating these 1 units lowers red's logit by" in out and "accuracy on its images 100% ->" in out
    r = scope_cli("query", files["d"], files["c"], "--class", "RED", "--layer", "relu", "--top", "1", "--json")
    assert r.code == 0, r.stderr
    (rep,) = json.loads(r.stdout)  # c.h5 has no layer relu
    assert rep["class"] == "red" and rep["class_index"] == 0 and rep["images"] == 4
    (layer,) = rep["layers"]
    assert layer["layer"] == "relu" and layer["units"] == [{"unit": 0, "share": 1.0, "attribution": layer["units"][0]["attribution"]}]
    assert layer["ablation"]["units"] == [0] and layer["sentence"].startswith("ablating these 1 units")
    r = scope_cli("query", files["d"], files["c"], "--class", "1", "--json")  # an output index
    reps = json.loads(r.stdout)
    assert [x["class"] for x in reps] == [GREEN, GREEN] and len(reps[1]["layers"]) == 2


def test_query_class_errors_are_one_line(scope_cli, files):
    assert_one_line_error(scope_cli("query", files["d"], "--class", "redd"), contains="did you mean red")
    assert_one_line_error(scope_cli("query", files["old"], "--class", "red"), contains="has no effects")
    assert_one_line_error(scope_cli("query", files["d"], "--class", "red", "--layer", "mix"),
                          contains="no effects at layer mix")
    assert_one_line_error(scope_cli("query", files["d"], "--class", "red", "--label", "red"), contains="one of")
    assert_one_line_error(scope_cli("query", files["d"], "--class", " "), contains="--class")
    assert_one_line_error(scope_cli("query", files["d"], "--class", "red", "--top", "0"), contains="--top")


def test_show_prints_and_returns_the_votes(scope_cli, files, tmp_path):
    r = scope_cli("show", files["d"], "relu:0", "--json")
    assert r.code == 0, r.stderr
    fx = json.loads(r.stdout)["effects"]
    assert fx["target"] == "label" and fx["votes_against"] == []
    assert [(v["class"], v["class_index"], v["images"]) for v in fx["votes_for"]] == [("red", 0, 4)]
    assert fx["votes_for"][0]["attribution"] > 1
    r = scope_cli("show", files["d"], "relu:0")
    assert r.code == 0 and "votes for" in r.stdout and "red" in r.stdout
    assert "effects" not in json.loads(scope_cli("show", files["d"], "relu:2", "--json").stdout)  # votes for nothing
    old = json.loads(scope_cli("show", files["old"], "3:0", "--json").stdout)
    assert "effects" not in old and all("path_similarity" not in x for x in old["renders"])
    assert scope_cli("show", files["d"], "flat:0", "-o", tmp_path / "card.png").code == 0


def test_effects_element_declares_its_panel():
    from scopecli.artifact.elements.effects import EffectsElement, UnitEffects

    el = EffectsElement()
    assert el.panel == "effects" and el.panel_context(UnitEffects(), None) is None
