"""Time `scope demo` of this tree, and of a baseline tree side by side, with the picture quality of each.

    python scripts/bench_demo.py [--baseline /path/to/other/tree] [--runs 2] [-- --steps 128]

Each run is a fresh subprocess (`python -m scopecli demo --json` with the tree as cwd and PYTHONPATH)
into a fresh folder; with a baseline the trees alternate (the order flips every round), so a machine
that is busy with other work slows both alike. Printed per run: the demo's own phase seconds (setup,
collect, render, export, total) and the process's wall seconds; per tree the median activation ratio of
its renders (`act_final` over the unit's dataset max, as stored in the artifact); and the ratio of this
tree's median seconds to the baseline's, which stays meaningful when absolute seconds are inflated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PHASES = ("setup", "collect", "render", "export", "total")

# Run inside the tree whose artifact it reads (its own reader): per layer and overall median ratio.
QUALITY = """
import json, math, statistics, sys
from scopecli import open_artifact
out = {}
with open_artifact(sys.argv[1]) as art:
    for layer in art.layers:
        stats = art.stats(layer)
        top = {} if stats is None else {int(u): float(m) for u, m in zip(stats.units, stats.max)}
        ratios = []
        for r in art.renders(layer):
            ratio = r.dataset_max_ratio
            if not math.isfinite(ratio) and top.get(r.unit, 0) > 0:
                ratio = r.act_final / top[r.unit]
            if math.isfinite(ratio):
                ratios.append(ratio)
        if ratios:
            out[layer] = ratios
print(json.dumps(out))
"""


def run_tree(tree: Path, python: str, out: Path, demo_args: list[str]) -> dict:
    """One demo run of `tree` into `out`: its JSON summary, wall seconds and render ratios."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-m", "scopecli", "demo", "-o", str(out), "--json", *demo_args],
                          cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo of {tree} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout)
    q = subprocess.run([python, "-c", QUALITY, summary["artifact"]], cwd=tree, env=env,
                       capture_output=True, text=True, check=True)
    return {"seconds": summary["seconds"], "wall": wall, "ratios": json.loads(q.stdout)}


def median_ratio(ratios: dict[str, list[float]]) -> float:
    values = [v for layer in ratios.values() for v in layer]
    return statistics.median(values) if values else float("nan")


def report(name: str, runs: list[dict]) -> dict:
    """Print each run's row and return the tree's medians."""
    for i, r in enumerate(runs):
        s = r["seconds"]
        cells = "  ".join(f"{p} {s.get(p, float('nan')):6.1f}" for p in PHASES)
        print(f"{name:9s} run {i + 1}: {cells}  wall {r['wall']:6.1f}  ratio {median_ratio(r['ratios']):.3f}")
    med = {p: statistics.median(r["seconds"].get(p, float("nan")) for r in runs) for p in PHASES}
    med["wall"] = statistics.median(r["wall"] for r in runs)
    layers = runs[-1]["ratios"]
    med["ratio"] = statistics.median(median_ratio(r["ratios"]) for r in runs)
    per_layer = ", ".join(f"{layer} {statistics.median(v):.3f}" for layer, v in layers.items())
    print(f"{name:9s} median: total {med['total']:.1f} s (render {med['render']:.1f} s, wall {med['wall']:.1f} s); "
          f"render/dataset-max ratio {med['ratio']:.3f} ({per_layer})")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another scope tree to run side by side")
    ap.add_argument("--runs", type=int, default=1, help="rounds (each runs every tree once)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the demos")
    ap.add_argument("--keep", type=Path, help="keep the demo folders here (default: a temporary folder)")
    ap.add_argument("demo_args", nargs="*", help="extra `scope demo` options, after --")
    args = ap.parse_args()
    trees = [("this", HERE)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        root = args.keep or Path(tmp)
        for round_ in range(args.runs):
            order = trees if round_ % 2 == 0 else trees[::-1]
            for name, tree in order:
                out = root / f"{name}-{round_ + 1}"
                results[name].append(run_tree(tree, args.python, out, args.demo_args))
                print(f"  {name} round {round_ + 1}: {results[name][-1]['seconds']}", flush=True)
    print(f"{os.cpu_count()} CPUs; {args.runs} round(s); demo args {args.demo_args or '(defaults)'}")
    med = {name: report(name, results[name]) for name, _ in trees}
    if args.baseline:
        this, base = med["this"], med["baseline"]
        print(f"this / baseline: total {this['total'] / base['total']:.2f}, render {this['render'] / base['render']:.2f}, "
              f"wall {this['wall'] / base['wall']:.2f}; ratio {this['ratio']:.3f} vs {base['ratio']:.3f}")


if __name__ == "__main__":
    main()
