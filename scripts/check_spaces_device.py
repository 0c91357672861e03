"""Unit spaces on a GPU, checked against the CPU: sample, NMF and SAE fits, collect and render of space units.

Runs the whole path twice on the same tiny model and noise images (tests/tinymodels.py), once with
--device cpu and once with --device cuda, and prints one PASS/FAIL line per check: the activation
samples agree (same keys; vectors within float16 rounding), spaces fitted on the GPU reconstruct
the sample as well as CPU fits, collect's top scores of a space fitted once agree between the devices,
and a render of a space unit on the GPU raises it. Needs a CUDA device; no test needs one.

    PYTHONPATH=.:tests python3 scripts/check_spaces_device.py [--workdir /tmp/spaces_device]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

from collect_builders import noise_images  # noqa: E402

from scopecli.artifact import open_artifact  # noqa: E402
from scopecli.collect import CollectSettings, open_source  # noqa: E402
from scopecli.jobs.collect import run_collect  # noqa: E402
from scopecli.model import resolve_model  # noqa: E402
from scopecli.render import RenderSettings  # noqa: E402
from scopecli.jobs.render import plan_render, run_render  # noqa: E402
from scopecli.jobs.spaces import decompose  # noqa: E402

FAILED = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(name)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/spaces_device")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    data = os.path.join(work, "data")
    noise_images(__import__("pathlib").Path(data), 120, 64, seed=5)
    settings = dict(top_k=6, bottom_k=2, patch_size=24, probe=120, batch=40, workers=0, sample=3000, seed=3)
    paths = {}
    for dev in ("cpu", "cuda"):
        t0 = time.perf_counter()
        loaded = resolve_model("tinymodels:tiny_resnet", input_size=64)
        paths[dev] = os.path.join(work, f"{dev}.h5")
        run_collect(loaded, open_source(data), ["blocks.1", "blocks.2"], CollectSettings(**settings, device=dev),
                    output=paths[dev], quiet=True)
        print(f"collect {dev}: {time.perf_counter() - t0:.1f} s", flush=True)
    with open_artifact(paths["cpu"]) as a, open_artifact(paths["cuda"]) as b:
        for layer in ("blocks.1", "blocks.2"):
            sa, sb = a.sample(layer), b.sample(layer)
            same_keys = np.array_equal(sa.keys, sb.keys) and np.array_equal(sa.image_index, sb.image_index)
            diff = float(np.abs(sa.vectors - sb.vectors).max())
            check(f"sample {layer} same rows on both devices", same_keys)
            check(f"sample {layer} vectors agree", diff <= 2e-2 * max(1.0, float(np.abs(sa.vectors).max())),
                  f"max |cpu - cuda| {diff:.2e}")
    for dev in ("cpu", "cuda"):
        t0 = time.perf_counter()
        q_nmf = decompose(paths[dev], "blocks.1", "nmf", 8, device=dev)["quality"]
        q_sae = decompose(paths[dev], "blocks.2", "sae", 64, k_active=4, seed=1, device=dev)["quality"]
        print(f"fit {dev}: {time.perf_counter() - t0:.1f} s; nmf R² {q_nmf['r2']:.4f} (NNLS {q_nmf['r2_nnls']:.4f}), "
              f"sae R² {q_sae['r2']:.4f} dead {q_sae['dead_fraction']:.3f}", flush=True)
        paths[dev + "_q"] = (q_nmf, q_sae)
    (cn, cs), (gn, gs) = paths["cpu_q"], paths["cuda_q"]
    check("nmf on cuda fits as well as on cpu", gn["r2"] >= cn["r2"] - 0.02, f"{gn['r2']:.4f} vs {cn['r2']:.4f}")
    check("sae on cuda fits as well as on cpu", gs["r2"] >= cs["r2"] - 0.03, f"{gs['r2']:.4f} vs {cs['r2']:.4f}")
    # one fit, collected on both devices: the space's examples must agree
    shared = os.path.join(work, "shared_cuda.h5")
    shutil.copy(paths["cpu"], shared)
    for dev, out in (("cpu", paths["cpu"]), ("cuda", shared)):
        loaded = resolve_model("tinymodels:tiny_resnet", input_size=64)
        run_collect(loaded, open_source(data), ["blocks.1@nmf8", "blocks.2@sae64"],
                    CollectSettings(**(settings | {"sample": 0}), device=dev), output=out, quiet=True)
    with open_artifact(paths["cpu"]) as a, open_artifact(shared) as b:
        for layer in ("blocks.1@nmf8", "blocks.2@sae64"):
            ea, eb = a.examples(layer, "top"), b.examples(layer, "top")
            d = float(np.nanmax(np.abs(ea.score - eb.score)))
            check(f"collect {layer} top scores agree across devices", d <= 1e-3 * max(1.0, float(np.nanmax(ea.score))),
                  f"max diff {d:.2e}")
            same = float((ea.image_index == eb.image_index).mean())
            check(f"collect {layer} top images agree", same >= 0.95, f"{same:.1%} identical")
    loaded = resolve_model("tinymodels:tiny_resnet", input_size=64)
    rs = RenderSettings(steps=128, size=64, batch=8, seed=0, device="cuda")
    for objective in ("channel", "direction-cos"):
        plan = plan_render(loaded, ["blocks.2@sae64"], "0:4", objective, 1, rs, spaces_from=shared)
        t0 = time.perf_counter()
        res = run_render(loaded, plan, shared)
        print(f"render {objective} on cuda: {time.perf_counter() - t0:.1f} s", flush=True)
        check(f"render {objective} on cuda rendered every unit", res["rendered"] == 4, str(res["rendered"]))
    with open_artifact(shared) as b:
        for r in b.renders("blocks.2@sae64"):
            check(f"render {r.objective} unit {r.unit} raises its objective", r.act_trace[-1] > r.act_trace[0],
                  f"{r.act_trace[0]:.3g} -> {r.act_trace[-1]:.3g}")
    print("ALL PASS" if not FAILED else f"{len(FAILED)} FAILED", flush=True)
    return 0 if not FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
