"""Benchmark `collect` pass 1 against a bare no-grad forward over the same loader and layers.

Prints images/s of both, measured side by side in one run (bare, collect, bare again; the two bare runs
are averaged so a shared machine's drift hits both sides), and their ratio (goal >= 0.9).

    .venv/bin/python scripts/bench_collect.py --model efficientnet_lite0 --limit 256
    .venv/bin/python scripts/bench_collect.py --model resnet50 --weights random --limit 128
    .venv/bin/python scripts/bench_collect.py --model resnet50 --weights random --device cuda --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from scopecli.capture import LayerTap
from scopecli.collect import CollectSettings, collect, open_source
from scopecli.collect.data import ModelInputs, default_workers, make_loader
from scopecli.collect.engine import resolve_device
from scopecli.layers import default_layers
from scopecli.models import resolve_model


def bare(model, source, layers, n, batch, workers, device, bf16) -> float:
    """images/s of loader + normalize + forward to the deepest layer, nothing else."""
    pre = model.preprocess
    ds = ModelInputs(source.files, range(n), pre.resize, pre.crop, pre.interpolation)
    loader = make_loader(ds, batch, workers, pin_memory=device.type == "cuda")
    ac = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    with LayerTap(model.module, layers) as tap, torch.no_grad():
        for b in loader:
            x = pre.normalize(b["image"].to(device, non_blocking=True).float().div_(255.0))
            with ac:
                outs = tap(x)
            for v in outs.values():
                v.float().sum().item() if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--data", default="/work/shared/data/imagenet-sample-500")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--layer", action="append", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = resolve_model(args.model, weights=args.weights)
    model.module.to(device)
    source = open_source(args.data)
    n = min(args.limit, len(source))
    layers = args.layer or default_layers(model.module, model.preprocess.crop)
    workers = default_workers() if args.workers is None else args.workers
    bare(model, source, layers, min(n, args.batch), args.batch, workers, device, args.bf16)  # warm-up
    b1 = bare(model, source, layers, n, args.batch, workers, device, args.bf16)
    settings = CollectSettings(batch=args.batch, workers=workers, limit=n, device=args.device, bf16=args.bf16)
    res = collect(model, source, layers, settings)
    b2 = bare(model, source, layers, n, args.batch, workers, device, args.bf16)
    base = (b1 + b2) / 2
    t = res.timings
    total = n / (t["pass1_s"] + t["pass2_s"])
    print(json.dumps({
        "model": args.model, "weights": model.weights, "device": str(device), "bf16": args.bf16, "images": n,
        "layers": len(layers), "units": sum(r.units for r in res.layers), "batch": args.batch, "workers": workers,
        "threads": torch.get_num_threads(), "bare_img_s": [round(b1, 2), round(b2, 2)],
        "collect_pass1_img_s": t["images_per_s"], "ratio_pass1": round(t["images_per_s"] / base, 3),
        "collect_total_img_s": round(total, 2), "ratio_total": round(total / base, 3),
        "pass2_s": t["pass2_s"], "patches": t["patches"],
    }, indent=1))


if __name__ == "__main__":
    main()
