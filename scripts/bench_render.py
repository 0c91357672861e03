"""Benchmark `scope render`: unit-steps per second next to the bare truncated forward+backward, and
(`--quality`) how good a picture each schedule gives for its steps.

For a middle layer of resnet50 (random weights) and of EfficientNet-Lite0, at 128 and 224 px and batch
1, 8 and 32, it measures in one run, side by side:
  render   the engine's step rate: (time of a render with S2 steps - time with S1 steps) / (S2 - S1),
           so per-batch setup and the final evidence passes are excluded;
  bare     forward + backward of the same truncated network on a random input at the same batch;
and prints their ratio (goal: render >= 0.75 of bare). It also prints the speed-up of truncating the
forward after an early layer versus running the full network. With `--device cuda` it instead reports
units per minute for all of resnet50 `layer4.2` at 224 px and 512 steps, with and without bf16.

    .venv/bin/python scripts/bench_render.py            # CPU table (a few minutes on 2 cores)
    .venv/bin/python scripts/bench_render.py --device cuda
    .venv/bin/python scripts/bench_render.py --quality --sheet /tmp/render_sheet.png
    .venv/bin/python scripts/bench_render.py --baseline REV     # this tree vs REV (or a folder), one run

`--baseline REV`: the engine's step rate (as `render` above) of this tree and of the scopecli at git revision
REV, each in its own child process, alternating for `--rounds` rounds, on resnet50 `layer3.2` (random) and
EfficientNet-Lite0 `_blocks.8` at 128 px, batch 8, steps 2 -> 10 differenced; prints each side's median and
their ratio.

`--quality`: pretrained EfficientNet-Lite0, units 0-7 of an early, a middle and a late layer (`_blocks.2`,
`_blocks.8`, `_blocks.15`), 128 px, seed 1, rendered with the old schedule (`lucid`) and the new default
(`fast`), all in one run: lucid at 32..512 steps (`--old-steps`), fast at 32..128 (`--new-steps`, up to its
default; shorten either list to fit a time budget). Quality is the median over units of the render's channel mean
divided by the unit's largest channel mean over the first 60 photos (sorted by name) of --photos, both
measured by an independent copy of the model on the stored uint8 pixels. Also printed: the same ratio under
16 random Lucid transforms of the render ("robust": a picture that only works pixel-exact scores low),
the share of image energy above 0.25 cycles/pixel ("hf": high-frequency noise) and of saturated pixels
("sat"). `--sheet` writes a contact sheet: per layer, old 512-step renders over new default ones (or the
largest steps of each list).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from scopecli.model import LayerTap, resolve_model
from scopecli.render import RenderSettings, RenderTarget, render_units


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_rate(loaded, layer, batch, size, device, s1=1, s2=4, amp=False, redirect=False):
    """Unit-steps per second of the render loop (setup and evidence excluded by differencing).

    redirect=False measures the steady state (steps after the first 16, which use redirected ReLU
    gradients); redirect=True measures those first steps.
    """
    targets = [RenderTarget(layer, u) for u in range(batch)]

    def run(steps):
        settings = RenderSettings(steps=steps, size=size, batch=batch, device=str(device), amp=amp,
                                  robust_samples=1, redirect_steps=10**6 if redirect else 0)
        _sync(device)
        t = time.perf_counter()
        render_units(loaded, targets, settings)
        _sync(device)
        return time.perf_counter() - t

    run(s1)  # warm-up
    t1, t2 = run(s1), run(s2)
    return batch * (s2 - s1) / max(t2 - t1, 1e-9)


def bare_rate(loaded, layer, batch, size, device, reps=3, stop=True):
    """Unit-steps per second of plain forward+backward (input gradient) through the truncated net."""
    module = loaded.module.to(device)
    x = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
    with LayerTap(module, [layer], stop=stop) as tap:
        def step():
            acts = tap(loaded.preprocess.normalize(x))[layer]
            torch.autograd.grad(acts.float().mean(), [x])

        step()
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            step()
        _sync(device)
    return batch * reps / (time.perf_counter() - t)


def cpu_table(args):
    device = torch.device("cpu")
    models = [("resnet50", "random", "layer3.2"), ("efficientnet_lite0", "DEFAULT", "_blocks.8")]
    print(f"threads={torch.get_num_threads()}  render steps differenced: {args.s1}->{args.s2}, "
          f"best of {args.rounds} alternating rounds")
    print(f"{'model':<20}{'layer':<12}{'px':>5}{'batch':>6}{'render u-st/s':>15}{'bare u-st/s':>13}{'ratio':>7}")
    ratios = []
    for spec, weights, layer in models:
        loaded = resolve_model(spec, weights=weights)
        for size in args.sizes:
            for batch in args.batches:
                # alternate the two measurements and keep each one's best round: the CPUs are shared
                r = b = 0.0
                for _ in range(args.rounds):
                    r = max(r, render_rate(loaded, layer, batch, size, device, args.s1, args.s2))
                    b = max(b, bare_rate(loaded, layer, batch, size, device))
                ratios.append(r / b)
                print(f"{spec:<20}{layer:<12}{size:>5}{batch:>6}{r:>15.2f}{b:>13.2f}{r / b:>7.2f}", flush=True)
    print(f"render/bare: min {min(ratios):.2f}, median {sorted(ratios)[len(ratios) // 2]:.2f}")

    loaded = resolve_model("efficientnet_lite0")
    plain = render_rate(loaded, "_blocks.8", 8, 128, device, args.s1, args.s2)
    redirected = render_rate(loaded, "_blocks.8", 8, 128, device, args.s1, args.s2, redirect=True)
    share = 16 / 512 * (plain / redirected - 1)
    print(f"redirected-ReLU steps (first 16): {redirected:.2f} vs {plain:.2f} unit-steps/s "
          f"(x{plain / redirected:.2f} slower; +{100 * share:.1f}% on a 512-step render)")

    print("\ntruncation (forward+backward, batch 8, 128 px): early layer vs the full network")
    for spec, weights, early in [("resnet50", "random", "layer1.0"), ("efficientnet_lite0", "DEFAULT", "_blocks.2")]:
        loaded = resolve_model(spec, weights=weights)
        cut = bare_rate(loaded, early, 8, 128, device, stop=True)
        full = bare_rate(loaded, early, 8, 128, device, stop=False)
        print(f"{spec:<20}{early:<12} truncated {cut:8.2f}/s  full {full:8.2f}/s  speed-up x{cut / full:.2f}",
              flush=True)


BASELINE_CASES = [("resnet50", "random", "layer3.2"), ("efficientnet_lite0", "DEFAULT", "_blocks.8")]
BASELINE_S1, BASELINE_S2 = 2, 10  # steps differenced: 1 -> 4 is too short to time on a shared machine


def rates_json(args):
    """One child's figures for --baseline: the step rate of each case, as one JSON line."""
    import scopecli

    device = torch.device("cpu")
    rates = {}
    for spec, weights, layer in BASELINE_CASES:  # best of two: a short differenced timing catches the noise
        loaded = resolve_model(spec, weights=weights)
        rates[f"{spec} {layer}"] = max(render_rate(loaded, layer, 8, 128, device, BASELINE_S1, BASELINE_S2)
                                       for _ in range(2))
    print(json.dumps({"tree": os.path.dirname(os.path.dirname(scopecli.__file__)), "rates": rates}))


