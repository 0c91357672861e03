"""Files written by scope 0.1.0 read exactly as 0.1.0 read them (fixtures: scripts/make_golden.py).

`info --json`, `show --json` and the exported gallery of the frozen files must stay identical: images
byte for byte, pages up to white space and the version in the footer. The shared stylesheet may only
grow (new views add rules; every rule 0.1.0 had stays).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from export_helpers import pictures_by_content, src_bytes
from scopecli import __version__

FIX = Path(__file__).parent / "fixtures" / "v0.1.0"
GOLDEN = json.loads((FIX / "golden.json").read_text())
GOLDEN_PAGES = json.loads((FIX / "golden_pages_by_content.json").read_text())


def _page_digest(text: str) -> str:
    text = text.replace(f"scope {__version__}", "scope 0.1.0")
    folded = re.sub(r"\s+", " ", re.sub(r">\s+<", "><", text)).strip()
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


@pytest.fixture
def old_files(tmp_path):
    for name in ("tiny.h5", "nasty.h5", "diff.h5"):
        shutil.copy(FIX / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", ["tiny.h5", "nasty.h5"])
def test_info_json_unchanged(scope_cli, old_files, monkeypatch, name):
    monkeypatch.chdir(old_files)
    r = scope_cli("info", name, "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout) == GOLDEN["info"][name]


@pytest.mark.parametrize("key", sorted(GOLDEN["show"]))
def test_show_json_unchanged(scope_cli, old_files, monkeypatch, key):
    monkeypatch.chdir(old_files)
    name, unit = key.split(" ", 1)
    r = scope_cli("show", name, unit, "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout) == GOLDEN["show"][key]


@pytest.mark.parametrize("name", ["tiny.h5", "nasty.h5"])
def test_old_files_validate(scope_cli, old_files, name):
    r = scope_cli("validate", old_files / name)
    assert r.code == 0, r.stdout + r.stderr


# Views added after 0.1.0 that an old export gains: the comparison page of each --diff file (d/...), the
# list of comparisons on a model page and the link from the index's diff row to the page.
_NEW_VIEWS = [
    re.compile(r"<h2>Comparisons</h2>\s*<ul class=\"comparisons\">.*?</ul>\s*", re.S),
    re.compile(r'<a href="d/[^"]*">(<code>[^<]*</code>)</a>'),
    re.compile(r" script-src (?:'|&#x27;)sha256-[A-Za-z0-9+/=]+(?:'|&#x27;);"),  # 0.3.0: the page draws heatmaps with one hashed script
]


def _without_new_views(text: str) -> str:
    for pattern in _NEW_VIEWS:
        text = pattern.sub(lambda m: m.group(1) if m.groups() else "", text)
    return text


def test_export_unchanged(scope_cli, old_files, monkeypatch):
    """Every page 0.1.0 wrote is written again and shows the same text and the very same picture bytes; since
    0.3.0 pictures are stored differently (content-addressed files or inline), so srcs compare by content."""
    monkeypatch.chdir(old_files)
    r = scope_cli("export", "tiny.h5", "nasty.h5", "--diff", "diff.h5", "-o", "site", "--quiet")
    assert r.code == 0, r.stderr
    site = old_files / "site"
    got = {}
    for p in sorted(site.rglob("*.html")):
        rel = p.relative_to(site).as_posix()
        if rel.startswith("d/"):
            continue  # the comparison page: a new view, checked below
        got[rel] = _page_digest(_without_new_views(pictures_by_content(p)))
    assert sorted(got) == sorted(GOLDEN_PAGES["pages"])
    assert sorted(got) == sorted(k for k in GOLDEN["export"] if k.endswith(".html"))
    assert (site / "d/01-diff/index.html").is_file() and 'href="d/01-diff/index.html"' in (site / "index.html").read_text()
    changed = [rel for rel in got if got[rel] != GOLDEN_PAGES["pages"][rel]]
    assert not changed, changed[:10]
    pictures = {v for k, v in GOLDEN["export"].items() if not k.endswith((".html", ".css"))}
    shown = {hashlib.sha256(src_bytes(p, src)).hexdigest() for p in site.rglob("*.html")
             for src in re.findall(r'src="([^"]*)"', p.read_text())}
    assert pictures <= shown  # every picture 0.1.0's gallery had, byte for byte (its heatmap overlays too)
    css = (site / "style.css").read_bytes()
    assert hashlib.sha256(css[: _OLD_CSS_BYTES]).hexdigest() == GOLDEN["export"]["style.css"]  # 0.1.0's rules, unchanged


_OLD_CSS_BYTES = 7243  # length of scope 0.1.0's stylesheet
