"""Benchmark `scope diff` and `scope query` on synthetic artifacts of ResNet-50 size.

16 layers of 64-2048 units (ResNet-50's stem and bottleneck outputs), 500 probe images, top/bottom
examples (k=8, tiny patches) and statistics for every unit. Prints, side by side in one run, the
time to merely read the probe arrays and the time of a full diff / of queries over 5 artifacts.
Goal: full diff < 10 s, query < 2 s.

    .venv/bin/python scripts/bench_diff.py [--workdir /tmp/scope_bench_diff] [--rebuild]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from compare_builders import CLASS_NAMES, write_artifact  # noqa: E402

from scopecli.artifact import open_artifact  # noqa: E402
from scopecli.compare.diff import run_diff  # noqa: E402
from scopecli.compare.query import run_query  # noqa: E402
from scopecli.core.records import ImageTable  # noqa: E402

LAYERS = [("conv1", 64)] + [(f"layer1.{i}", 256) for i in range(3)] + [(f"layer2.{i}", 512) for i in range(4)] \
    + [(f"layer3.{i}", 1024) for i in range(5)] + [(f"layer4.{i}", 2048) for i in range(3)]
N_IMAGES = 500
K = 8


def table() -> ImageTable:
    labels = np.arange(N_IMAGES) % len(CLASS_NAMES)
    return ImageTable(
        paths=[f"img{i:04d}.jpg" for i in range(N_IMAGES)],
        sha256=[hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(N_IMAGES)],
        width=np.full(N_IMAGES, 256, np.int32), height=np.full(N_IMAGES, 256, np.int32),
        label=labels.astype(np.int32), class_names=list(CLASS_NAMES),
    )


def model_acts(seed: int, latent: np.ndarray) -> dict[str, np.ndarray]:
    """Layers that all read one shared latent (so CKA between models is meaningful), plus noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, units in LAYERS:
        w = rng.normal(size=(latent.shape[1], units)) / np.sqrt(latent.shape[1])
        out[name] = np.maximum(latent @ w + 0.5 * rng.normal(size=(N_IMAGES, units)), 0).astype(np.float32)
    return out


def build(workdir: str, rebuild: bool) -> list[str]:
    os.makedirs(workdir, exist_ok=True)
    paths = [os.path.join(workdir, f"model{i}.h5") for i in range(5)]
    if not rebuild and all(os.path.exists(p) for p in paths):
        return paths
    latent = np.random.default_rng(0).normal(size=(N_IMAGES, 64))
    t = table()
    for i, p in enumerate(paths[:2]):
        t0 = time.perf_counter()
        write_artifact(p, model_acts(100 + i, latent), t, name=f"model{i}", architecture="ResNet",
                       fingerprint=hashlib.sha256(f"m{i}".encode()).hexdigest(), k=K)
        print(f"built {p} in {time.perf_counter() - t0:.1f} s ({os.path.getsize(p) / 1e6:.1f} MB)")
    for p in paths[2:]:  # query reads 5 files; copies of the two distinct models are as costly to read
        shutil.copy(paths[len(p) % 2], p)
    return paths


CPU: dict[str, float] = {}


def timed(fn, repeat: int = 3, name: str = "") -> float:
    """Median wall seconds over `repeat` runs (CPU seconds of the process kept in CPU[name])."""
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU[name] = statistics.median(cpu)
    return statistics.median(times)


def read_probes(paths: list[str]) -> None:
    for p in paths:
        with open_artifact(p) as art:
            for name in art.layers:
                art.probe(name).acts.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/scope_bench_diff")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    paths = build(args.workdir, args.rebuild)
    units = sum(u for _, u in LAYERS)
    print(f"{len(LAYERS)} layers, {units} units per model, {N_IMAGES} probe images, top/bottom k={K}")

    r = args.repeat
    read2 = timed(lambda: read_probes(paths[:2]), r, "read2")
    diff = timed(lambda: run_diff(paths[0], paths[1], quiet=True), r, "diff")
    read5 = timed(lambda: read_probes(paths), r, "read5")
    q_label = timed(lambda: run_query(paths, label="retriever", top=20), r, "label")
    q_like = timed(lambda: run_query(paths, like=f"{paths[0]}:layer4.2:7", top=20), r, "like")
    q_stats = timed(lambda: run_query(paths, min_frac_positive=0.5, sort="max", top=20), r, "stats")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times suffer when > CPUs)")
    print(f"{'what':46s} {'wall s':>7s} {'cpu s':>6s} {'x read':>7s}  goal")
    rows = [
        ("read probe arrays of 2 artifacts", read2, "read2", read2, ""),
        ("full diff (CKA + 20 perms, 16 matchings, units)", diff, "diff", read2, "< 10 s"),
        ("read probe arrays of 5 artifacts", read5, "read5", read5, ""),
        ("query --label over 5 artifacts", q_label, "label", read5, "< 2 s"),
        ("query --like over 5 artifacts", q_like, "like", read5, "< 2 s"),
        ("query by statistics over 5 artifacts", q_stats, "stats", read5, "< 2 s"),
    ]
    for what, wall, key, base, goal in rows:
        print(f"{what:46s} {wall:7.2f} {CPU[key]:6.2f} {wall / base:7.1f}  {goal}")


if __name__ == "__main__":
    main()