def side_by_side(args):
    """This tree vs the code at --baseline, alternating child processes; medians and ratios."""
    from _baseline import extract

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    old = extract(args.baseline)
    child = [sys.executable, os.path.abspath(__file__), "--rates-json", "--threads", str(args.threads)]
    runs = {"this tree": [], "baseline": []}
    try:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.rounds} alternating rounds, "
              f"threads={args.threads}, steps differenced {BASELINE_S1}->{BASELINE_S2} (best of 2), 128 px, batch 8")
        for _ in range(args.rounds):
            for name, tree in (("this tree", here), ("baseline", old)):
                env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
                out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(old, ignore_errors=True)
    print(f"{'case':<32}{'this tree u-st/s':>18}{'baseline u-st/s':>17}{'ratio':>8}  (median; ratio > 1: faster)")
    for case in runs["this tree"][0]["rates"]:
        a = float(np.median([r["rates"][case] for r in runs["this tree"]]))
        b = float(np.median([r["rates"][case] for r in runs["baseline"]]))
        print(f"{case:<32}{a:>18.2f}{b:>17.2f}{a / b:>8.3f}")


def gpu_table(args):
    device = torch.device(args.device)
    loaded = resolve_model("resnet50", weights="random")
    units = list(range(args.gpu_units))
    print(f"{torch.cuda.get_device_name(device)}: resnet50 layer4.2, {len(units)} units, 224 px, {args.gpu_steps} steps")
    for amp in (False, True):
        targets = [RenderTarget("layer4.2", u) for u in units]
        settings = RenderSettings(steps=args.gpu_steps, size=224, batch="auto", device=str(device), amp=amp)
        _sync(device)
        t = time.perf_counter()
        result = render_units(loaded, targets, settings)
        _sync(device)
        dt = time.perf_counter() - t
        print(f"bf16={amp!s:<5} batch {result.batch_size:>4}  {dt:8.1f} s  {60 * len(units) / dt:8.1f} units/min  "
              f"skipped {len(result.skipped)}", flush=True)
        b = bare_rate(loaded, "layer4.2", result.batch_size, 224, device)
        r = len(units) * args.gpu_steps / dt
        print(f"          render {r:.0f} unit-steps/s vs bare fwd+bwd {b:.0f}/s: ratio {r / b:.2f}", flush=True)


