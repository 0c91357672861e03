"""Benchmark `scope render`: unit-steps per second next to the bare truncated forward+backward.

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
"""

from __future__ import annotations

import argparse
import time

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--s1", type=int, default=1)
    ap.add_argument("--s2", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per measurement (best kept)")
    ap.add_argument("--gpu-units", type=int, default=2048)
    ap.add_argument("--gpu-steps", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        gpu_table(args)
    else:
        cpu_table(args)


if __name__ == "__main__":
    main()
