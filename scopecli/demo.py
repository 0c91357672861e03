"""`scope demo`: the whole product on a laptop, offline, in a few minutes.

Pretrained EfficientNet-Lite0 (the `[demo]` extra), openly licensed photos from scikit-image,
dataset examples for an early, a middle and a late block, feature visualizations of the 8 strongest
units of each, and an HTML gallery of the result.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from scopecli.artifact import open_artifact
from scopecli.collect import CollectSettings, open_source
from scopecli.core.errors import ScopeError
from scopecli.core.progress import progress
from scopecli.data.demo_photos import prepare_photos
from scopecli.export import export_site
from scopecli.jobs.collect import run_collect
from scopecli.jobs.render import plan_render, run_render
from scopecli.model import resolve_model
from scopecli.render import RenderSettings
from scopecli.render.engine import plan_targets

DEMO_LAYERS = ("_blocks.2", "_blocks.8", "_blocks.14")  # early, middle, late
UNITS_PER_LAYER = 8
# one layer per render batch: a batch's forward runs to its deepest layer, so `_blocks.2` units batched with
# `_blocks.8` ones (auto batch 16 on a CPU) paid for blocks 3-8 on every step
RENDER_BATCH = UNITS_PER_LAYER


def strongest_units(art, layer: str, n: int) -> list[int]:
    """The n units whose activations stand out most on the photos: highest p99.9 over std."""
    stats = art.stats(layer)
    if stats is None:
        return list(range(n))
    p999 = stats.quantiles[:, -1]
    spread = np.maximum(stats.std, 1e-6)
    order = np.argsort(-(p999 - stats.mean) / spread, kind="stable")
    return sorted(int(stats.units[i]) for i in order[:n])


def _fresh_artifact(out: Path) -> Path:
    """out/demo.h5, with a previous demo's file removed (only ever a scope artifact: it must open as one)."""
    if out.exists() and not out.is_dir():
        raise ScopeError(f"demo output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "demo.h5"
    if artifact.exists():
        with open_artifact(artifact):
            pass
        artifact.unlink()
    return artifact


def _collect(loaded, photos, labels, groups, artifact: Path, quiet: bool) -> dict:
    """Dataset examples and statistics of the demo layers: one example per photo and unit (--per-source 1),
    so the views of a photo count once."""
    source = open_source(str(photos), labels=str(labels), groups=str(groups))
    settings = CollectSettings(top_k=8, bottom_k=4, patch_size=96, probe=len(source.paths), batch=16, per_source=1)
    return run_collect(loaded, source, list(DEMO_LAYERS), settings, str(artifact), quiet=quiet)


def _render(loaded, artifact: Path, steps: int, size: int, quiet: bool) -> tuple[dict, dict]:
    """Feature visualizations of each demo layer's strongest units; returns (chosen units, render summary)."""
    with open_artifact(artifact) as art:
        chosen = {layer: strongest_units(art, layer, UNITS_PER_LAYER) for layer in DEMO_LAYERS}
    settings = RenderSettings(steps=steps, size=size, batch=RENDER_BATCH)
    plan = plan_render(loaded, list(DEMO_LAYERS), "0", "channel", 1, settings)
    plan.layers = chosen
    plan.targets = plan_targets(chosen, "channel", 1)
    with progress(plan.n_units, "render", quiet=quiet, unit="units") as bar:
        return chosen, run_render(loaded, plan, str(artifact), command="demo render", progress=bar)


def run_demo(out_dir, steps: int = 192, size: int = 128, quiet: bool = False, log=print) -> dict:
    """Collect, render and export into out_dir; returns timings and the paths to open."""
    out = Path(out_dir)
    artifact = _fresh_artifact(out)
    timings: dict[str, float] = {}
    start = t = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[phase], t = now - t, now

    photos, labels, groups = prepare_photos(out / "photos")
    loaded = resolve_model("efficientnet_lite0")
    lap("setup")
    collected = _collect(loaded, photos, labels, groups, artifact, quiet)
    lap("collect")
    chosen, rendered = _render(loaded, artifact, steps, size, quiet)
    lap("render")
    site = export_site([str(artifact)], str(out / "site"))
    lap("export")
    timings["total"] = time.perf_counter() - start
    return {
        "artifact": str(artifact),
        "site": site["index"],
        "images": collected["images"],
        "layers": list(DEMO_LAYERS),
        "units": {layer: units for layer, units in chosen.items()},
        "collected_units": collected["units"],
        "rendered": rendered["rendered"],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
