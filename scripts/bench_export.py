"""Benchmark `scope export` on a wide layer (default 2,048 units): time, throughput, page weights.

Builds a synthetic artifact (one layer, a render per unit, 8 top + 8 bottom patches per unit, collect
statistics with a real log-linear sketch), exports it, and prints seconds, units/s, files and the size of
a grid page and a unit page (what a browser has to parse). With --browser (chromium installed) it also
times loading one grid page with every lazy image forced, against the same page with 4x the units per page.
Usage: .venv/bin/python scripts/bench_export.py [--units 2048] [--render 128] [--patch 64] [--browser] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from artifact_factory import fake_examples, fake_image, fake_image_table, fake_model_info  # noqa: E402
from export_helpers import loglinear_stats  # noqa: E402

from scopecli.artifact import ArtifactWriter  # noqa: E402
from scopecli.export import export_site  # noqa: E402
from scopecli.core.records import LayerRecord, RenderRecord  # noqa: E402


def build(path: str, units: int, render: int, patch: int) -> None:
    rng = np.random.default_rng(0)
    rec = LayerRecord(name="blocks.8", units=units, shape=(units, 14, 14), rf_size=99, rf_stride=16, rf_start=-40)
    table = fake_image_table(200)
    base = [fake_image(rng, render, render) for _ in range(16)]
    with ArtifactWriter(path, fake_model_info(), "bench", {}) as w:
        w.ensure_layer(rec)
        w.set_dataset(table)
        w.put_renders(rec.name, [RenderRecord(
            unit=u, objective="channel", diversity_index=0, image=np.roll(base[u % 16], u, axis=1), seed=u,
            steps=512, size=render, param="fft", lr=0.05, act_final=float(rng.random() * 10), act_robust=1.0,
            act_trace=rng.random(16).astype(np.float32), time_s=1.0) for u in range(units)])
        for which, largest in (("top", True), ("bottom", False)):
            w.put_examples(rec.name, which, fake_examples(rec, range(units), len(table), 8, 1, largest, patch))
        acts = np.maximum(rng.normal(size=(2000, units)), 0).astype(np.float32)
        w.put_stats(rec.name, loglinear_stats(range(units), acts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=2048)
    ap.add_argument("--render", type=int, default=128)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--dir", default=None, help="Where to write (file creation speed varies a lot between disks).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        art = os.path.join(d, "wide.h5")
        t = time.perf_counter()
        build(art, args.units, args.render, args.patch)
        print(f"built artifact: {args.units} units in {time.perf_counter() - t:.1f}s "
              f"({os.path.getsize(art) / 1e6:.1f} MB)")
        site = os.path.join(d, "site")
        res = export_site([art], site)
        print(f"export: {res['seconds']:.2f}s, {res['units'] / res['seconds']:.0f} units/s, {res['pages']} pages, "
              f"{res['images']} images, {res['bytes'] / 1e6:.1f} MB")
        layer = os.path.join(site, "m", "01-wide", "01-blocks.8")
        grid, unit = os.path.join(layer, "index.html"), os.path.join(layer, "u", "0.html")
        print(f"grid page: {os.path.getsize(grid) / 1e3:.1f} kB (128 units), unit page: {os.path.getsize(unit) / 1e3:.1f} kB")
        res2 = export_site([art], site, per_page=512)
        print(f"re-export with 512 units/page into the same folder: {res2['seconds']:.2f}s")
        if args.browser:
            from cdp import Browser

            load = ("(async()=>{const t=performance.now();const im=[...document.images];im.forEach(i=>i.loading='eager');"
                    "await Promise.all(im.map(i=>i.complete&&i.naturalWidth?0:new Promise(r=>{i.onload=i.onerror=r})));"
                    "return performance.now()-t})()")
            with Browser() as b:
                page = b.new_page()
                times = {}
                for per, s in ((128, site + "128"), (512, site)):
                    if per == 128:
                        export_site([art], s)
                    url = "file://" + os.path.join(s, "m", "01-wide", "01-blocks.8", "index.html")
                    t = time.perf_counter()
                    page.goto(url)
                    first = time.perf_counter() - t
                    all_imgs = page.evaluate(load, True) / 1000
                    times[per] = (first, all_imgs)
                    print(f"browser, {per} units/page: load event {first * 1000:.0f} ms, all thumbnails {all_imgs * 1000:.0f} ms")
                print(f"ratio 512/128 units per page (all thumbnails): {times[512][1] / max(times[128][1], 1e-6):.1f}x")


if __name__ == "__main__":
    main()
