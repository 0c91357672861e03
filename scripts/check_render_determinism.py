"""How reproducible is a render? Same batch twice, alone vs in a batch, and where they part.

A unit's start and every transform it sees come from its own seed, so only float rounding can differ
between runs. This script measures what that rounding does on a real model (default: pretrained
EfficientNet-Lite0 `_blocks.8` units 0-3, 128 px, seed 1, the default schedule), for each thread count:
- the same batch rendered twice: bit-identical or not (max pixel difference);
- each unit rendered alone vs in the batch: mean and max |pixel difference| in /255 per unit, and the
  relative difference of the activation reached (act_final);
- `--growth`: how the difference grows over the optimisation (relative L2 distance of the image
  parameters alone vs in the batch after steps 1, 2, 4, ...): is it there at step 1, and how fast it grows;
- `--device cpu cuda`: the same on each device (threads apply to the CPU), then each device's batch render
  against the first device's ("on another machine").

    .venv/bin/python scripts/check_render_determinism.py --steps 32 128 --threads 1 2 --growth
    python3 scripts/check_render_determinism.py --device cpu cuda --threads 16 --steps 32 128
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from scopecli.model import resolve_model
from scopecli.render import RenderSettings, RenderTarget, render_units
from scopecli.render.schedule import DEFAULT_SCHEDULE


class Recorder:
    """Swaps torch.optim.Adam for one that keeps a copy of the parameters after every step."""

    def __init__(self):
        self.snapshots: list[torch.Tensor] = []

    def __enter__(self):
        real, snapshots = torch.optim.Adam, self.snapshots

        class RecordingAdam(real):
            def step(self, closure=None):
                out = super().step(closure)
                snapshots.append(self.param_groups[0]["params"][0].detach().clone())
                return out

        self._real = real
        torch.optim.Adam = RecordingAdam
        return self

    def __exit__(self, *exc):
        torch.optim.Adam = self._real


def render(loaded, targets, steps, batch, args, device):
    settings = RenderSettings(steps=steps, size=args.size, seed=args.seed, batch=batch, device=device,
                              schedule=args.schedule, robust_samples=1)
    return [rec for _, rec in render_units(loaded, targets, settings).records]


def growth(loaded, targets, steps, args, device) -> list[tuple[int, float]]:
    """Relative L2 distance of each unit's parameters, alone vs in the batch, after steps 1, 2, 4, ..."""
    with Recorder() as together:
        render(loaded, targets, steps, len(targets), args, device)
    alone = []
    for t in targets:
        with Recorder() as one:
            render(loaded, [t], steps, 1, args, device)
        alone.append(torch.stack([s[0] for s in one.snapshots]))
    a = torch.stack(alone, dim=1)  # (steps, n, ...)
    b = torch.stack(together.snapshots)
    dist = (a - b).flatten(2).norm(dim=2) / b.flatten(2).norm(dim=2).clamp_min(1e-12)
    marks = sorted({1, *[2**k for k in range(1, 12) if 2**k <= steps], steps})
    return [(s, float(dist[s - 1].mean())) for s in marks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--layer", default="_blocks.8")
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--schedule", default=DEFAULT_SCHEDULE)
    ap.add_argument("--steps", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--growth", action="store_true", help="also the per-step divergence (at the largest --steps)")
    ap.add_argument("--growth-only", action="store_true", help="only the per-step divergence")
    ap.add_argument("--no-mkldnn", action="store_true", help="CPU convolutions without oneDNN (torch's own kernels)")
    ap.add_argument("--device", nargs="+", default=["cpu"], help="devices to run on; later ones are compared to the first")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    loaded = resolve_model(args.model, weights=args.weights)
    targets = [RenderTarget(args.layer, u) for u in range(args.units)]
    print(f"{args.model} {args.layer} units 0-{args.units - 1}, {args.size} px, seed {args.seed}, "
          f"{args.schedule} schedule{', oneDNN off' if args.no_mkldnn else ''}; differences in /255 per unit", flush=True)
    rows, batches = [], {}
    for device in args.device:
        loaded.module.to(device)
        rows += run_device(loaded, targets, device, args, batches)
    for device in args.device[1:]:
        for steps in ([] if args.growth_only else args.steps):
            first, other = batches[(args.device[0], steps)], batches[(device, steps)]
            diff = [np.abs(a.image.astype(float) - b.image.astype(float)) for a, b in zip(first, other)]
            act = [abs(a.act_final - b.act_final) / max(abs(a.act_final), 1e-12) for a, b in zip(first, other)]
            row = {"devices": [args.device[0], device], "steps": steps,
                   "mean": [round(float(d.mean()), 2) for d in diff], "max": [int(d.max()) for d in diff],
                   "act_final_rel_diff_pct": [round(100 * x, 2) for x in act]}
            rows.append(row)
            print(f"{device} vs {args.device[0]} steps {steps:>4}: batch render mean "
                  + " ".join(f"{x:.2f}" for x in row["mean"]) + "  max " + " ".join(str(x) for x in row["max"])
                  + "  activation differs by " + " ".join(f"{x:.2f}%" for x in row["act_final_rel_diff_pct"]),
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "layer": args.layer, "units": args.units, "size": args.size,
                       "seed": args.seed, "schedule": args.schedule, "rows": rows}, fh, indent=1)


def run_device(loaded, targets, device, args, batches) -> list[dict]:
    """Same batch twice, alone vs batch (and --growth) on one device; keeps the batch renders in `batches`."""
    rows = []
    for threads in (args.threads if device == "cpu" else [torch.get_num_threads()]):
        torch.set_num_threads(threads)
        for steps in ([] if args.growth_only else args.steps):
            t0 = time.perf_counter()
            batch = render(loaded, targets, steps, len(targets), args, device)
            seconds = time.perf_counter() - t0
            again = render(loaded, targets, steps, len(targets), args, device)
            alone = [render(loaded, [t], steps, 1, args, device)[0] for t in targets]
            same_max = max(int(np.abs(a.image.astype(int) - b.image.astype(int)).max()) for a, b in zip(batch, again))
            diff = [np.abs(a.image.astype(float) - b.image.astype(float)) for a, b in zip(alone, batch)]
            act = [abs(a.act_final - b.act_final) / max(abs(b.act_final), 1e-12) for a, b in zip(alone, batch)]
            batches[(device, steps)] = batch
            row = {"device": device, "threads": threads, "steps": steps, "seconds_batch": round(seconds, 1),
                   "same_batch_max": same_max,
                   "alone_vs_batch_mean": [round(float(d.mean()), 2) for d in diff],
                   "alone_vs_batch_max": [int(d.max()) for d in diff],
                   "act_final_rel_diff_pct": [round(100 * x, 2) for x in act]}
            rows.append(row)
            print(f"{device} threads {threads} steps {steps:>4}: batch {seconds:.1f} s; same batch twice max {same_max}; alone vs batch mean "
                  + " ".join(f"{x:.2f}" for x in row["alone_vs_batch_mean"]) + "  max "
                  + " ".join(str(x) for x in row["alone_vs_batch_max"]) + "  activation differs by "
                  + " ".join(f"{x:.2f}%" for x in row["act_final_rel_diff_pct"]), flush=True)
        if args.growth or args.growth_only:
            g = growth(loaded, targets, max(args.steps), args, device)
            rows.append({"device": device, "threads": threads, "growth": g})
            print(f"{device} threads {threads} parameter distance alone vs batch after step: "
                  + ", ".join(f"{s}: {d:.1e}" for s, d in g), flush=True)
    return rows


if __name__ == "__main__":
    main()
