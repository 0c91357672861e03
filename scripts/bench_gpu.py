"""GPU figures for scope: render units/minute, collect images/s, and what all of resnet50 would cost.

One prepared run (under 8 minutes on one H100; every part is capped by --budget-s) that measures, on --device:
- render: resnet50 (random weights: nothing downloads) `layer4.2`, 224 px, the default schedule and steps,
  batch 32 / 64 / 128, fp32 and bf16 (`--amp`): units per minute, timed after an untimed warm-up; then the
  largest batch with `--fast-kernels` (cuDNN's own pick, not reproducible) and with deterministic kernels that
  cuDNN picks once per shape (`cudnn.benchmark` among the deterministic ones: a candidate default), each
  rendered twice to check bit-identity; the ratios deterministic / fast per precision (goal >= 0.9);
- collect pass 1 at the forward's limit: the photos decoded once onto the GPU, then a bare bf16 forward to
  the deepest default layer over those batches, against the engine's pass 1 (decode on the device, statistics,
  top-k, probes) over the same photos; ratio and images/s (goals >= 0.8 and >= 3,000 img/s), and the host
  syncs pass 1 makes (torch.cuda sync debug mode, one short run);
- collect: images/s of a whole `scopecli.collect.collect` (pass 1 statistics + pass 2 patches) on resnet50's
  default layers over --photos, loader threads 0 / 4 / 8, decode on the device and on the CPU;
- extrapolation: "all block-output units of resnet50" = its 16 default layers (the bottleneck outputs
  layer1.0 .. layer4.2, 15,104 units) rendered at the default settings. Each layer costs what one timed
  step there predicts (scopecli/render/estimate.py, at the fastest measured batch and precision), scaled
  by how far layer4.2's prediction was from its measured render; plus one collect over --dataset-images
  photos: pass 1 at its best measured rate, plus pass 2 (patches: its cost grows with the patches and the
  distinct images they come from, not with the photos) as measured, plus the extra distinct images
  (at most one per patch) reloaded at the pass-1 rate: an upper bound. Printed in GPU-hours.
--photos is repeated (symbolic links, `--repeat-photos`) so a GPU pass lasts long enough to time.

Prints a compact table; `--json PATH` writes every figure. `--smoke` runs tiny sizes on the CPU to prove
the script works (its figures mean nothing).

    .venv/bin/python scripts/bench_gpu.py --device cuda --photos /work/shared/data/imagenet-sample-500 --json gpu.json
    .venv/bin/python scripts/bench_gpu.py --smoke --json /tmp/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scopecli.collect import CollectSettings, collect, open_source
from scopecli.model import default_layers, layer_table, resolve_model
from scopecli.render import RenderSettings, RenderTarget, render_units
from scopecli.render.engine import resolve_device
from scopecli.render.estimate import batch_cost, time_layer
from scopecli.render.schedule import DEFAULT_SCHEDULE, DEFAULT_STEPS

RENDER_LAYER = "layer4.2"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_rate(loaded, batch, settings, device) -> dict:
    """Units/minute for one batch of `batch` layer4.2 units (one warm-up batch of 2 steps first)."""
    targets = [RenderTarget(RENDER_LAYER, u) for u in range(batch)]
    warm = dataclasses.replace(settings, steps=2)
    render_units(loaded, targets, warm)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    result = render_units(loaded, targets, settings)
    sync(device)
    seconds = time.perf_counter() - t
    row = {"batch": batch, "amp": bool(settings.amp), "deterministic": bool(settings.deterministic),
           "steps": int(settings.steps), "seconds": round(seconds, 3),
           "units_per_min": round(60 * batch / seconds, 2), "skipped": len(result.skipped)}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def collect_rate(loaded, source, layers, n, workers, batch, device_name, amp, decode="auto") -> dict:
    """Images/s of a whole collect (pass 1 + pass 2) over the first n photos."""
    settings = CollectSettings(batch=batch, workers=workers, limit=n, device=device_name, bf16=amp,
                               probe=min(500, n), decode=decode)
    t = time.perf_counter()
    result = collect(loaded, source, layers, settings)
    seconds = time.perf_counter() - t
    timings = result.timings
    return {"workers": workers, "decode": timings.get("decode"), "amp": bool(amp), "images": n,
            "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2),
            "pass1_images_per_s": round(n / timings["pass1_s"], 2) if timings.get("pass1_s") else None,
            "pass1_s": timings.get("pass1_s"), "pass2_s": timings.get("pass2_s"), "patches": timings.get("patches")}


def noise_photos(folder: Path, n: int, size: int) -> Path:
    """`n` random JPEGs (for --smoke without --photos)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"noise_{i:03d}.jpg")
    return folder


