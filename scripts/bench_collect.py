"""Benchmark `collect` pass 1 against a bare no-grad forward over the same loader and layers.

Both sides read the photos through the same loader (`--loader threads`, collect's default, or `processes`).
Prints images/s of both, measured side by side in one run (bare and collect alternated --repeats times),
their wall-clock ratio and their main-process CPU-time ratio (robust when other jobs share the machine);
goal >= 0.9. `--full` also times a whole collect including pass 2 (patches). `--baseline REV` runs the
same pairs with the `scopecli` of git revision REV (extracted to a temporary folder, run in a child
process) alternated with this tree's, so before/after ratios come from one run; `--paired` instead runs
both trees' pass-1 bookkeeping on the same forwards in one process (robust on a loaded machine). `--profile`
prints where pass 1's bookkeeping goes, per component (ms per image, one thread, explicit timers).

    .venv/bin/python scripts/bench_collect.py --model efficientnet_lite0 --limit 128
    .venv/bin/python scripts/bench_collect.py --model resnet50 --weights random --limit 128 --baseline main
    .venv/bin/python scripts/bench_collect.py --model resnet50 --weights random --baseline main --paired
    .venv/bin/python scripts/bench_collect.py --model resnet50 --weights random --device cuda --bf16
    .venv/bin/python scripts/bench_collect.py --model resnet50 --weights random --limit 64 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _baseline import extract

from scopecli.collect import CollectSettings, collect, engine, open_source
from scopecli.data.dataset import ModelInputs

try:
    from scopecli.data.loader import default_workers, make_loader
except ImportError:  # --baseline with an older scopecli: DataLoader worker processes only
    from scopecli.data.dataset import default_workers, make_loader as _make_loader

    def make_loader(ds, batch, workers, pin_memory, kind="processes"):
        return _make_loader(ds, batch, workers, pin_memory)
from scopecli.collect.engine import resolve_device
from scopecli.model import LayerTap, default_layers, resolve_model


LOADER = {"kind": "threads"}  # --loader: the same kind for the bare forward and for collect


def _loader(model, source, n, batch, workers, device):
    """The batches collect's pass 1 reads (the same loader kind, and on a GPU the same decode)."""
    pre = model.preprocess
    if hasattr(engine, "pass1_batches"):
        settings = CollectSettings(batch=batch, loader=LOADER["kind"])
        return engine.pass1_batches(source, range(n), pre, settings, device, workers)
    ds = ModelInputs(source.files, range(n), pre.resize, pre.crop, pre.interpolation)  # an older scopecli
    return make_loader(ds, batch, workers, pin_memory=device.type == "cuda", kind=LOADER["kind"])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(model, source, layers, n, batch, workers, device, bf16) -> tuple[float, float]:
    """(wall s, main-process CPU s) of loader + normalize + forward to the deepest layer, nothing else."""
    pre = model.preprocess
    ac = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    w0, c0 = time.perf_counter(), time.process_time()
    with LayerTap(model.module, layers) as tap, torch.no_grad():
        for b in _loader(model, source, n, batch, workers, device):
            x = pre.normalize(b["image"].to(device, non_blocking=True).float().div_(255.0))
            with ac:
                tap(x)
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def pass1(model, source, layers, n, settings, workers, device) -> tuple[float, float]:
    """(wall s, main-process CPU s) of collect's pass 1 (the engine's own loop, same loader)."""
    from scopecli.model import find_layer, layer_table

    table = layer_table(model.module, model.preprocess.crop)
    records = [find_layer(table, name).record() for name in layers]
    w0, c0 = time.perf_counter(), time.process_time()
    engine._pass1(model.module, model.preprocess, source, range(n), layers, records, settings, device, workers,
                  min(settings.probe, n), True)
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def _observe_batch(eng, layers, gidx, device) -> None:
    """One batch's bookkeeping for every (accumulator, activations) of `layers`, as `eng` (this tree's engine or an
    older one: there `_observe_layer` did its layer's work itself, here it returns tasks run for all layers)."""
    parts = [eng._observe_layer(acc, a, gidx, None) for acc, a in layers]
    if parts and isinstance(parts[0], tuple):
        eng.stats.run_sweeps([t for tasks, _ in parts for t in tasks], device)
        for _, done in parts:
            done()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="DEFAULT")
    ap.add_argument("--data", default="/work/shared/data/imagenet-sample-500")
    ap.add_argument("--labels", default=None, help="labels file (effects then explain each image's label logit)")
    ap.add_argument("--limit", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--loader", default="threads", choices=["threads", "processes"],
                    help="decode in threads (the default) or DataLoader worker processes, for both sides")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="bare/collect pairs, alternated")
    ap.add_argument("--full", action="store_true", help="also time a whole collect (pass 1 + patches)")
    ap.add_argument("--effects", action="store_true",
                    help="time a plain collect against collect --effects (with and without the ablation check), "
                         "alternated --repeats times, and print the extra cost")
    ap.add_argument("--layer", action="append", default=None)
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="also time the scopecli of git revision REV (or of folder REV/scopecli), alternated with this tree's")
    ap.add_argument("--paired", action="store_true",
                    help="with --baseline: time both trees' bookkeeping on the same forwards in one process "
                         "(ratio = forward / (forward + bookkeeping)); robust on a loaded machine")
    ap.add_argument("--profile", action="store_true",
                    help="per-component time of pass 1's bookkeeping (ms/img), on one thread, with explicit timers")
    ap.add_argument("--one-pair", action="store_true", help=argparse.SUPPRESS)  # child: one pair, JSON row
    return ap


