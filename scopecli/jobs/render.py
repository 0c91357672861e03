"""`scope render` as one library call: pick layers and units, render, store in the artifact.

Kept out of the CLI so Python users (and `scope demo`) get exactly what the command does. The
artifact is written through `ArtifactWriter`: the existing file is only replaced on success, so an
interrupted or failed run leaves it as it was.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from scopecli.core.errors import ScopeError
from scopecli.model.layers import layouts_at, select_layers
from scopecli.jobs.bind import attach_spaces
from scopecli.render.engine import (RenderResult, RenderSettings, batches, check_position, plan_targets, render_units,
    resolve_device)
from scopecli.render.estimate import fmt_duration
from scopecli.render.param import color_from_covariance, spectrum_from_images
from scopecli.collect.checkpoint import PixelMoments
from scopecli.data.dataset import ModelInputs, PixelSpec, open_source
from scopecli.data.loader import make_loader
from scopecli.render.resume import render_done_keys
from scopecli.core.units import parse_units
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.core.progress import progress
from scopecli.jobs import distributed as dist

CHECKPOINT_S = 600.0  # long runs commit what they have every 10 minutes


@dataclass
class RenderPlan:
    """What a render run will do, known before any optimization starts."""

    layers: dict[str, list[int]]  # layer -> units
    targets: list
    settings: RenderSettings
    layer_records: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)  # layer -> LayerLayout at the render size

    @property
    def n_units(self) -> int:
        return len(self.targets)


def plan_render(loaded, layers=None, units: str | None = None, objective: str = "channel",
                diversity: int = 1, settings: RenderSettings | None = None, data_dir=None,
                position: str = "", spaces_from: str | None = None) -> RenderPlan:
    """Resolve layer names (default set when none), unit selections and settings; raise ScopeError early.

    A model that cannot take `settings.size` (fixed position embeddings, window sizes) is refused here,
    before anything runs; `position` (neuron objective: center, cls, or row,col) is checked per layer.
    Unit spaces among the layers (`BASE@SPACE`) are read from artifact `spaces_from` (the output)."""
    settings = settings or RenderSettings(size=loaded.preprocess.crop)
    settings.check()
    resolve_device(settings.device)
    if layers:
        attach_spaces(loaded, spaces_from, layers)
    crop, size = loaded.preprocess.crop, int(settings.size)
    chosen, records = {}, {}
    infos = select_layers(loaded.module, crop, layers, "name some with --layer")
    for info in infos:
        chosen[info.name] = parse_units(units if units is not None else "all", info.channels)
        records[info.name] = info.record()
    layouts = {i.name: i.layout for i in infos}
    if size != crop:
        try:
            layouts = layouts_at(loaded.module, size, list(chosen))
        except ScopeError as exc:
            if "does not run on" not in str(exc):
                raise
            raise ScopeError(f"{loaded.name} cannot take {size}x{size} inputs ({str(exc).split(': ', 1)[-1]}); "
                             f"render at its input size: --size {crop}") from None
    positions = {check_position(position, objective, layouts[name], name) for name in chosen}
    pre = loaded.preprocess
    if pre.is_rgb:
        settings.for_input(pre)
        if data_dir is not None:
            if settings.param != "maco":
                raise ScopeError("--data gives MACO its magnitude spectrum; use it with --param maco")
            settings.magnitude = spectrum_from_images(data_dir, size)
    else:  # N channels: the colour decorrelation from the data's pixels (--data, else the artifact's collect)
        color, source = channel_color(pre, data_dir, spaces_from)
        settings.for_input(pre, color, source)
    targets = plan_targets(chosen, objective, diversity, positions.pop() if len(positions) == 1 else "")
    return RenderPlan(chosen, targets, settings, records, layouts)


def channel_color(pre, data_dir=None, artifact: str | None = None, limit: int = 256):
    """(colour matrix, where from) for a model whose input is not 8-bit RGB: the square root of the channel
    covariance of up to `limit` images of `data_dir` (model inputs, as collect reads them), else of the pixels
    the artifact's collect saw; (None, "") — independent channels — when there is neither."""
    if data_dir is not None:
        src = open_source(data_dir)
        ds = ModelInputs(src.files, range(min(limit, len(src.files))), pre.resize, pre.crop, pre.interpolation,
                         pixels=PixelSpec.of(pre))
        moments = PixelMoments(pre.channels, "cpu")
        for batch in make_loader(ds, 16, 0, False):
            good = batch["ok"].numpy().astype(bool)
            if good.any():
                moments.add(batch["image"][torch.from_numpy(good)].float() / pre.qmax)
        got = moments.result()
        if got is None:
            raise ScopeError(f"--data {data_dir}: none of its images could be read as {pre.channels}-channel inputs")
        return color_from_covariance(got[1]), "data"
    if artifact is not None and os.path.exists(artifact):
        with open_artifact(artifact) as art:
            table = art.dataset if art.dataset_fingerprint is not None else None
            if table is not None and table.pixel_cov is not None and table.pixel_cov.shape == (pre.channels,) * 2:
                return color_from_covariance(table.pixel_cov), "collect"
    return None, ""