def warp_cost(batch: int, size: int, device, repeats: int = 20) -> dict:
    """Milliseconds of one transform warp forward + backward, grid_sample's own vs the reproducible one."""
    from scopecli.render import transforms as tf
    from scopecli.render.reproducible import reproducible

    images = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
    theta = tf.affine_matrices(tf.draw(torch.Generator().manual_seed(0), batch), size).to(device)
    row = {}
    for name, on in (("grid_sample_ms", False), ("reproducible_ms", True)):
        with reproducible(device, on):
            for k in range(repeats + 3):
                if k == 3:
                    sync(device)
                    t = time.perf_counter()
                (grad,) = torch.autograd.grad(tf.warp(images, theta).square().sum(), images)
            sync(device)
        row[name] = round(1000 * (time.perf_counter() - t) / repeats, 3)
    return row


def repeated_photos(folder: str, times: int, into: Path) -> str:
    """A folder of `times` symbolic links to every photo of `folder` (so a fast GPU pass lasts long enough)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    into.mkdir(parents=True, exist_ok=True)
    for r in range(times):
        for p in files:
            (into / f"r{r}_{p.name}").symlink_to(p.resolve())
    return str(into)


def pass1_vs_forward(loaded, source, layers, n, batch, device, workers, amp=True) -> dict:
    """Pass 1 of the engine against a bare forward over the same decoded batches: the photos are decoded once
    (on the device when it can) and kept there, the bare forward runs to the deepest layer under bf16 autocast;
    then the engine's pass 1 (its own loader and decode) over the same photos. Images/s of both, their ratio,
    and the host syncs pass 1 makes per batch (CUDA's sync debug mode, counted on a short second run)."""
    import warnings

    from scopecli.collect import engine
    from scopecli.model import LayerTap, find_layer

    pre = loaded.preprocess
    settings = CollectSettings(batch=batch, workers=workers, limit=n, device=str(device), bf16=amp, probe=min(500, n))
    decoded = []
    for b in engine.pass1_batches(source, range(n), pre, settings, device, workers):
        decoded.append(b["image"].to(device))
    ac = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    rows = {"images": n, "batch": batch, "amp": amp, "decode": "device" if engine.decode_on_device(settings, pre, device) else "cpu"}
    with LayerTap(loaded.module, layers) as tap, torch.no_grad():
        for rep in range(2):  # the first is a warm-up (cuDNN picks, allocator)
            sync(device)
            t = time.perf_counter()
            for x in decoded:
                with ac:
                    tap(pre.normalize(x.float().div_(255.0)))
            sync(device)
            bare_s = time.perf_counter() - t
    table = layer_table(loaded.module, pre.crop)
    records = [find_layer(table, name).record() for name in layers]

    def run(m):
        sync(device)
        t = time.perf_counter()
        engine._pass1(loaded.module, pre, source, range(m), layers, records, settings, device, workers,
                      min(settings.probe, m), True)
        sync(device)
        return time.perf_counter() - t

    run(min(n, 2 * batch))  # warm-up
    pass1_s = run(n)
    rows.update(bare_img_s=round(n / bare_s, 1), pass1_img_s=round(n / pass1_s, 1), ratio=round(bare_s / pass1_s, 3))
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                m = min(n, 4 * batch)
                run(m)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        rows["host_syncs_per_batch"] = round(len(caught) / max(1, math.ceil(m / batch)), 2)
    return rows


def identical_twice(loaded, batch, settings) -> bool:
    """Is the same batch rendered twice bit-identical (pixels of every unit)?"""
    targets = [RenderTarget(RENDER_LAYER, u) for u in range(batch)]
    a, b = (render_units(loaded, targets, settings) for _ in range(2))
    return all(np.array_equal(x.image, y.image) for (_, x), (_, y) in zip(a.records, b.records))


@contextlib.contextmanager
def picked_once(enabled: bool):
    """Deterministic kernels that cuDNN picks once per shape (benchmark among the deterministic algorithms)."""
    import importlib

    render_engine = importlib.import_module("scopecli.render.engine")
    rep = importlib.import_module("scopecli.render.reproducible")

    if not enabled:
        yield
        return
    original = rep.reproducible

    @contextlib.contextmanager
    def picking(device, on=True):
        with original(device, on):
            saved = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
            try:
                yield
            finally:
                torch.backends.cudnn.benchmark = saved

    render_engine.reproducible = picking
    try:
        yield
    finally:
        render_engine.reproducible = original


def collect_seconds(rows: list[dict], n_images: int) -> float | None:
    """Upper bound for a collect over `n_images` photos from the measured rows: pass 1 at the best rate; pass 2
    as measured (its patches do not grow with the photos) plus the extra distinct images it may reload (at most
    one per patch, beyond those measured) at the best pass-1 rate."""
    if not rows:
        return None
    rate = max(r["pass1_images_per_s"] for r in rows)
    best = min(rows, key=lambda r: r["pass2_s"])
    extra = max(0, min(n_images, best["patches"]) - best["images"])
    return n_images / rate + best["pass2_s"] + extra / rate


def extrapolate(loaded, layers, units, settings, device, calibration, batch, robust) -> dict:
    """Predicted seconds to render every unit of `layers` (one timed step per layer, calibrated)."""
    normalize = loaded.preprocess.normalize
    per_layer, total = {}, 0.0
    for layer in layers:
        cost = time_layer(loaded.module, normalize, layer, batch, int(settings.size), device, bool(settings.amp))
        batches = math.ceil(units[layer] / batch)
        seconds = batches * batch_cost(cost, int(settings.steps), 1 + robust) * calibration
        per_layer[layer] = {"units": units[layer], "step_s": round(cost.step_s, 5), "seconds": round(seconds, 1)}
        total += seconds
    return {"layers": per_layer, "seconds": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--photos", default=None, help="folder of photos for the collect figures")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: proves the script runs")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS[DEFAULT_SCHEDULE])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--collect-images", type=int, default=2000, help="photos per collect measurement (cap)")
    ap.add_argument("--collect-batch", type=int, default=256)
    ap.add_argument("--dataset-images", type=int, default=50_000, help="collect size for the extrapolation")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    ap.add_argument("--repeat-photos", type=int, default=4, help="use every photo this many times (symbolic links)")
    ap.add_argument("--no-collect", action="store_true", help="render figures only")
    args = ap.parse_args()
    start = time.perf_counter()
    tmp = None
    if args.smoke:
        args.device, args.steps, args.size = "cpu", 3, 32
        args.batches, args.workers = [2, 4], [0, 1]
        args.collect_images, args.collect_batch, args.repeat_photos = 12, 4, 2
        if args.photos is None:
            tmp = tempfile.TemporaryDirectory()
            args.photos = str(noise_photos(Path(tmp.name), 6, 64))
    if args.photos is None and not args.no_collect:
        ap.error("--photos DIR is needed (or --smoke, or --no-collect)")
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    loaded = resolve_model("resnet50", weights="random", input_size=args.size if args.smoke else None)
    loaded.module.to(device)
    layers = default_layers(loaded.module, loaded.preprocess.crop)
    table = {info.name: info for info in layer_table(loaded.module, loaded.preprocess.crop)}
    units = {name: table[name].channels for name in layers}
    out = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__, "smoke": args.smoke, "schedule": DEFAULT_SCHEDULE, "steps": args.steps,
           "size": args.size, "render": [], "collect": [], "skipped": []}

    def over_budget(what):
        if time.perf_counter() - start > args.budget_s:
            out["skipped"].append(what)
            return True
        return False

    print(f"{out['gpu'] or device}: resnet50 (random weights) {RENDER_LAYER}, {args.size} px, {args.steps} steps "
          f"({DEFAULT_SCHEDULE} schedule)", flush=True)
    print(f"{'render':<8}{'batch':>6}{'amp':>6}{'kernels':>15}{'seconds':>9}{'units/min':>11}{'peak GiB':>10}"
          f"{'same twice':>12}", flush=True)
    top = max(args.batches)
    runs = [(amp, batch, "deterministic") for amp in (False, True) for batch in args.batches]
    runs += [(amp, top, kind) for amp in (False, True) for kind in ("fast", "picked once")]
    for amp, batch, kind in runs:
        if over_budget(f"render batch {batch} amp {amp} {kind}"):
            continue
        settings = RenderSettings(steps=args.steps, size=args.size, batch=batch, device=str(device), amp=amp, seed=0,
                                  deterministic=kind != "fast")
        torch.backends.cudnn.benchmark = device.type == "cuda" and kind == "fast"
        with picked_once(kind == "picked once"):
            row = render_rate(loaded, batch, settings, device)
            row["kernels"] = kind
            if batch == top and not over_budget(f"identity {kind} amp {amp}"):
                row["identical_twice"] = identical_twice(loaded, min(batch, 8), dataclasses.replace(settings, steps=8))
        out["render"].append(row)
        print(f"{'':<8}{batch:>6}{'bf16' if amp else 'fp32':>6}{kind:>15}"
              f"{row['seconds']:>9.1f}{row['units_per_min']:>11.1f}{row['peak_gib'] if 'peak_gib' in row else '-':>10}"
              f"{str(row.get('identical_twice', '-')):>12}", flush=True)
    out["render_ratios"] = {}
    for amp in (False, True):
        got = {r["kernels"]: r["units_per_min"] for r in out["render"] if r["amp"] == amp and r["batch"] == top}
        if "fast" in got:
            for kind in ("deterministic", "picked once"):
                if kind in got:
                    out["render_ratios"][f"{kind} / fast, {'bf16' if amp else 'fp32'}"] = round(got[kind] / got["fast"], 3)
    for name, ratio in out["render_ratios"].items():
        print(f"  units/min {name}: {ratio:.2f} (goal >= 0.9)", flush=True)

    out["warp"] = warp_cost(max(args.batches), args.size, device)
    w = out["warp"]
    print(f"warp forward+backward, batch {max(args.batches)}: grid_sample {w['grid_sample_ms']:.2f} ms, reproducible "
          f"{w['reproducible_ms']:.2f} ms", flush=True)
    if args.no_collect:
        args.workers = []
    source = open_source(args.photos) if args.photos else None
    if source is not None and args.repeat_photos > 1:
        tmp = tmp or tempfile.TemporaryDirectory()
        source = open_source(repeated_photos(args.photos, args.repeat_photos, Path(tmp.name) / "repeated"))
    n = min(args.collect_images, len(source)) if source is not None else 0
    if source is not None and not over_budget("pass 1 vs bare forward"):
        out["pass1"] = pass1_vs_forward(loaded, source, layers, n, args.collect_batch, device, max(args.workers))
        p = out["pass1"]
        print(f"pass 1 ({p['decode']} decode, bf16) {p['pass1_img_s']:.0f} img/s vs bare forward {p['bare_img_s']:.0f} "
              f"img/s over the same decoded batches: ratio {p['ratio']:.2f} (goals >= 0.8, >= 3000 img/s)"
              + (f"; host syncs per batch {p['host_syncs_per_batch']}" if "host_syncs_per_batch" in p else ""), flush=True)
    print(f"{'collect':<8}{'workers':>8}{'decode':>8}{'images':>8}{'img/s':>9}{'pass1 img/s':>13}{'pass2 s':>9}"
          f"{'patches':>9}   ({len(layers)} default layers, batch {args.collect_batch}, bf16)", flush=True)
    for workers in args.workers:
        for decode in (("device", "cpu") if workers == max(args.workers) else ("auto",)):
            if over_budget(f"collect workers {workers} decode {decode}"):
                continue
            row = collect_rate(loaded, source, layers, n, workers, args.collect_batch, str(device), True, decode)
            out["collect"].append(row)
            print(f"{'':<8}{workers:>8}{row['decode'] or '-':>8}{n:>8}{row['images_per_s']:>9.1f}"
                  f"{row['pass1_images_per_s'] or 0:>13.1f}{row['pass2_s'] or 0:>9.1f}{row['patches'] or 0:>9}", flush=True)

    if out["render"]:
        best = max((r for r in out["render"] if r["kernels"] == "deterministic"), key=lambda r: r["units_per_min"])
        settings = RenderSettings(steps=args.steps, size=args.size, batch=best["batch"], device=str(device),
                                  amp=best["amp"])
        robust = int(settings.robust_samples)
        own = time_layer(loaded.module, loaded.preprocess.normalize, RENDER_LAYER, best["batch"], args.size, device,
                         best["amp"])
        predicted = batch_cost(own, args.steps, 1 + robust)
        calibration = best["seconds"] / predicted if predicted > 0 else 1.0
        ext = extrapolate(loaded, layers, units, settings, device, calibration, best["batch"], robust)
        collect_s = collect_seconds(out["collect"], args.dataset_images)
        out["extrapolation"] = {
            "what": "render every unit of resnet50's 16 block outputs (its default layers layer1.0..layer4.2) "
                    "at the default schedule and steps; collect over dataset_images photos",
            "units": sum(units.values()), "batch": best["batch"], "amp": best["amp"],
            "calibration": round(calibration, 3), "render_gpu_hours": round(ext["seconds"] / 3600, 3),
            "layers": ext["layers"], "dataset_images": args.dataset_images,
            "collect_gpu_hours": round(collect_s / 3600, 3) if collect_s is not None else None,
        }
        e = out["extrapolation"]
        print(f"all {e['units']} block-output units of resnet50, {args.steps} steps, batch {e['batch']} "
              f"{'bf16' if e['amp'] else 'fp32'}: render {e['render_gpu_hours']:.2f} GPU-hours "
              f"(per-layer timed steps x {e['calibration']:.2f} measured/predicted on {RENDER_LAYER})"
              + (f"; collect over {args.dataset_images} photos {e['collect_gpu_hours']:.2f} GPU-hours"
                 if collect_s is not None else ""), flush=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    if out["skipped"]:
        print(f"skipped (over --budget-s {args.budget_s:.0f}): {', '.join(out['skipped'])}", flush=True)
    print(f"total {out['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
