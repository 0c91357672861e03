"""`scope export --diff`: the comparison page (CKA heatmaps with floors, best matches, unit matching linked
to both models' units) and the links to it; the diff PNG's words no longer run together."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from compare_builders import image_table, write_artifact
from export_helpers import check_site_links, page_refs
from scopecli.compare.diff import run_diff
from scopecli.export import export_site


def _pair(tmp_path):
    """A and B share 120 images; B's conv is A's conv with its units permuted, B's deep is A's deep squared
    (a weaker match), so CKA has a diagonal and unit matching has a known answer."""
    rng = np.random.default_rng(0)
    n = 120
    conv = rng.normal(size=(n, 6)).astype(np.float32)
    deep = rng.normal(size=(n, 4)).astype(np.float32)
    perm = np.array([3, 0, 5, 1, 4, 2])  # unit j of B's conv is unit perm[j] of A's conv
    table = image_table(n)
    pa, pb = tmp_path / "a.h5", tmp_path / "b.h5"
    write_artifact(pa, {"conv": conv, "deep": deep}, table, name="alpha", renders=True)
    write_artifact(pb, {"conv": conv[:, perm] + 0.1 * rng.normal(size=(n, 6)).astype(np.float32),
                        "deep": deep ** 2}, table, name="beta")
    d = tmp_path / "d.h5"
    run_diff(pa, pb, permutations=4).save(d)
    return pa, pb, d, perm


def test_comparison_page_shows_cka_best_matches_and_linked_unit_pairs(tmp_path):
    pa, pb, d, perm = _pair(tmp_path)
    site = tmp_path / "site"
    res = export_site([pa, pb], site, diff_paths=[d])
    assert res["diffs"] == 1
    page = site / "d/01-d/index.html"
    html = page.read_text()
    # the two heatmaps: real PNGs, coloured cells (not blank), linked from the page
    srcs = [v for tag, v in page_refs(page)[0] if tag == "img"]
    assert [s.rsplit("/", 1)[-1] for s in srcs] == ["cka-linear.png", "cka-debiased.png"]
    for src in srcs:
        with Image.open(site / "d/01-d" / src) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[0] > 60 and arr.std() > 20
        assert (np.abs(arr.astype(int) - (253, 231, 37)).sum(axis=2) < 30).any()  # a CKA near 1 is yellow
    assert "A cross: the score does not beat its floor" in html
    # best match table: conv -> conv above its floor, linked to both layer pages
    assert 'href="../../m/01-a/01-conv/index.html"><code>conv</code></a></td><td><a href="../../m/02-b/01-conv/index.html">' in html
    assert "above floor" in html
    # unit matching: every known pair links to both unit pages, and they are mutual best matches
    for j, ua in enumerate(perm):
        pair = (f'<a href="../../m/01-a/01-conv/u/{ua}.html"><code>conv:{ua}</code></a> ↔ '
                f'<a href="../../m/02-b/01-conv/u/{j}.html"><code>conv:{j}</code></a>')
        assert pair in html
    assert "6/6" in html  # six mutual best matches of six units
    # same architecture: the unit-by-unit table is there
    assert "unit i of A vs unit i of B" in html
    # both model pages and the index link to the page
    for model in ("01-a", "02-b"):
        mp = (site / f"m/{model}/index.html").read_text()
        assert 'href="../../d/01-d/index.html"' in mp
    assert 'href="d/01-d/index.html"' in (site / "index.html").read_text()
    check_site_links(site)


def test_comparison_page_when_one_side_is_not_exported(tmp_path):
    pa, pb, d, perm = _pair(tmp_path)
    site = tmp_path / "site"
    export_site([pa], site, diff_paths=[d])
    html = (site / "d/01-d/index.html").read_text()
    assert "beta" in html and "(not exported)" in html and "m/02-" not in html
    assert f'<a href="../../m/01-a/01-conv/u/{perm[0]}.html"><code>conv:{perm[0]}</code></a> ↔ <code>conv:0</code>' in html
    check_site_links(site)


def test_sites_without_a_diff_have_no_comparison_folder(tmp_path):
    pa, pb, d, perm = _pair(tmp_path)
    site = tmp_path / "site"
    export_site([pa, pb], site)
    assert not (site / "d").exists()
    assert "Comparisons" not in (site / "m/01-a/index.html").read_text()


def _gaps(img: Image.Image) -> list[int]:
    """Widths of the runs of blank columns between inked columns of a one-line text image."""
    ink = (np.asarray(img.convert("L")) < 128).any(axis=0)
    cols = np.flatnonzero(ink)
    return [int(b - a - 1) for a, b in zip(cols[:-1], cols[1:]) if b - a > 1]


def test_png_text_keeps_spaces_between_words():
    from scopecli.compare.drawing import draw_text, text_size

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    spaced, joined = text_size(probe, "stimulus shuffles")[0], text_size(probe, "stimulusshuffles")[0]
    assert spaced >= joined + 3
    img = Image.new("RGB", (spaced + 4, 16), "white")
    draw_text(ImageDraw.Draw(img), (2, 2), "stimulus shuffles")
    assert max(_gaps(img)) >= 3  # the word gap is visible; letters within a word sit closer

