"""`scope serve` and the static export on a large artifact: startup, page and picture latency, export size.

    .venv/bin/python scripts/bench_serve.py --artifact r50.h5 [--units 200] [--baseline REV] [--no-export]
    .venv/bin/python scripts/bench_serve.py --data PHOTOS/ [--out r50.h5]    # builds the artifact first

The artifact is issue 23's recipe: `scope collect resnet50 --weights random` on a photo folder, its 16
default layers (15,104 units). Printed:
- startup: `scope serve` from process start to its first answered request (the index), and the Catalog
  alone in this process;
- over `--units` random units (seeded): p50/p95 of the unit page's HTML, of each of its pictures, and of
  the layer grid pages, each requested once with a cold server cache for that unit (goal: unit page HTML
  p95 < 150 ms on a laptop-class CPU);
- the static export of this tree and of `--baseline` (a git revision or a folder holding `scopecli/`),
  one after the other in this run: seconds, bytes (and × the artifact), files, files per unit.
No timing is asserted anywhere; these are figures for a person to read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _get(url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return time.perf_counter() - t, body


def _pct(xs) -> str:
    a = np.asarray(xs) * 1000
    return f"p50 {np.percentile(a, 50):7.1f} ms  p95 {np.percentile(a, 95):7.1f} ms  max {a.max():7.1f} ms  (n={len(a)})"


def build(data: str, out: str) -> None:
    cmd = [sys.executable, "-m", "scopecli", "collect", "resnet50", "--weights", "random", "--data", data, "-o", out,
           "--quiet"]
    labels = Path(data) / "labels.tsv"
    if labels.is_file():
        cmd += ["--labels", str(labels)]
    print("building:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def bench_server(artifact: str, n_units: int, seed: int) -> None:
    from scopecli.serve import Catalog

    t = time.perf_counter()
    cat = Catalog([artifact])
    print(f"Catalog (open + plan, in process): {time.perf_counter() - t:.3f} s")
    models = cat.builder.models
    cat.close()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "scopecli", "serve", artifact, "--port", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = json.loads(proc.stdout.readline())["url"]
        _get(url)
        print(f"startup: scope serve to its first answered index: {time.perf_counter() - t0:.2f} s "
              f"(artifact {os.path.getsize(artifact) / 1e6:.0f} MB)")
        m = models[0]
        rng = random.Random(seed)
        pool = []
        from scopecli.artifact import open_artifact

        with open_artifact(artifact) as art:
            for lv in m.layers:
                listed = np.nonzero(art.renders_present(lv.name) | art.examples_present(lv.name, "top")
                                    | art.examples_present(lv.name, "bottom"))[0]
                pool += [(lv, int(u)) for u in listed]
        picks = rng.sample(pool, min(n_units, len(pool)))
        grids, pages, imgs = [], [], []
        seen_layers = set()
        for lv, u in picks:
            if lv.slug not in seen_layers:  # first grid page of each layer (builds its tiles once)
                seen_layers.add(lv.slug)
                dt, _ = _get(f"{url}m/{m.slug}/{lv.slug}/index.html")
                grids.append(dt)
            dt, body = _get(f"{url}m/{m.slug}/{lv.slug}/u/{u}.html")
            pages.append(dt)
            for src in re.findall(r'src="(/img/[^"]+)"', body.decode())[:40]:
                dt, _ = _get(url.rstrip("/") + src)
                imgs.append(dt)
        print(f"unit page HTML  {_pct(pages)}")
        print(f"its pictures    {_pct(imgs)}")
        print(f"layer grid p.1  {_pct(grids)}  (first request of each layer: reads its index tables)")
    finally:
        proc.terminate()
        proc.wait(10)


def _export(code_root: str | None, artifact: str, out: str) -> dict:
    env = dict(os.environ)
    if code_root:
        env["PYTHONPATH"] = code_root + os.pathsep + env.get("PYTHONPATH", "")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scopecli", "export", artifact, "-o", out, "--quiet"], check=True, env=env,
                   stdout=subprocess.DEVNULL,
                   cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - t
    files = nbytes = 0
    for base, _, names in os.walk(out):
        for n in names:
            if n != ".scope-export.json":
                files += 1
                nbytes += os.path.getsize(os.path.join(base, n))
    return {"seconds": seconds, "bytes": nbytes, "files": files}


def bench_export(artifact: str, baseline: str | None) -> None:
    from scopecli.artifact import open_artifact

    with open_artifact(artifact) as art:
        units = sum(int((art.renders_present(n) | art.examples_present(n, "top") | art.examples_present(n, "bottom")).sum())
                    for n in art.layers)
    size = os.path.getsize(artifact)
    rows = []
    tmp = tempfile.mkdtemp(prefix="scope-bench-serve-")
    try:
        trees = [("this tree", None)]
        if baseline:
            from _baseline import extract

            trees.append((baseline, extract(baseline)))
        for name, code in trees:
            out = os.path.join(tmp, "site")
            res = _export(code, os.path.abspath(artifact), out)
            rows.append((name, res))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nstatic export of {units} units ({size / 1e6:.0f} MB artifact), one after the other in this run:")
    print(f"{'tree':<14}{'seconds':>9}{'MB':>9}{'× artifact':>12}{'files':>10}{'files/unit':>12}")
    for name, r in rows:
        print(f"{name[:13]:<14}{r['seconds']:>9.1f}{r['bytes'] / 1e6:>9.0f}{r['bytes'] / size:>12.2f}{r['files']:>10}"
              f"{r['files'] / max(units, 1):>12.2f}")
    if len(rows) == 2:
        a, b = rows[0][1], rows[1][1]
        print(f"ratios this/baseline: time {a['seconds'] / b['seconds']:.3f}, bytes {a['bytes'] / b['bytes']:.3f}, "
              f"files {a['files'] / b['files']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", help="a large artifact to serve and export")
    ap.add_argument("--data", help="build the artifact first: scope collect resnet50 --weights random on this folder")
    ap.add_argument("--out", default="bench-serve-r50.h5", help="where --data builds it")
    ap.add_argument("--units", type=int, default=200, help="random units whose pages are timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", help="git revision (or folder with scopecli/) whose export is measured beside this one")
    ap.add_argument("--no-export", action="store_true", help="time the server only")
    args = ap.parse_args()
    artifact = args.artifact
    if artifact is None:
        if not args.data:
            ap.error("give --artifact FILE or --data PHOTOS/ to build one")
        build(args.data, args.out)
        artifact = args.out
    bench_server(artifact, args.units, args.seed)
    if not args.no_export:
        bench_export(artifact, args.baseline)


if __name__ == "__main__":
    main()