def _setup(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = resolve_model(args.model, weights=args.weights)
    model.module.to(device)
    source = open_source(args.data, labels=getattr(args, "labels", None))
    n = min(args.limit, len(source))
    layers = args.layer or default_layers(model.module, model.preprocess.crop)
    workers = default_workers() if args.workers is None else args.workers
    LOADER["kind"] = args.loader
    loader = {"loader": args.loader} if "loader" in CollectSettings.__dataclass_fields__ else {}
    settings = CollectSettings(batch=args.batch, workers=workers, limit=n, device=args.device, bf16=args.bf16,
                               **loader)
    bare(model, source, layers, min(n, args.batch), args.batch, workers, device, args.bf16)  # warm-up
    return device, model, source, n, layers, workers, settings


def _pair(args, device, model, source, n, layers, workers, settings) -> dict:
    b = bare(model, source, layers, n, args.batch, workers, device, args.bf16)
    c = pass1(model, source, layers, n, settings, workers, device)
    return {"bare_img_s": round(n / b[0], 2), "collect_img_s": round(n / c[0], 2),
            "ratio_wall": round(b[0] / c[0], 3), "ratio_cpu": round(b[1] / c[1], 3)}


def _baseline_pair(tree: str) -> dict:
    """One pair timed by the baseline's scopecli, in a child process running this script."""
    argv = [a for a in sys.argv[1:]]
    if "--baseline" in argv:
        i = argv.index("--baseline")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--baseline=")]
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, __file__, *argv, "--one-pair"], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _renamed(tree: str) -> str:
    """The baseline's scopecli copied as package `scopecli_base` (imports rewritten), so both trees can run
    in one process on the very same activations; returns the folder to put on sys.path."""
    out = tempfile.mkdtemp(prefix="scope-baseline-pkg-")
    shutil.copytree(os.path.join(tree, "scopecli"), os.path.join(out, "scopecli_base"))
    for folder, _, files in os.walk(os.path.join(out, "scopecli_base")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(re.sub(r"\bscopecli\b", "scopecli_base", text))
    return out


def paired(args, tree: str, device, model, source, n, layers, workers, settings) -> dict:
    """Bookkeeping of both trees on the same batches: one forward per batch (timed), then each tree's
    pass-1 updates of every layer (order alternated per batch), CPU and wall time; the results must agree.
    Immune to the load of a shared machine in a way separate runs are not."""
    import importlib

    import numpy as np

    from scopecli.collect.checkpoint import Pass1State
    from scopecli.model import adapter, find_layer, layer_table

    sys.path.insert(0, _renamed(tree))
    try:  # this tree's compiled loops are loaded once per process (about 0.5 s): not part of any batch
        from scopecli.collect import kernels

        kernels.available(device)
    except ImportError:
        pass
    trees = {"this": (engine, Pass1State, layer_table, find_layer)}
    base_engine = importlib.import_module("scopecli_base.collect.engine")
    base_ck = importlib.import_module("scopecli_base.collect.checkpoint")
    base_model = importlib.import_module("scopecli_base.model")
    trees["baseline"] = (base_engine, base_ck.Pass1State, base_model.layer_table, base_model.find_layer)
    pre = model.preprocess
    states, records = {}, {}
    for name, (eng, state_cls, table_fn, find) in trees.items():
        table = table_fn(model.module, pre.crop)
        records[name] = [find(table, layer).record() for layer in layers]
        trackers = eng._trackers(eng.CollectSettings(), pre, device, None, 0, 0)
        states[name] = state_cls.empty(records[name], n, device, trackers)
    t = {k: [0.0, 0.0] for k in ("forward", *trees)}  # wall, CPU
    ds = ModelInputs(source.files, range(n), pre.resize, pre.crop, pre.interpolation)
    with LayerTap(model.module, layers) as tap, torch.no_grad():
        for b, batch in enumerate(make_loader(ds, args.batch, workers, pin_memory=device.type == "cuda")):
            x = pre.normalize(batch["image"].to(device).float().div_(255.0))
            gidx = batch["index"].to(device)
            w0, c0 = time.perf_counter(), time.process_time()
            outs = tap(x)
            _sync(device)
            t["forward"][0] += time.perf_counter() - w0
            t["forward"][1] += time.process_time() - c0
            for name in (list(trees) if b % 2 else list(trees)[::-1]):
                eng = trees[name][0]
                w0, c0 = time.perf_counter(), time.process_time()
                _observe_batch(eng, [(states[name].layers[rec.name],
                                      adapter.units(outs[rec.name], rec.effective_layout).float())
                                     for rec in records[name]], gidx, device)
                _sync(device)
                t[name][0] += time.perf_counter() - w0
                t[name][1] += time.process_time() - c0
            del outs
    same = True
    for layer in layers:
        a, b = states["this"].layers[layer], states["baseline"].layers[layer]
        for which in ("top", "bottom"):
            for x, y in zip(getattr(a, which).result(1), getattr(b, which).result(1)):
                same &= x is None and y is None or np.array_equal(x, y, equal_nan=True)
        same &= np.array_equal(a.stats.finalize().sketch["hist"], b.stats.finalize().sketch["hist"])
    fw, fc = t["forward"]
    return {"forward_s": round(fw, 3), "identical_results": bool(same), **{
        name: {"bookkeeping_s": round(t[name][0], 3), "bookkeeping_cpu_s": round(t[name][1], 3),
               "ratio_wall": round(fw / (fw + t[name][0]), 3), "ratio_cpu": round(fc / (fc + t[name][1]), 3)}
        for name in trees}}


def profile(args, device, model, source, n, layers, workers, settings) -> dict:
    """Time each part of pass 1's bookkeeping on the same forwards: timers wrap the functions the engine calls
    (one intra-op thread, so each part is timed alone; on an accelerator every part is synchronized, which
    adds waits of its own); images are decoded beforehand. The sweep's reductions (max, min, sum, norm of each block) and its per-block
    overhead are what is left of the sweep. Then the whole bookkeeping once more with the default threads."""
    import collections

    from scopecli.collect import stats, topk

    try:
        from scopecli.collect import kernels

        kernels.available(device)  # loaded (about 0.5 s, once per process) before anything is timed
    except ImportError:  # an older scopecli (PYTHONPATH=<extracted tree>): no compiled loops
        kernels = None
    from scopecli.collect.checkpoint import Pass1State
    from scopecli.model import adapter, find_layer, layer_table

    table = layer_table(model.module, model.preprocess.crop)
    records = [find_layer(table, layer).record() for layer in layers]
    pre = model.preprocess
    spent = collections.defaultdict(float)

    def timed(owner, name, label):
        fn = getattr(owner, name)

        def wrapper(*a, **kw):
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            _sync(device)
            key = label(a) if callable(label) else label
            spent[key] += time.perf_counter() - t0
            return out

        return fn, wrapper

    patches = [
        (stats.LayerStats, "observe", "sweep (all of the statistics)"),  # older trees: per layer
        (stats, "run_sweeps", "sweep (all of the statistics)"),  # this tree: a batch's layers at once
        (stats.LayerStats, "_histogram", "  histogram (torch ops)"),
        (kernels, "histogram", "  histogram (compiled)"),
        (kernels, "reduce", "  histogram + max, min, sums (compiled)"),
        (stats.LayerStats, "_moments", "  moments (float64 merge)"),
        (topk.StreamingExtremes, "merge_units", lambda a: "  top-k merge" if a[0].largest else "  bottom-k merge"),
        (kernels, "locate", "    positions + heatmaps (compiled)"),
        (topk.StreamingExtremes, "_arg", "    positions (torch max/min)"),
        (topk, "_maps", "    map copies (torch)"),
    ]
    saved = []
    for owner, name, label in patches:
        if owner is None or not hasattr(owner, name):
            continue
        fn, wrapper = timed(owner, name, label)
        saved.append((owner, name, fn))
        setattr(owner, name, wrapper)
    threads = torch.get_num_threads()
    ds = ModelInputs(source.files, range(n), pre.resize, pre.crop, pre.interpolation)
    # decoded before timing: loader workers decoding the next batches would take the CPU from what is timed
    inputs = [(b["image"], b["index"]) for b in make_loader(ds, args.batch, workers, pin_memory=False)]
    walls = {"forward": 0.0, "bookkeeping, 1 thread": 0.0, f"bookkeeping, {threads} threads": 0.0}
    try:
        for profiled in (True, False):
            if not profiled:
                for owner, name, fn in saved:
                    setattr(owner, name, fn)
            trackers = engine._trackers(settings, pre, device, None, 0, 0)
            state = Pass1State.empty(records, n, device, trackers)
            with LayerTap(model.module, layers) as tap, torch.no_grad():
                for image, index in inputs:
                    x = pre.normalize(image.to(device).float().div_(255.0))
                    gidx = index.to(device)
                    torch.set_num_threads(threads)
                    w0 = time.perf_counter()
                    outs = tap(x)
                    _sync(device)
                    if profiled:
                        walls["forward"] += time.perf_counter() - w0
                    torch.set_num_threads(1 if profiled else threads)
                    w0 = time.perf_counter()
                    _observe_batch(engine, [(state.layers[rec.name],
                                             adapter.units(outs[rec.name], rec.effective_layout).float())
                                            for rec in records], gidx, device)
                    _sync(device)
                    walls["bookkeeping, 1 thread" if profiled else f"bookkeeping, {threads} threads"] += \
                        time.perf_counter() - w0
                    del outs
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        torch.set_num_threads(threads)
    sweep = spent["sweep (all of the statistics)"]
    parts = ("  histogram (torch ops)", "  histogram (compiled)", "  histogram + max, min, sums (compiled)",
             "  moments (float64 merge)", "  top-k merge", "  bottom-k merge")
    spent["  reductions + block overhead (rest of the sweep)"] = sweep - sum(spent[k] for k in parts)
    spent["layer hand-off (rest of the bookkeeping)"] = walls["bookkeeping, 1 thread"] - sweep
    ms = {k: round(1000 * v / n, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}
    return {"compiled_loops": bool(kernels and kernels.available(device)), "ms_per_image": ms,
            "wall_ms_per_image": {k: round(1000 * v / n, 2) for k, v in walls.items()}}


def _medians(rows) -> dict:
    return {"ratio_wall_median": round(statistics.median(r["ratio_wall"] for r in rows), 3),
            "ratio_cpu_median": round(statistics.median(r["ratio_cpu"] for r in rows), 3)}


def main() -> None:
    args = _parser().parse_args()
    if args.one_pair:
        row = _pair(args, *_setup(args))
        row["scopecli"] = str(Path(engine.__file__).parents[1])  # proves which tree ran
        print(json.dumps(row))
        return
    tree = extract(args.baseline) if args.baseline else None
    device, model, source, n, layers, workers, settings = ctx = _setup(args)
    if args.profile:
        print(json.dumps({"model": args.model, "weights": model.weights, "device": str(device), "images": n,
                          "layers": len(layers), "batch": args.batch, "threads": torch.get_num_threads(),
                          **profile(args, *ctx)}, indent=1))
        return
    if args.effects:
        print(json.dumps({"model": args.model, "weights": model.weights, "device": str(device), "images": n,
                          "layers": len(layers), **effects_cost(args, *ctx)}, indent=1))
        return
    rows, base_rows = [], []
    if args.paired:
        if not tree:
            sys.exit("--paired needs --baseline REV")
        try:
            runs = [paired(args, tree, *ctx) for _ in range(args.repeats)]
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        print(json.dumps({"model": args.model, "weights": model.weights, "device": str(device), "images": n,
                          "layers": len(layers), "batch": args.batch, "threads": torch.get_num_threads(),
                          "baseline": args.baseline, "runs": runs}, indent=1))
        return
    try:
        for _ in range(args.repeats):
            rows.append(_pair(args, *ctx))
            if tree:
                base_rows.append(_baseline_pair(tree))
    finally:
        if tree:
            shutil.rmtree(tree, ignore_errors=True)
    out = {
        "model": args.model, "weights": model.weights, "device": str(device), "bf16": args.bf16, "images": n,
        "layers": len(layers), "units": sum(find_units(model, layers)), "batch": args.batch, "workers": workers,
        "threads": torch.get_num_threads(), "pairs": rows, **_medians(rows),
    }
    if tree:
        out["baseline"] = {"rev": args.baseline, "pairs": base_rows, **_medians(base_rows)}
    if args.full:
        res = collect(model, source, layers, settings)
        t = res.timings
        out["full_collect"] = {"pass1_s": t["pass1_s"], "pass2_s": t["pass2_s"], "patches": t["patches"],
                               "img_s": round(n / (t["pass1_s"] + t["pass2_s"]), 2)}
    print(json.dumps(out, indent=1))


def effects_cost(args, device, model, source, n, layers, workers, settings) -> dict:
    """Seconds of a plain collect, of the effects alone and of the ablation check, alternated; the extra cost of
    `collect --effects` as a ratio to the plain collect (medians)."""
    from scopecli.jobs.collect import run_collect
    from scopecli.views.effects import run_effects

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = os.path.join(tmp, f"c{r}.h5")
            t0 = time.perf_counter()
            run_collect(model, source, layers, settings, out, quiet=True)
            t1 = time.perf_counter()
            run_effects(out, source, layers, loaded=model, ablation=False, device=args.device, quiet=True)
            t2 = time.perf_counter()
            run_effects(out, source, layers, loaded=model, ablation=True, device=args.device, quiet=True)
            t3 = time.perf_counter()
            runs.append({"collect_s": round(t1 - t0, 2), "effects_s": round(t2 - t1, 2),
                         "effects_and_ablation_s": round(t3 - t2, 2)})
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"runs": runs, "median": med,
            "extra_effects": round(med["effects_s"] / med["collect_s"], 3),
            "extra_effects_with_ablation": round(med["effects_and_ablation_s"] / med["collect_s"], 3)}


def find_units(model, layers):
    from scopecli.model import layer_table

    table = {i.name: i for i in layer_table(model.module, model.preprocess.crop)}
    return [table[name].channels for name in layers]


if __name__ == "__main__":
    main()
