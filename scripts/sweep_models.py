"""Sweep every torchvision classification model through the layer adapter, with random weights at the
model's default input size: unit axes against the model's own shapes at a second size, each default
layer's receptive field against its measured gradient support, and a 2-step render + 4-image collect on
the first, middle and last default layer into one artifact that must validate.

The checks live in tests/sweep_checks.py (one implementation; tests/test_model_sweep.py runs a sample).

    .venv/bin/python scripts/sweep_models.py                       # all 80 models
    .venv/bin/python scripts/sweep_models.py --skip-big --json sweep.json
    .venv/bin/python scripts/sweep_models.py --models resnet18,swin_t,vit_b_16 -v
    .venv/bin/python scripts/sweep_models.py --report part1.json part2.json   # one table from stored rows
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import asdict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import sweep_checks  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated names (default: every torchvision classification model)")
    ap.add_argument("--skip-big", action="store_true",
                    help=f"skip models over {sweep_checks.BIG_PARAMS // 10**6}M parameters or "
                         f"{sweep_checks.BIG_INPUT}px input (listed as skipped)")
    ap.add_argument("--steps", type=int, default=2, help="render steps (default 2)")
    ap.add_argument("--images", type=int, default=4, help="synthetic images to collect (default 4)")
    ap.add_argument("--rf-layers", type=int, default=None, help="check this many default layers' fields (default all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", help="write the rows as JSON to this file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every problem found")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="print the table of rows stored by --json runs "
                    "(a sweep split over several processes), in model order, and run nothing")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else sweep_checks.model_names()
    unknown = [n for n in names if n not in sweep_checks.model_names()]
    if unknown:
        print(f"error: unknown model(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = []
    print(sweep_checks.format_rows([]), flush=True)
    for name in names:
        row = sweep_checks.check_model(name, steps=args.steps, images=args.images, skip_big=args.skip_big,
                                       rf_layers=args.rf_layers)
        rows.append(row)
        print(sweep_checks.format_rows([row]).split("\n", 1)[1], flush=True)
        if args.verbose:
            print(f"    phases: {row.phases}", flush=True)
        if args.verbose or row.status == "failed":
            for p in row.problems[:12]:
                print("    " + p.replace("\n", "\n    "), flush=True)
        if args.json:  # after every model, so a long sweep leaves its partial result
            with open(args.json, "w") as fh:
                json.dump([asdict(r) for r in rows], fh, indent=1)
    total = time.perf_counter() - start
    print()
    print(sweep_checks.format_rows(rows))
    print(summary(rows, total))
    return 1 if any(r.status == "failed" for r in rows) else 0


def report(paths) -> int:
    fields = {f.name for f in dataclasses.fields(sweep_checks.Row)}
    rows = {}
    for path in paths:
        with open(path) as fh:
            for item in json.load(fh):
                rows[item["model"]] = sweep_checks.Row(**{k: v for k, v in item.items() if k in fields})
    ordered = [rows[n] for n in sorted(rows)]
    print(sweep_checks.format_rows(ordered))
    print(summary(ordered, sum(r.seconds for r in ordered)))
    return 1 if any(r.status == "failed" for r in ordered) else 0


def summary(rows, total: float) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "failed", "skipped", "unsupported")}
    cpu = sum(r.cpu_seconds for r in rows)
    return (f"\n{len(rows)} models: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped, "
            f"{counts['unsupported']} unsupported; total {total:.0f} s ({total / 60:.1f} min) wall, "
            f"{cpu:.0f} s ({cpu / 60:.1f} min) CPU")


if __name__ == "__main__":
    sys.exit(main())