QUALITY_LAYERS = ("_blocks.2", "_blocks.8", "_blocks.15")


def photo_maxima(loaded, layers, folder, limit=60, batch=20):
    """{layer: per-unit max over photos of the channel mean}, photos = the first `limit` by name."""
    from pathlib import Path

    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    if not files:
        raise SystemExit(f"no photos in {folder}")
    transform = loaded.preprocess.pil_transform()
    best = {}
    with torch.no_grad(), LayerTap(loaded.module, layers) as tap:
        for i in range(0, len(files), batch):
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in files[i : i + batch]])
            for layer, a in tap(loaded.preprocess.normalize(x)).items():
                m = a.float().flatten(2).mean(2).max(0).values
                best[layer] = m if layer not in best else torch.maximum(best[layer], m)
    return best, len(files)


def judged_means(judge, layer, images, transforms=0):
    """Channel means [n, C] of uint8 HxWx3 `images` by the judge model; averaged over `transforms` fixed
    random Lucid transforms when > 0."""
    from scopecli.render import transforms as tf

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    views = [None]
    if transforms:
        theta = tf.affine_matrices(tf.draw(torch.Generator().manual_seed(123), transforms), x.shape[-1])
        views = [theta[k : k + 1].expand(len(x), 2, 3) for k in range(transforms)]
    total = 0
    with torch.no_grad(), LayerTap(judge.module, [layer]) as tap:
        for th in views:
            xv = x if th is None else tf.warp(x, th)
            total = total + tap(judge.preprocess.normalize(xv))[layer].float().flatten(2).mean(2)
    return total / len(views)


def image_stats(images):
    """(mean share of spectral energy above 0.25 cycles/pixel, mean share of pixels at 0-2 or 253-255)."""
    from scopecli.render.param import rfft_freqs

    hf, sat = [], []
    for im in images:
        g = im.astype(np.float64).mean(2) / 255
        power = np.abs(np.fft.rfft2(g - g.mean())) ** 2
        f = rfft_freqs(*g.shape)
        hf.append(power[f > 0.25].sum() / max(power[f > 0].sum(), 1e-12))
        sat.append(((im <= 2) | (im >= 253)).mean())
    return float(np.mean(hf)), float(np.mean(sat))


def quality_table(args):
    """Steps vs quality for each schedule and layer (see the module docstring); optional contact sheet."""
    import json

    from scopecli.render.schedule import DEFAULT_SCHEDULE, DEFAULT_STEPS

    loaded = resolve_model("efficientnet_lite0")
    judge = resolve_model("efficientnet_lite0")  # an independent copy measures the pictures
    layers = list(args.layers)
    maxima, n_photos = photo_maxima(judge, layers, args.photos, args.n_photos)
    units = list(range(args.units))
    targets = [RenderTarget(layer, u) for layer in layers for u in units]
    print(f"pretrained efficientnet_lite0, units 0-{args.units - 1} of {', '.join(layers)}, {args.size} px, "
          f"seed {args.seed}, threads {torch.get_num_threads()}; photo max over {n_photos} photos of {args.photos}")
    runs = [("lucid", args.old_steps), ("fast", args.fast_steps), (DEFAULT_SCHEDULE, args.new_steps)]
    runs = [(name, steps) for name, steps in runs if steps]
    schedules = [name for name, _ in runs]
    all_steps = sorted({s for _, steps in runs for s in steps})
    rows, images = [], {}
    for schedule, steps_list in runs:
        for steps in steps_list:
            settings = RenderSettings(steps=steps, size=args.size, seed=args.seed, schedule=schedule,
                                      batch=len(targets), device="cpu", robust_samples=1)
            t = time.perf_counter()
            result = render_units(loaded, targets, settings)
            seconds = time.perf_counter() - t
            by_layer = {}
            for layer, rec in result.records:
                by_layer.setdefault(layer, []).append(rec)
            for layer in layers:
                recs = by_layer.get(layer, [])
                pics = [r.image for r in recs]
                top = maxima[layer]
                plain = judged_means(judge, layer, pics)
                robust = judged_means(judge, layer, pics, transforms=16)
                ratio = [float(plain[i, r.unit] / top[r.unit]) for i, r in enumerate(recs)]
                robust_ratio = [float(robust[i, r.unit] / top[r.unit]) for i, r in enumerate(recs)]
                hf, sat = image_stats(pics)
                rows.append({"schedule": schedule, "steps": steps, "layer": layer, "median_ratio": float(np.median(ratio)),
                             "median_robust_ratio": float(np.median(robust_ratio)), "hf": hf, "sat": sat,
                             "ratios": ratio, "seconds_all_layers": seconds, "skipped": len(result.skipped)})
                images[(schedule, steps, layer)] = pics
            print(f"  {schedule} {steps} steps: {seconds:.1f} s for {len(targets)} units", flush=True)

    def cell(schedule, layer, steps):
        return next((r for r in rows if r["schedule"] == schedule and r["layer"] == layer and r["steps"] == steps), None)

    def table(key, fmt):
        print(f"{'schedule':<9}{'layer':<12}" + "".join(f"{s:>9}" for s in all_steps))
        for schedule in schedules:
            for layer in layers:
                cells = [cell(schedule, layer, s) for s in all_steps]
                print(f"{schedule:<9}{layer:<12}" + "".join(f"{fmt(c[key]) if c else '-':>9}" for c in cells))

    print("\nmedian ratio (render / photo max), by steps")
    table("median_ratio", lambda v: f"{v:.2f}")
    print("\nmedian robust ratio (under 16 random transforms), by steps")
    table("median_robust_ratio", lambda v: f"{v:.2f}")
    print("\nhigh-frequency energy share, by steps")
    table("hf", lambda v: f"{v:.3f}")
    print("\nsaturated pixel share, by steps")
    table("sat", lambda v: f"{v:.4f}")
    print(f"\nseconds for all {len(targets)} units in one batch, by steps")
    for schedule in schedules:
        cells = [cell(schedule, layers[0], s) for s in all_steps]
        print(f"{schedule:<20}" + "".join(f"{c['seconds_all_layers']:>9.1f}" if c else f"{'-':>9}" for c in cells))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"photos": str(args.photos), "n_photos": n_photos, "size": args.size, "seed": args.seed,
                       "rows": rows}, fh, indent=1)
    default = DEFAULT_STEPS[DEFAULT_SCHEDULE]
    old = ("lucid", 512 if 512 in args.old_steps else max(args.old_steps)) if args.old_steps else None
    new = (DEFAULT_SCHEDULE, default if default in args.new_steps else max(args.new_steps))
    if args.sheet:
        shown = ([old] if old else []) + ([("fast", max(args.fast_steps))] if args.fast_steps else []) + [new]
        contact_sheet(args.sheet, layers, images, shown, rows)
        print(f"wrote {args.sheet}")