def _dataset_maxima(existing, layers) -> dict[str, dict[int, float]]:
    """{layer: {unit: dataset max}} from the artifact's statistics, where it has them."""
    out = {}
    if existing is None:
        return out
    for layer in layers:
        if layer not in existing.layers:
            continue
        stats = existing.stats(layer)
        if stats is None:
            continue
        out[layer] = {int(u): float(m) for u, m in zip(stats.units, stats.max)}
    return out


def run_render(loaded, plan: RenderPlan, output: str, command: str = "render", progress=None,
               on_batch=None, stats_from: str | None = None, resume: bool = False,
               checkpoint_s: float = CHECKPOINT_S, on_estimate=None) -> dict:
    """Render the plan into `output` (created or extended); returns a JSON-able summary.

    stats_from: another artifact of the model whose statistics give `dataset_max_ratio` (a torchrun part
    file is new, the statistics live in the final file).
    resume: skip images `output` already holds with the same settings and seeds (an interrupted run's
    checkpoints). checkpoint_s: commit finished batches to `output` at most this often (0: every batch).
    on_estimate(RenderEstimate): the up-front time estimate (one timed step per layer), when there are
    several batches; the progress bar's ETA then follows it."""
    params = dict(plan.settings.describe(), layers={k: len(v) for k, v in plan.layers.items()},
                  objective=plan.targets[0].objective if plan.targets else None,
                  diversity=max((t.diversity_index for t in plan.targets), default=0) + 1)
    start = time.perf_counter()
    with ArtifactWriter(output, loaded.info(), command, params) as writer:
        for rec in plan.layer_records.values():
            writer.ensure_layer(rec)
        maxima = _dataset_maxima(writer.existing, plan.layers)
        if stats_from is not None and os.path.exists(stats_from) and not maxima:
            with open_artifact(stats_from) as other:
                maxima = _dataset_maxima(other, plan.layers)
        last_checkpoint = [time.perf_counter()]
        targets = plan.targets
        if resume:
            done = render_done_keys(writer.existing, plan.layers, plan.settings, loaded.fingerprint)
            targets = [t for t in targets if (t.layer, t.unit, t.objective, t.diversity_index) not in done]
            if progress is not None and len(targets) < len(plan.targets):
                progress.advance(len(plan.targets) - len(targets))

        def store(records):
            by_layer: dict[str, list] = {}
            for layer, rec in records:
                by_layer.setdefault(layer, []).append(rec)
            for layer, recs in by_layer.items():
                writer.put_renders(layer, recs)
            if time.perf_counter() - last_checkpoint[0] >= checkpoint_s:
                writer.checkpoint()
                for rec in plan.layer_records.values():
                    writer.ensure_layer(rec)
                last_checkpoint[0] = time.perf_counter()

        if targets:
            result = render_units(loaded, targets, plan.settings, dataset_max=maxima, progress=progress,
                                  on_batch=on_batch, on_records=store, on_estimate=on_estimate,
                                  layouts=plan.layouts or None)
        else:  # --resume found everything done
            result = RenderResult([], [], 0.0, 0, str(resolve_device(plan.settings.device)))
        writer.add_timing("render", result.seconds)
    seconds = time.perf_counter() - start
    per_layer = Counter(layer for layer, _ in result.records)
    finals = [rec.act_final for _, rec in result.records]
    ratios = [rec.dataset_max_ratio for _, rec in result.records if rec.dataset_max_ratio == rec.dataset_max_ratio]
    return {
        "output": output,
        "model": loaded.name,
        "fingerprint": loaded.fingerprint,
        "device": result.device,
        "batch": result.batch_size,
        "requested": plan.n_units,
        "rendered": len(result.records),
        "already_done": plan.n_units - len(targets),
        "skipped": [why for _, why in result.skipped],
        "layers": dict(per_layer),
        "seconds": round(seconds, 3),
        "units_per_minute": round(60.0 * len(result.records) / max(result.seconds, 1e-9), 2),
        "mean_act_final": sum(finals) / len(finals) if finals else None,
        "mean_dataset_max_ratio": sum(ratios) / len(ratios) if ratios else None,
        "settings": plan.settings.describe(),
    }


