"""Helpers for the export tests: nasty-named artifacts, loglinear statistics, a site link checker."""

from __future__ import annotations

import base64
import hashlib
import html.parser
import io
import math
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from artifact_factory import fake_examples, fake_image, fake_model_info, fake_renders
from scopecli.artifact import ArtifactWriter
from scopecli.artifact.images import image_kind
from scopecli.core.records import ImageTable, LayerRecord, ProbeBlock

NASTY_CLASS = "<script>alert('x')</script> & \"co\""
NASTY_PATH = "it's a \"cat\" <em>bold</em>.jpg"
NASTY_LAYERS = ["../up/<evil>", "blocks.0.conv'1"]
NASTY_MODEL = "<i>evil</i> & 'net'"


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.refs.append((tag, v))


def page_refs(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(tag, href/src) pairs and the tag names of one HTML page (attribute values unescaped by the parser)."""
    p = _Refs()
    p.feed(path.read_text(encoding="utf-8"))
    return p.refs, p.tags


DATA_URI = re.compile(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/]*={0,2})")


def src_bytes(page: Path, src: str) -> bytes:
    """The bytes a page's picture src stands for: an inline data: URI decoded, else the file it points to."""
    m = DATA_URI.fullmatch(src)
    if m:
        return base64.b64decode(m.group(2))
    return (page.parent / unquote(urlparse(src).path)).read_bytes()


def check_site_links(site: Path) -> int:
    """Every href/src of every page is a relative link to an existing file inside the site, or an inline
    PNG/JPEG data: URI (an img src only) that decodes; returns link count."""
    site = site.resolve()
    n = 0
    for page in site.rglob("*.html"):
        refs, _ = page_refs(page)
        for tag, ref in refs:
            if ref.startswith("data:"):
                assert tag == "img" and DATA_URI.fullmatch(ref), (page, ref[:60])
                assert image_kind(src_bytes(page, ref)) is not None, (page, ref[:60])
                n += 1
                continue
            u = urlparse(ref)
            assert not u.scheme and not u.netloc, (page, ref)
            target = (page.parent / unquote(u.path)).resolve()
            assert target.is_relative_to(site), (page, ref)
            assert target.is_file(), (page, ref)
            n += 1
    return n


def loglinear_stats(units, acts: np.ndarray):
    """A StatsBlock with a real collect sketch (log-linear histogram) of acts [positions, units]."""
    from scopecli.core.sketch import NUM_BUCKETS, bucket_index_numpy, stats_from_sketch

    acts = np.asarray(acts, np.float32)
    hist = np.zeros((acts.shape[1], NUM_BUCKETS), np.int64)
    for j in range(acts.shape[1]):
        hist[j] = np.bincount(bucket_index_numpy(acts[:, j]), minlength=NUM_BUCKETS)
    mean = acts.mean(0).astype(np.float64)
    m2 = ((acts - mean) ** 2).sum(0).astype(np.float64)
    return stats_from_sketch(np.asarray(units), np.full(acts.shape[1], acts.shape[0]), mean, m2,
                             acts.min(0).astype(np.float64), acts.max(0).astype(np.float64), hist)


def make_nasty_artifact(path, n_images: int = 6, seed: int = 0) -> str:
    """An artifact whose model, layer, class and file names all need escaping; real loglinear stats."""
    rng = np.random.default_rng(seed)
    paths = sorted(f"dir '{i}'/{NASTY_PATH}" if i % 2 == 0 else f"plain/{i:03d}.jpg" for i in range(n_images))
    table = ImageTable(
        paths=paths, sha256=[hashlib.sha256(p.encode()).hexdigest() for p in paths],
        width=np.full(n_images, 100, np.int32), height=np.full(n_images, 80, np.int32),
        label=(np.arange(n_images) % 2).astype(np.int32), class_names=[NASTY_CLASS, "dog"],
    )
    info = fake_model_info(hashlib.sha256(b"nasty").hexdigest(), spec="nasty")
    info["name"] = NASTY_MODEL
    with ArtifactWriter(path, info, "test", {}) as w:
        w.set_dataset(table)
        for li, name in enumerate(NASTY_LAYERS):
            rec = LayerRecord(name=name, units=3, shape=(3, 4, 4), rf_size=9, rf_stride=4, rf_start=-2)
            w.ensure_layer(rec)
            w.put_renders(name, fake_renders(rec, [0, 1], seed + li, size=40))
            w.put_examples(name, "top", fake_examples(rec, [0, 1, 2], n_images, 3, seed + li, True))
            w.put_examples(name, "bottom", fake_examples(rec, [0, 1, 2], n_images, 3, seed + li + 9, False))
            acts = np.maximum(rng.normal(size=(500, 3)), 0).astype(np.float32) * [1, 2, 3]
            w.put_stats(name, loglinear_stats(range(3), acts))
            w.put_probe(name, ProbeBlock(np.arange(n_images, dtype=np.int64),
                                         rng.normal(size=(n_images, 3)).astype(np.float16)))
    return str(path)


def make_big_render_artifact(path, size: int = 320) -> str:
    """One layer, one unit, one render larger than a grid thumbnail."""
    info = fake_model_info(hashlib.sha256(b"big").hexdigest(), spec="big")
    rec = LayerRecord(name="conv", units=2, shape=(2, 4, 4), rf_size=9, rf_stride=4, rf_start=-2)
    with ArtifactWriter(path, info, "test", {}) as w:
        w.ensure_layer(rec)
        recs = fake_renders(rec, [1], 0, size=size)
        recs[0].image = fake_image(np.random.default_rng(1), size, size)
        recs[0].act_final = 2.0
        recs[0].dataset_max_ratio = math.nan
        w.put_renders("conv", recs)
    return str(path)


def site_files(site: Path) -> set[str]:
    return {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Staging/old folders an export may have left beside the site."""
    return [n for n in os.listdir(parent) if ".scope-tmp-" in n or ".scope-old-" in n]


def make_deepdream_artifact(path) -> str:
    """Layer 'dream' holds only a whole-layer deepdream render (unit -1); layer 'empty' holds nothing."""
    info = fake_model_info(hashlib.sha256(b"dream").hexdigest(), spec="dream")
    dream = LayerRecord(name="dream", units=3, shape=(3, 4, 4), rf_size=9, rf_stride=4, rf_start=-2)
    empty = LayerRecord(name="empty", units=2, shape=(2, 2, 2), rf_size=19, rf_stride=8, rf_start=-2)
    with ArtifactWriter(path, info, "test", {}) as w:
        w.ensure_layer(dream)
        w.ensure_layer(empty)
        w.put_renders("dream", fake_renders(dream, [-1], 0, size=48, objectives=("deepdream",)))
    return str(path)


_SRC = re.compile(r'src="([^"]*)"')
_CANVAS = re.compile(r'<canvas class="heat" data-h="([^"]*)"( data-s="-1")? style="([^"]*)"></canvas>')


def pictures_by_content(page: Path, text: str | None = None) -> str:
    """The page's HTML with each picture src replaced by the sha256 of the bytes it shows (a file or an inline
    data: URI): two exports that show the same pictures on the same page compare equal however they store them."""
    import html as _html

    text = page.read_text(encoding="utf-8") if text is None else text

    def sub(m):
        src = _html.unescape(m.group(1))
        if src.startswith("sha256:"):  # a heatmap the page draws, already replaced below
            return m.group(0)
        try:
            data = src_bytes(page, src)
        except OSError:
            return 'src="missing"'
        return f'src="sha256:{hashlib.sha256(data).hexdigest()}"'

    def canvas(m):  # a heatmap the page draws: the PNG 0.1.0 stored, from the same stored grid
        from PIL import Image

        from scopecli.artifact.elements.examples import decode_heat
        from scopecli.core.heatmaps import rgba

        w, lo, hi, b64 = _html.unescape(m.group(1)).split(" ")
        q = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(-1, int(w))
        heat = decode_heat(q, np.array([float(lo), float(hi)], np.float32))
        buf = io.BytesIO()
        Image.fromarray(rgba(heat, -1.0 if m.group(2) else 1.0), "RGBA").save(buf, format="PNG")
        return f'<img class="heat" src="sha256:{hashlib.sha256(buf.getvalue()).hexdigest()}" alt="" style="{m.group(3)}">'

    text = _CANVAS.sub(canvas, text)
    text = re.sub(r"<script>.*?</script>", "", text, flags=re.S)  # the heatmap drawing (one script, by its hash)
    return _SRC.sub(sub, text)