def contact_sheet(path, layers, images, shown, rows):
    """Per layer: one labelled row of renders per (schedule, steps) in `shown` (old, 0.2's fast, new default)."""
    from PIL import Image, ImageDraw

    pics = images[(*shown[0], layers[0])]
    s, n = pics[0].shape[0], len(pics)
    label = 14
    sheet = Image.new("RGB", (n * (s + 2), len(layers) * len(shown) * (s + label)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for layer in layers:
        for schedule, steps in shown:
            r = next(r for r in rows if r["schedule"] == schedule and r["steps"] == steps and r["layer"] == layer)
            draw.text((2, y + 1), f"{layer} {schedule} {steps} steps: median ratio {r['median_ratio']:.2f}, "
                                  f"robust {r['median_robust_ratio']:.2f}", fill="black")
            for i, im in enumerate(images[(schedule, steps, layer)]):
                sheet.paste(Image.fromarray(im), (i * (s + 2), y + label))
            y += s + label
    sheet.save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quality", action="store_true", help="steps vs quality table, old vs new schedule")
    ap.add_argument("--photos", default="/work/shared/data/imagenet-sample-500")
    ap.add_argument("--n-photos", type=int, default=60)
    ap.add_argument("--layers", nargs="+", default=list(QUALITY_LAYERS))
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--old-steps", type=int, nargs="*", default=[32, 64, 128, 256, 512],
                    help="steps rendered with the old schedule (lucid); 512 is the old default, for the sheet")
    ap.add_argument("--fast-steps", type=int, nargs="*", default=[64, 128],
                    help="steps of the 0.2 default schedule `fast` (none: leave it out)")
    ap.add_argument("--new-steps", type=int, nargs="+", default=[32, 64, 128],
                    help="steps rendered with the new default schedule (its default steps, for the sheet)")
    ap.add_argument("--sheet", default=None, help="contact sheet PNG (old 512 steps vs new default)")
    ap.add_argument("--json", default=None, help="write the quality rows as JSON")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--s1", type=int, default=1)
    ap.add_argument("--s2", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per measurement (best kept)")
    ap.add_argument("--gpu-units", type=int, default=2048)
    ap.add_argument("--gpu-steps", type=int, default=512)
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="time the step rate of this tree and of git revision REV (or a folder) side by side")
    ap.add_argument("--rates-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.baseline:
        side_by_side(args)
    elif args.rates_json:
        rates_json(args)
    elif args.quality:
        quality_table(args)
    elif args.device.startswith("cuda"):
        gpu_table(args)
    else:
        cpu_table(args)


if __name__ == "__main__":
    main()