class EstimateTracker:
    """The printed time estimate: predicted up front, then corrected once by the first batch's real time.

    The first batch is usually the cheapest layer, so its time alone says little; its time relative to
    its own prediction says how fast this machine runs the timed steps, which scales the whole plan."""

    def __init__(self):
        self.estimate = None

    def after_batch(self, done: int, elapsed: float) -> str | None:
        """The line to print after batch `done` (1-based) took the run to `elapsed` seconds, or None."""
        if done != 1 or self.estimate is None or len(self.estimate.batch_seconds) < 2:
            return None
        predicted = self.estimate.batch_seconds[0]
        scale = elapsed / predicted if predicted > 0 else 1.0
        total = elapsed + scale * sum(self.estimate.batch_seconds[1:])
        return (f"first batch: {elapsed:.1f} s (predicted {predicted:.1f} s); "
                f"estimated total {fmt_duration(total)}")


def render_job(loaded, plan: RenderPlan, output: str | None = None, shard: str | None = None, resume: bool = False,
               checkpoint_s: float = CHECKPOINT_S, quiet: bool = False, log=None) -> dict | None:
    """`scope render` whole: this process's share of the units (`--shard k/n` or torchrun), progress, artifact,
    and under torchrun the leader's packing of the parts. Returns the summary (None on other torchrun ranks).

    log: optional callable for human messages (what will be rendered, the time estimate before the first
    batch from one timed step per layer, and after it the estimate corrected by how long it really took)."""
    if checkpoint_s < 0:
        raise ScopeError(f"--checkpoint must be >= 0 seconds, got {checkpoint_s}")
    share = dist.resolve_share(shard)
    k, n = share.k, share.n
    final = output or (f"{loaded.name}.h5" if n == 1 or share.torchrun else f"{loaded.name}.shard-{k}-of-{n}.h5")
    path, n_all = final, plan.n_units
    if n > 1:
        # torchrun ranks with a fixed --batch run exactly the batches one process would (bit-identical pixels
        # whatever the CPU's kernels do with other batch sizes); job-array shards deal units for balance
        fixed = list(batches(plan.targets, int(plan.settings.batch))) \
            if share.torchrun and plan.settings.batch != "auto" else None
        plan.targets = dist.split_units(plan.targets, k, n, fixed)
        if not plan.targets and not share.torchrun:
            raise ScopeError(f"--shard {k}/{n}: this share has no units (the plan has {n_all} images); use fewer shards")
        path = dist.part_path(final, k, n) if share.torchrun else path
    quiet = quiet or (share.torchrun and not share.leader)
    say = log if (log is not None and not quiet) else (lambda message: None)
    say(f"rendering {plan.n_units} image{'s' if plan.n_units != 1 else ''} of {len(plan.layers)} "
        f"layer{'s' if len(plan.layers) != 1 else ''} ({plan.settings.steps} steps, {plan.settings.schedule} schedule, "
        f"{plan.settings.size}px, {plan.settings.param}) into {path}")
    tracker = EstimateTracker()

    def on_estimate(estimate):
        tracker.estimate = estimate
        if bar is not None:
            bar.set_work(estimate.total_s)
        say(f"estimated total {fmt_duration(estimate.total_s)} ({len(estimate.batch_seconds)} batches; "
            f"from one timed step per layer)")

    def on_batch(done, total, done_units, elapsed):
        line = tracker.after_batch(done, elapsed)
        if line:
            say(line)

    bar = None
    with dist.RankGroup(share, plan.settings.device) as ranks:
        if plan.targets:
            with progress(plan.n_units, "render", quiet=quiet, unit="units") as bar:
                summary = run_render(loaded, plan, path, progress=bar, on_batch=on_batch,
                                     stats_from=final if path != final else None, resume=resume,
                                     checkpoint_s=checkpoint_s, on_estimate=on_estimate)
            if tracker.estimate is not None:
                summary["estimated_s"] = round(tracker.estimate.total_s, 3)
        else:
            summary = {"output": path, "requested": 0, "rendered": 0, "skipped": [], "seconds": 0.0}
        if share.torchrun:
            dist.write_part_summary(path, summary)
            ranks.barrier()
            if not share.leader:
                return None
            parts = [dist.part_path(final, i, n) for i in range(1, n + 1)]
            ranks_summary = dist.read_part_summaries(parts)
            parts = [p for p, r in zip(parts, ranks_summary) if r.get("requested")]  # ranks with no units wrote none
            packed = dist.pack_parts(final, parts)
            summary = dict(summary, output=final, ranks=n,
                           **dist.combine_counts(ranks_summary, ("requested", "rendered")),
                           skipped=[w for r in ranks_summary for w in r.get("skipped", [])], packed=packed)
    return summary

