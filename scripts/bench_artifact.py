"""Benchmark the artifact: write throughput, bytes per unit, random unit reads (warm and cold).

A unit read = `art.unit("layer:u")` + decode its render + decode its 16 patches (8 top + 8 bottom),
the work `scope show` / `export` do per unit. Images are crops of real photos (realistic PNG/JPEG sizes).
Usage: .venv/bin/python scripts/bench_artifact.py [--layers 2] [--units 128] [--reads 300] [--out DIR]
       .venv/bin/python scripts/bench_artifact.py --baseline REV [--rounds 3]
The second form measures this tree and the code at git revision REV side by side, alternating rounds
(each in its own process, the same file sizes), and prints medians and ratios (this tree / REV).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))  # after PYTHONPATH: a baseline run uses its own tests/

from artifact_factory import fake_model_info  # noqa: E402

from scopecli.artifact import ArtifactWriter, open_artifact  # noqa: E402
from scopecli.core.records import ExampleSet, ImageTable, LayerRecord, RenderRecord  # noqa: E402

PHOTOS = "/work/shared/data/imagenet-sample-500"


def load_photos(n: int, size: int) -> list[np.ndarray]:
    files = sorted(glob.glob(os.path.join(PHOTOS, "*.JPEG")) + glob.glob(os.path.join(PHOTOS, "*.jpg")))[:n]
    if not files:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    out = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
        out.append(np.asarray(im))
    return out


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--patch", type=int, default=96, help="patch side in pixels")
    ap.add_argument("--render", type=int, default=224, help="render side in pixels")
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--out", default=None)
    ap.add_argument("--baseline", default=None, help="git revision to measure side by side with this tree")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds with --baseline")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object (used by --baseline)")
    args = ap.parse_args()
    if args.baseline:
        return side_by_side(args)
    say = (lambda *a, **k: None) if args.json else print
    say(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times include waiting for a CPU)")
    figures = {}

    photos = load_photos(64, args.render)
    patches = [np.ascontiguousarray(p[: args.patch, : args.patch]) for p in photos]
    n_img = 1000
    paths = [f"img/{i:05d}.jpg" for i in range(n_img)]
    table = ImageTable(paths=paths, sha256=[f"{i:064x}" for i in range(n_img)],
                       width=np.full(n_img, 500, np.int32), height=np.full(n_img, 375, np.int32),
                       label=np.arange(n_img, dtype=np.int32) % 1000, class_names=[f"c{i}" for i in range(1000)])
    rng = np.random.default_rng(0)
    d = args.out or tempfile.mkdtemp(prefix="scope-bench-")
    path = os.path.join(d, "bench.h5")
    if os.path.exists(path):
        os.unlink(path)
    layers = [LayerRecord(f"block{i}.conv", args.units, (args.units, 14, 14), 99, 16, -40) for i in range(args.layers)]
    n_units = args.layers * args.units

    t0 = time.perf_counter()
    t_put = 0.0
    with ArtifactWriter(path, fake_model_info(), "bench", vars(args)) as w:
        w.set_dataset(table)
        for li, rec in enumerate(layers):
            w.ensure_layer(rec)
            for start in range(0, args.units, 32):  # batches of 32 units, like the engines
                units = list(range(start, min(start + 32, args.units)))
                tp = time.perf_counter()
                w.put_renders(rec.name, [
                    RenderRecord(u, "channel", 0, photos[(u + li) % len(photos)], u, 512, args.render, "fft", 0.05,
                                 1.0, 0.9, np.zeros(16, np.float32), 1.0) for u in units])
                for which in ("top", "bottom"):
                    k = args.k
                    w.put_examples(rec.name, which, ExampleSet(
                        units=np.array(units), score=np.sort(rng.random((len(units), k)).astype(np.float32))[:, ::-1].copy(),
                        image_index=rng.integers(0, n_img, (len(units), k)), loc=np.zeros((len(units), k, 2), np.int32),
                        box=np.zeros((len(units), k, 4), np.int32),
                        patches=[[patches[(u * 7 + j) % len(patches)] for j in range(k)] for u in units]))
                t_put += time.perf_counter() - tp
        tc = time.perf_counter()
    t_commit = time.perf_counter() - tc
    t_write = time.perf_counter() - t0
    size = os.path.getsize(path)
    say(f"artifact: {args.layers} layers x {args.units} units, render {args.render}px PNG, "
        f"{2 * args.k} patches/unit {args.patch}px JPEG q90 -> {size / 1e6:.1f} MB")
    say(f"write: {n_units / t_write:.1f} units/s, {size / 1e6 / t_write:.1f} MB/s overall "
        f"(encode+buffer {t_put:.2f} s, commit {t_commit:.2f} s incl. fsync)")
    say(f"bytes per unit: {size / n_units / 1e3:.1f} kB")
    figures.update(write_s=t_write, put_s=t_put, commit_s=t_commit, bytes_per_unit=size / n_units)

    addrs = [f"{rec.name}:{u}" for rec in layers for u in range(args.units)]
    random.seed(0)

    def read(art, addr):
        u = art.unit(addr)
        u.renders[0].image
        for which in ("top", "bottom"):
            for ex in u.examples[which]:
                ex.patch

    # warm: file open, index tables loaded, page cache warm
    with open_artifact(path) as art:
        for rec in layers:
            read(art, f"{rec.name}:0")
        times, cpu = [], []
        for _ in range(args.reads):
            a = random.choice(addrs)
            t, c = time.perf_counter(), time.process_time()
            read(art, a)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        # metadata only (no decoding): what one unit costs to locate and fetch
        fetch = []
        for _ in range(args.reads):
            a = random.choice(addrs)
            t = time.perf_counter()
            u = art.unit(a)
            u.renders[0].encoded
            fetch.append(time.perf_counter() - t)
    say(f"warm unit read (render + {2 * args.k} patches decoded): median {pct(times, 50):.2f} ms, "
        f"p99 {pct(times, 99):.2f} ms wall; CPU time of this process: mean {np.mean(cpu) * 1000:.2f} ms; "
        f"bytes only (no decode): median {pct(fetch, 50):.2f} ms")
    figures.update(warm_read_ms=pct(times, 50), warm_read_cpu_ms=float(np.mean(cpu) * 1000), fetch_ms=pct(fetch, 50))

    # cold: fresh open + first unit (index tables of that layer loaded on demand); page cache evicted
    cold, cold_cached = [], []
    for i in range(min(40, args.reads)):
        a = random.choice(addrs)
        evict = i % 2 == 0
        if evict and hasattr(os, "posix_fadvise"):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        t = time.perf_counter()
        with open_artifact(path) as art:
            read(art, a)
        (cold if evict else cold_cached).append(time.perf_counter() - t)
    say(f"cold unit read (open file + load layer index + read/decode): page cache evicted median "
        f"{pct(cold, 50):.2f} ms p99 {pct(cold, 99):.2f} ms; page cache warm median {pct(cold_cached, 50):.2f} ms "
        f"p99 {pct(cold_cached, 99):.2f} ms")
    figures.update(cold_read_ms=pct(cold, 50), open_read_ms=pct(cold_cached, 50))
    if args.json:
        print(json.dumps(figures))
    if not args.out:
        os.unlink(path)
        os.rmdir(d)


def side_by_side(args) -> None:
    """This tree vs the code at --baseline, alternating rounds in fresh processes; medians and ratios."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    old = tempfile.mkdtemp(prefix="scope-baseline-")
    try:
        archive = subprocess.run(["git", "-C", root, "archive", args.baseline], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        os.symlink(os.path.join(old, "schema"), os.path.join(old, "scopecli", "schema"))
        child = [sys.executable, os.path.abspath(__file__), "--json", "--layers", str(args.layers), "--units",
                 str(args.units), "--k", str(args.k), "--reads", str(args.reads)]
        runs: dict[str, list[dict]] = {"this tree": [], args.baseline: []}
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.rounds} alternating rounds")
        for r in range(args.rounds):
            for name, code in (("this tree", root), (args.baseline, old)):
                env = dict(os.environ, PYTHONPATH=code + os.pathsep + os.path.join(code, "tests"))  # each side its own test factory
                out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
        keys = ("write_s", "warm_read_ms", "warm_read_cpu_ms", "fetch_ms", "cold_read_ms", "open_read_ms", "bytes_per_unit")
        print(f"{'figure':<18}{'this tree':>12}{args.baseline[:12]:>14}{'ratio':>9}  (median of {args.rounds}; ratio < 1: faster/smaller)")
        for k in keys:
            a = float(np.median([x[k] for x in runs["this tree"]]))
            b = float(np.median([x[k] for x in runs[args.baseline]]))
            print(f"{k:<18}{a:>12.3f}{b:>14.3f}{a / b if b else float('nan'):>9.3f}")
    finally:
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    main()
