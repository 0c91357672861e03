"""`scope export`: pages and images on disk, escaping, pagination, safe replacement, diff links, bad inputs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from artifact_factory import make_artifact
from conftest import assert_one_line_error
from export_helpers import (
    NASTY_CLASS,
    NASTY_LAYERS,
    NASTY_MODEL,
    NASTY_PATH,
    check_site_links,
    leftovers,
    loglinear_stats,
    make_big_render_artifact,
    make_nasty_artifact,
    page_refs,
    site_files,
    src_bytes,
)
from scopecli import open_artifact
from scopecli.core.errors import ScopeError
from scopecli.export import export_site
from scopecli.export.folder import MARKER
from scopecli.export.pages import CSP, HEAT_JS

SAFE_NAME = re.compile(r"^[A-Za-z0-9._/-]+$")


@pytest.fixture
def two(tmp_path):
    a = make_artifact(tmp_path / "a.h5")  # renders + examples for every unit
    b = make_artifact(tmp_path / "b.h5", renders=False, units=[0, 2, 4], seed=3)  # examples only, some units
    return a, b


def _grid_srcs(page: Path) -> list[str]:
    return [v for tag, v in page_refs(page)[0] if tag == "img"]


def _grid_bytes(page: Path) -> list[bytes]:
    return [src_bytes(page, v) for v in _grid_srcs(page)]


def _img_srcs(page: Path) -> list[str]:
    return [v for tag, v in page_refs(page)[0] if tag == "img" and 'class="heat"' not in v]


def test_export_writes_every_page_and_copies_images_byte_for_byte(two, tmp_path):
    a, b = two
    site = tmp_path / "site"
    res = export_site([a, b], site)
    assert res["index"] == str(site / "index.html") and Path(res["index"]).is_file()
    assert res["models"] == 2 and res["diffs"] == 0
    # a: 6 + 4 units; b: units 0,2,4 of the 6-unit layer and 0,2 of the 4-unit layer; units with nothing are skipped
    assert res["units"] == 10 + 5
    b_units = sorted(p.name for p in site.glob("m/02-b/*/u/*.html"))
    assert b_units == ["0.html", "0.html", "2.html", "2.html", "4.html"]
    assert not (site / "m/02-b/01-features.1-conv/u/1.html").exists()
    assert res["pages"] == len(list(site.rglob("*.html")))
    images = sorted(site.rglob("i/*/*"))
    assert res["images"] == len(images)
    # content-addressed: each picture once, named by its sha256
    assert all(p.stem == hashlib.sha256(p.read_bytes()).hexdigest()[:20] for p in images)
    assert check_site_links(site) > 100
    assert all(SAFE_NAME.match(f) for f in site_files(site) if f != MARKER)
    # images are the stored bytes, not re-encodings (files or inline), and a unit page shows each of them
    page = site / "m/01-a/01-features.1-conv/u/3.html"
    shown = [src_bytes(page, s) for s in _grid_srcs(page)]
    with open_artifact(a) as art:
        u = art.unit("features.1/conv", 3)
        assert u.renders[0].encoded in shown
        for e in u.examples["top"] + u.examples["bottom"]:
            assert e.encoded in shown
        # the grid tile of a rendered unit is its render: a file, written once, that the unit page uses too
        grid_a = site / "m/01-a/01-features.1-conv/index.html"
        assert _grid_bytes(grid_a)[3] == u.renders[0].encoded and not _grid_srcs(grid_a)[3].startswith("data:")
    # units without renders show their top example in the grid, marked as such
    grid = site / "m/02-b/01-features.1-conv/index.html"
    with open_artifact(b) as art:
        assert _grid_bytes(grid) == [art.unit("features.1/conv", u).examples["top"][0].encoded for u in (0, 2, 4)]
    assert grid.read_text().count('class="badge"') == 3
    # lazy thumbnails in grids
    assert all('loading="lazy"' in tag for tag in re.findall(r"<img[^>]*>", grid.read_text()))


def test_unit_page_shows_renders_examples_stats_and_scores(two, tmp_path):
    a, _ = two
    site = tmp_path / "site"
    export_site([a], site)
    text = (site / "m/01-a/01-features.1-conv/u/5.html").read_text()
    with open_artifact(a) as art:
        u = art.unit("features.1/conv", 5)
        table = art.dataset
    r = u.renders[0]
    assert f"{r.act_final:.3g}" in text
    # no stored ratio: the page computes activation / dataset max and says so
    assert f"×{r.act_final / u.stats['max']:.2f} dataset max" in text and "computed by export" in text
    for e in u.examples["top"] + u.examples["bottom"]:
        assert f"{e.score:.3g}" in text
        assert e.image_path.rsplit("/", 1)[-1] in text
        assert table.class_names[table.label[e.image_index]].replace("ü", "ü") in text
    # the last unit misses its last top example: 3 shown, not 4
    assert text.count('alt="top example') == 3
    assert f"{u.stats['mean']:.4g}" in text and 'class="chart strip"' in text
    assert "Matched units" not in text


def test_nasty_names_are_escaped_everywhere(tmp_path):
    path = make_nasty_artifact(tmp_path / "n'asty <1>.h5")
    site = tmp_path / "site"
    res = export_site([path], site)
    assert res["units"] == 6
    pages = list(site.rglob("*.html"))
    ours = f"<script>{HEAT_JS}</script>"  # the one script a page may hold: the heatmap drawing, by its hash
    for page in pages:
        text = page.read_text()
        assert text.count("<script") == text.count(ours), page
        assert "<em>" not in text and "<i>evil" not in text, page
        _, tags = page_refs(page)
        assert tags.count("script") == text.count(ours) and "em" not in tags and "i" not in tags
    assert all(SAFE_NAME.match(f) for f in site_files(site) if f != MARKER)
    assert not any(".." in part for f in site_files(site) for part in f.split("/"))
    check_site_links(site)
    index = (site / "index.html").read_text()
    assert "&lt;i&gt;evil&lt;/i&gt; &amp; &#x27;net&#x27;" in index
    unit = next(p for p in pages if p.parent.name == "u").read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;co&quot;" in unit or "dog" in unit
    all_units = "".join(p.read_text() for p in pages if p.parent.name == "u")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in all_units
    assert "it&#x27;s a &quot;cat&quot; &lt;em&gt;bold&lt;/em&gt;.jpg" in all_units  # file name shown, escaped
    model_page = next(site.glob("m/*/index.html")).read_text()
    for layer in NASTY_LAYERS:
        assert layer.replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;") in model_page
    assert NASTY_CLASS not in all_units and NASTY_MODEL not in index and NASTY_PATH not in all_units


def test_histogram_from_a_collect_sketch(tmp_path):
    from scopecli.export.charts import rebin_sketch

    rng = np.random.default_rng(0)
    acts = (rng.normal(size=(4000, 2)) * [1.0, 3.0] + [0.5, -1]).astype(np.float32)
    st = loglinear_stats([0, 1], acts)
    for j in range(2):
        counts = rebin_sketch(st.sketch["hist"][j], st.sketch_attrs, st.min[j], st.max[j], bins=20)
        assert counts.sum() == 4000
        exact, _ = np.histogram(acts[:, j], bins=20, range=(st.min[j], st.max[j]))
        # bucket representatives are within 1/64 relative of the value: only values near bin edges move
        assert np.abs(counts - exact).sum() <= 0.1 * 4000
        assert abs(int(np.argmax(counts)) - int(np.argmax(exact))) <= 1
    assert rebin_sketch(st.sketch["hist"][0], {"kind": "fixed"}, 0.0, 1.0) is None
    path = make_nasty_artifact(tmp_path / "n.h5")
    site = tmp_path / "site"
    export_site([path], site)
    text = next(site.glob("m/*/*/u/2.html")).read_text()
    assert text.count('class="chart hist"') == 1 and text.count('class="bar"') >= 5


def test_pagination(two, tmp_path):
    a, _ = two
    site = tmp_path / "site"
    export_site([a], site, per_page=4)
    layer = site / "m/01-a/01-features.1-conv"
    # the unit-order pages (the artifact's label profiles also give a by-label-lift order: by-label*.html)
    assert sorted(p.name for p in layer.glob("*.html") if not p.name.startswith("by-label")) == ["index.html", "page-2.html"]
    with open_artifact(a) as art:
        renders = [art.unit("features.1/conv", u).renders[0].encoded for u in range(6)]
    assert _grid_bytes(layer / "index.html") == renders[:4]
    assert _grid_bytes(layer / "page-2.html") == renders[4:]
    assert 'href="page-2.html"' in (layer / "index.html").read_text()
    assert 'rel="prev" href="index.html"' in (layer / "page-2.html").read_text()
    # a unit page links back to the grid page it is on, and to its neighbours
    u5 = (layer / "u/5.html").read_text()
    assert 'href="../page-2.html"' in u5 and 'href="4.html"' in u5 and 'href="6.html"' not in u5
    assert 'href="../index.html"' in (layer / "u/0.html").read_text()
    export_site([a], site, per_page=1)
    assert len([p for p in layer.glob("*.html") if not p.name.startswith("by-label")]) == 6
    with pytest.raises(ScopeError, match="per_page"):
        export_site([a], site, per_page=0)


def test_large_render_gets_a_thumbnail(tmp_path):
    site = tmp_path / "site"
    export_site([make_big_render_artifact(tmp_path / "big.h5", 320)], site)
    layer = site / "m/01-big/01-conv"
    import io

    from PIL import Image

    (thumb,) = _grid_bytes(layer / "index.html")
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.size == (192, 192) and im.format == "JPEG"
    unit = layer / "u/1.html"
    (render,) = [src_bytes(unit, s) for s in _grid_srcs(unit)]
    with Image.open(io.BytesIO(render)) as im:
        assert im.size == (320, 320) and im.format == "PNG"
    assert _grid_srcs(unit)[0].startswith("data:")  # shown on one page only: inline


def test_reexport_replaces_cleanly(two, tmp_path):
    a, b = two
    site = tmp_path / "site"
    export_site([a, b], site)
    assert (site / "m/02-b").is_dir()
    marker = json.loads((site / MARKER).read_text())
    assert set(marker["files"]) == site_files(site) - {MARKER}
    res = export_site([b], site)
    assert not (site / "m/02-b").exists() and (site / "m/01-b").is_dir()
    assert not any(f.startswith("m/01-a") for f in site_files(site))
    assert res["models"] == 1 and leftovers(tmp_path) == []
    check_site_links(site)
    # an empty folder is fine too
    empty = tmp_path / "empty"
    empty.mkdir()
    export_site([b], empty)
    assert (empty / "index.html").is_file()


def test_refuses_to_replace_user_data(two, tmp_path, scope_cli):
    a, _ = two
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    r = scope_cli("export", a, "-o", mine)
    assert_one_line_error(r, 2, "not a scope export")
    assert (mine / "thesis.tex").read_text() == "precious" and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    # a previous export where the user added a file: refused, file kept
    site = tmp_path / "site"
    export_site([a], site)
    (site / "m/notes.txt").write_text("keep me")
    r = scope_cli("export", a, "-o", site)
    assert_one_line_error(r, 2, "did not write (m/notes.txt)")
    assert (site / "m/notes.txt").read_text() == "keep me"
    # a file, and a forged marker
    r = scope_cli("export", a, "-o", a)
    assert_one_line_error(r, 2, "not a folder")
    (mine / MARKER).write_text("{not json")
    assert_one_line_error(scope_cli("export", a, "-o", mine), 2, "unreadable")
    assert leftovers(tmp_path) == []


def test_failed_export_keeps_the_old_site(two, tmp_path, monkeypatch):
    a, b = two
    site = tmp_path / "site"
    export_site([a], site)
    before = {f: (site / f).read_bytes() for f in site_files(site)}
    import scopecli.export.site as site_mod

    def boom(*args, **kwargs):
        raise ScopeError("disk full (simulated)")

    monkeypatch.setattr(site_mod, "layer_page", boom)
    with pytest.raises(ScopeError, match="simulated"):
        export_site([a, b], site)
    assert {f: (site / f).read_bytes() for f in site_files(site)} == before
    assert leftovers(tmp_path) == []


def test_bad_inputs_are_one_line_errors(two, tmp_path, scope_cli):
    a, _ = two
    out = tmp_path / "out"
    assert_one_line_error(scope_cli("export", tmp_path / "missing.h5", "-o", out), 2, "no such file")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    assert_one_line_error(scope_cli("export", text, "-o", out), 2, "not a scope artifact")
    assert_one_line_error(scope_cli("export", tmp_path, "-o", out), 2, "directory")
    assert_one_line_error(scope_cli("export", a, a, "-o", out), 2, "given twice")
    assert_one_line_error(scope_cli("export", a, "-o", out, "--diff", tmp_path / "nodiff.h5"), 2, "no such file")
    assert_one_line_error(scope_cli("export", a, "-o", out, "--diff", text), 2, "--diff")
    assert_one_line_error(scope_cli("export", a, "-o", out, "--diff", a), 2, "not a scope diff file")
    assert_one_line_error(scope_cli("export", a), 2, "-o")
    assert not out.exists() and leftovers(tmp_path) == []


def test_cli_json_and_progress(two, tmp_path, scope_cli):
    a, b = two
    r = scope_cli("export", a, b, "-o", tmp_path / "site", "--json")
    assert r.code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["units"] == 15 and res["url"].startswith("file://") and res["url"].endswith("/site/index.html")
    assert r.stderr == ""
    r = scope_cli("export", a, "-o", tmp_path / "site", "--quiet")
    assert r.code == 0 and r.stderr == "" and "open file://" in r.stdout


def _diff_pair(tmp_path):
    from compare_builders import image_table, write_artifact

    rng = np.random.default_rng(0)
    n = 120
    acts = rng.normal(size=(n, 6)).astype(np.float32)
    perm = np.array([3, 0, 5, 1, 4, 2])  # unit j of B is unit perm[j] of A, plus noise
    table = image_table(n)
    pa, pb = tmp_path / "a.h5", tmp_path / "b.h5"
    write_artifact(pa, {"conv": acts}, table, name="alpha", renders=True)
    write_artifact(pb, {"conv": acts[:, perm] + 0.1 * rng.normal(size=(n, 6)).astype(np.float32)}, table, name="beta")
    return pa, pb, perm


def test_diff_links_matched_units_both_ways(tmp_path, scope_cli):
    pa, pb, perm = _diff_pair(tmp_path)
    d = tmp_path / "d.h5"
    r = scope_cli("diff", pa, pb, "--save", d, "--quiet", "--json")
    assert r.code == 0, r.stderr
    site = tmp_path / "site"
    res = export_site([pa, pb], site, diff_paths=[d])
    assert res["diffs"] == 1 and res["links"] > 0
    check_site_links(site)
    for j, ua in enumerate(perm):  # A's unit ua is B's unit j
        a_page = (site / f"m/01-a/01-conv/u/{ua}.html").read_text()
        assert f'href="../../../../m/02-b/01-conv/u/{j}.html">beta · conv:{j}</a>' in a_page
        b_page = (site / f"m/02-b/01-conv/u/{j}.html").read_text()
        assert f'href="../../../../m/01-a/01-conv/u/{ua}.html">alpha · conv:{ua}</a>' in b_page
        assert "mutual best" in b_page and "above chance" in b_page
    index = (site / "index.html").read_text()
    assert "d.h5" in index and "conv ↔ conv (6)" in index
    # the same diff with only A exported: B is named, not linked
    res = export_site([pa], tmp_path / "site2", diff_paths=[d])
    a_page = (tmp_path / "site2/m/01-a/01-conv/u/0.html").read_text()
    assert "beta · conv:" in a_page and "m/02-b" not in a_page
    assert "(not exported)" in (tmp_path / "site2/index.html").read_text()


def test_deepdream_only_layer_and_empty_layer(tmp_path):
    from export_helpers import make_deepdream_artifact

    site = tmp_path / "site"
    res = export_site([make_deepdream_artifact(tmp_path / "dream.h5")], site)
    assert res["units"] == 0 and res["layers"] == 1
    layer = site / "m/01-dream/01-dream"
    page = (layer / "index.html").read_text()
    assert "DeepDream" in page and len(_grid_srcs(layer / "index.html")) == 1
    assert 'class="grid"' not in page and not list(layer.glob("u/*"))
    model = (site / "m/01-dream/index.html").read_text()
    assert 'href="01-dream/index.html"' in model and "02-empty" not in model and "nothing stored" in model
    assert not (site / "m/01-dream/02-empty").exists() and not (layer / "u").exists()
    check_site_links(site)


def test_progress_factory_sees_every_unit(two, tmp_path):
    import contextlib

    a, b = two
    calls = []

    class Bar:
        def __init__(self):
            self.done = 0

        def advance(self, n=1, **_):
            self.done += n

    @contextlib.contextmanager
    def factory(total, description):
        bar = Bar()
        yield bar
        calls.append((total, description, bar.done))

    res = export_site([a, b], tmp_path / "site", progress=factory)
    assert calls == [(15, "export", 15)] and res["units"] == 15


def test_export_is_reproducible(two, tmp_path):
    a, b = two
    one, two_ = tmp_path / "one", tmp_path / "two"
    export_site([a, b], one)
    export_site([a, b], two_)
    files = site_files(one)
    assert files == site_files(two_)
    assert all((one / f).read_bytes() == (two_ / f).read_bytes() for f in files)
