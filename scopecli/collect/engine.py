"""The collect engine: two passes over a dataset that give every unit its dataset examples and statistics.

Pass 1 runs one no-grad forward per image, cut after the deepest requested layer, and updates on the
device: per-unit streaming top-k/bottom-k of per-image spatial max/min (with locations), moments and a
mergeable histogram over every position, and spatial means on the probe images. Pass 2 reloads only
the winning images and cuts receptive-field patches. Records go to a sink with the ArtifactWriter's
methods (`ensure_layer`, `set_dataset`, `put_stats`, `put_probe`, `put_examples`) as soon as they are
final, so memory stays bounded by one group of layers' patches.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from scopecli.collect import kernels, stats
from scopecli.collect.checkpoint import LayerPass1, Pass1Checkpoint, Pass1State, PixelMoments
from scopecli.collect.topk import HeatGeometry, StreamingExtremes
from scopecli.collect.crops import PatchRows, heat_origins, heat_size, patch_side, rf_boxes, shown_windows
from scopecli.data.dataset import MAX_PIXELS, ImageSource, ModelInputs, PixelSpec
from scopecli.data.jpeg_batch import EncodedInputs, device_batches, device_decodes, gpu_decode_available
from scopecli.data.loader import LOADER_KINDS, default_workers, make_loader
from scopecli.core.devices import resolve_device
from scopecli.core.errors import ScopeError
from scopecli.model.capture import LayerTap
from scopecli.model import adapter
from scopecli.model.layers import select_layers
from scopecli.core.progress import progress as progress_bar
from scopecli.core.records import ExampleSet, ImageTable, LayerRecord, ProbeBlock, StatsBlock, Strongest
from scopecli.core.settings import CheckedSettings, reads


JPEG_QUALITY = 90
DECODE_CHOICES = ("auto", "cpu", "device")
STRONGEST_FRACTION = 0.01  # label profiles also look at each unit's top 1 % of images
MAX_SAMPLE = 10_000_000  # activation sample rows per layer (float16 rows: memory is N x units x 2 bytes)


@dataclass
class Winners:
    """One layer's top (or bottom) examples after pass 1, before their patches are cut."""

    score: np.ndarray  # float32 [C, K]
    image: np.ndarray  # int64 [C, K] rows of the image table, -1 missing
    loc: np.ndarray  # int32 [C, K, 2]
    box: np.ndarray  # int32 [C, K, 4] receptive field
    shown: np.ndarray  # int32 [C, K, 4] the window the patch shows
    heat: np.ndarray  # float32 [C, K, hs, ws]
    heat_origin: np.ndarray  # int32 [C, K, 2]


@dataclass
class CollectSettings(CheckedSettings):
    """Everything that changes what collect computes (recorded in the artifact's params).

    `check()` refuses values that cannot work; each rule runs once per value (scopecli/core/settings.py)."""

    top_k: int = 16
    bottom_k: int = 8
    patch_size: int = 96
    probe: int = 500
    batch: int = 64
    workers: int | None = None  # None: data.default_workers()
    loader: str = "threads"  # decode in threads of this process, or in DataLoader worker "processes"
    decode: str = "auto"  # JPEGs decoded on the model's "device" (auto: on a GPU that can) or on the "cpu"
    limit: int | None = None  # first N images of the sorted list
    device: str = "auto"
    shard: tuple[int, int] = (1, 1)  # (k, n): k-th of n, 1-based
    bf16: bool = False
    max_pixels: int = MAX_PIXELS
    patch_budget_mb: int = 512  # patches held in memory at once (layers are grouped to fit)
    image_cache_mb: int = 1024  # winning model inputs kept decoded across layer groups
    lossless: bool = False  # patches stored as PNG instead of JPEG q90
    per_source: int | None = None  # examples per source group and unit (None: 1 with --groups, else no limit)
    sample: int = 0  # position vectors per layer kept as the activation sample (0: none)
    seed: int = 0  # seed of the activation sample
    channel_axis: int | None = None  # .npy / multi-page TIFF samples: which axis holds the channels (None: inferred)

    def params(self) -> dict:
        d = asdict(self)
        d["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        if self.channel_axis is None:
            del d["channel_axis"]  # RGB runs record what they always did
        return d

    @reads("channel_axis")
    def _channel_axis(self) -> None:
        if self.channel_axis not in (None, 0, 2, -1):
            raise ScopeError(f"--channel-axis must be 0 (C x H x W) or -1 (H x W x C), got {self.channel_axis}")

    @reads("top_k", "bottom_k", "probe")
    def _counts(self) -> None:
        for name in ("top_k", "bottom_k", "probe"):
            if getattr(self, name) < 0:
                raise ScopeError(f"--{name.replace('_', '-')} must be >= 0")
        if self.top_k == 0 and self.bottom_k == 0:
            raise ScopeError("--top-k and --bottom-k are both 0: nothing to collect")

    @reads("sample")
    def _sample(self) -> None:
        if self.sample < 0 or self.sample > MAX_SAMPLE:
            raise ScopeError(f"--sample must be between 0 and {MAX_SAMPLE} position vectors per layer")

    @reads("patch_size")
    def _patch_size(self) -> None:
        if self.patch_size < 8 or self.patch_size > 1024:
            raise ScopeError("--patch-size must be between 8 and 1024 pixels")

    @reads("batch", "workers", "limit")
    def _loader(self) -> None:
        if self.batch < 1:
            raise ScopeError("--batch must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ScopeError("--workers must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise ScopeError("--limit must be >= 1")

    @reads("loader")
    def _loader_kind(self) -> None:
        if self.loader not in LOADER_KINDS:
            raise ScopeError(f"--loader must be one of {', '.join(LOADER_KINDS)}, got '{self.loader}'")

    @reads("decode")
    def _decode(self) -> None:
        if self.decode not in DECODE_CHOICES:
            raise ScopeError(f"--decode must be one of {', '.join(DECODE_CHOICES)}, got '{self.decode}'")

    @reads("per_source")
    def _per_source(self) -> None:
        if self.per_source is not None and self.per_source < 0:
            raise ScopeError("--per-source must be >= 0 (0: no limit)")

    @reads("shard")
    def _shard(self) -> None:
        k, n = self.shard
        if not (n >= 1 and 1 <= k <= n):
            raise ScopeError(f"--shard {k}/{n}: need 1 <= k <= n")


@dataclass
class CollectResult:
    """What a collect run produced; `examples` is filled only when no external sink was given."""

    model: dict
    layers: list[LayerRecord]
    images: ImageTable
    stats: dict[str, StatsBlock]
    probe: dict[str, ProbeBlock]
    examples: dict[str, dict[str, ExampleSet]] = field(default_factory=dict)
    extra: dict[str, dict[str, object]] = field(default_factory=dict)  # other elements by layer (sample, strongest)
    params: dict = field(default_factory=dict)
    candidates: int = 0  # images in this shard before skipping
    timings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "model": self.model.get("name"),
            "layers": [r.name for r in self.layers],
            "units": int(sum(r.units for r in self.layers)),
            "images": len(self.images),
            "skipped": len(self.images.skipped),
            "shard": self.params.get("shard"),
            "timings": self.timings,
        }


class MemorySink:
    """Sink that keeps records in memory (the default; ArtifactWriter is the other sink)."""

    def __init__(self):
        self.layers: dict[str, LayerRecord] = {}
        self.images: ImageTable | None = None
        self.stats: dict[str, StatsBlock] = {}
        self.probe: dict[str, ProbeBlock] = {}
        self.examples: dict[str, dict[str, ExampleSet]] = {}
        self.extra: dict[str, dict[str, object]] = {}  # other elements (the strongest images)

    def ensure_layer(self, rec: LayerRecord) -> None:
        self.layers.setdefault(rec.name, rec)

    def set_dataset(self, table: ImageTable) -> None:
        self.images = table

    def put_stats(self, layer: str, block: StatsBlock) -> None:
        self.stats[layer] = block

    def put(self, layer: str, element: str, value, **options) -> None:
        self.extra.setdefault(layer, {})[element] = value

    def put_probe(self, layer: str, block: ProbeBlock) -> None:
        self.probe[layer] = block

    def put_examples(self, layer: str, which: str, ex: ExampleSet, **encoding) -> None:
        self.examples.setdefault(layer, {})[which] = ex


def shard_range(n_images: int, batch: int, k: int, n: int) -> range:
    """Candidate indices of shard k/n: contiguous runs of whole batches, so every batch a shard runs is
    the same batch a single process would run (bit-identical activations, exact merges)."""
    n_batches = -(-n_images // batch)
    b0 = (k - 1) * n_batches // n
    b1 = k * n_batches // n
    return range(min(b0 * batch, n_images), min(b1 * batch, n_images))


@dataclass
class _Plan:
    """What collect settles before pass 1: layers, sink, this shard's candidates and the trackers to fill."""

    device: torch.device
    names: list[str]
    records: list[LayerRecord]
    sink: object
    own_sink: bool
    workers: int
    n_all: int  # images in the sorted list (after --limit)
    cand: range  # this shard's candidate indices
    probe_n: int
    per_source: int
    strongest_k: int
    trackers: object  # _trackers(...)


def collect(model, source: ImageSource, layers: list[str] | None = None, settings: CollectSettings | None = None,
            sink=None, quiet: bool = True, log=None, checkpoint=None) -> CollectResult:
    """Run collect for a LoadedModel over an ImageSource; records go to `sink` (default: kept in memory).

    `log(message)` receives one-line notes (skipped images, partial results) for the CLI to print.
    `checkpoint`: a `scopecli.collect.checkpoint.Pass1Checkpoint` that saves pass 1 as it goes (and restores
    it on --resume).
    """
    settings = settings or CollectSettings()
    settings.check()
    plan = _plan(model, source, layers, settings, sink)
    pre = model.preprocess
    model.module.to(plan.device)
    t0 = time.perf_counter()
    state = _pass1(model.module, pre, source, plan.cand, plan.names, plan.records, settings, plan.device,
                   plan.workers, plan.probe_n, quiet, checkpoint, plan.trackers)
    t1 = time.perf_counter()
    kept, images, remap = _image_table(source, plan, state, settings, log)
    _put_pass1(plan, state, remap, settings, len(kept), log)
    winners = _winners(plan, state, remap, pre)
    t2 = time.perf_counter()
    n_patches = _pass2(source, kept, images, plan.records, winners, settings, pre, plan.sink, plan.workers, quiet,
                       plan.per_source)
    t3 = time.perf_counter()
    timings = {
        "pass1_s": round(t1 - t0, 3),
        "pass2_s": round(t3 - t2, 3),
        "images_per_s": round(len(plan.cand) / max(t1 - t0, 1e-9), 2),
        "patches": n_patches,
        "device": str(plan.device),
        "workers": plan.workers,
        "decode": "device" if decode_on_device(settings, model.preprocess, plan.device) else "cpu",
    }
    return _result(model, plan, images, settings, timings)


def _plan(model, source: ImageSource, layers: list[str] | None, settings: CollectSettings, sink) -> _Plan:
    """Resolve device, layers (declared to the sink), this shard's candidates, source groups and trackers; refuses
    an empty shard and --per-source without groups."""
    device = resolve_device(settings.device)
    pre = model.preprocess
    infos = select_layers(model.module, pre.crop, layers)
    records = [i.record() for i in infos]
    own_sink = sink is None
    sink = MemorySink() if own_sink else sink
    for rec in records:
        sink.ensure_layer(rec)
    workers = default_workers() if settings.workers is None else settings.workers

    n_all = len(source) if settings.limit is None else min(settings.limit, len(source))
    k, n = settings.shard
    cand = shard_range(n_all, settings.batch, k, n)
    if len(cand) == 0:
        raise ScopeError(f"shard {k}/{n} has no images ({n_all} images in batches of {settings.batch})")

    groups = None if source.source is None else torch.from_numpy(source.group_ids()[:n_all].copy())
    per_source = settings.per_source if settings.per_source is not None else (1 if groups is not None else 0)
    if per_source and groups is None:
        raise ScopeError("--per-source needs source groups: pass --groups FILE (file, group per row)")
    strongest_k = math.ceil(STRONGEST_FRACTION * n_all) if source.class_names else 0
    return _Plan(device=device, names=[i.name for i in infos], records=records, sink=sink, own_sink=own_sink,
                 workers=workers, n_all=n_all, cand=cand, probe_n=min(settings.probe, n_all), per_source=per_source,
                 strongest_k=strongest_k,
                 trackers=_trackers(settings, pre, device, groups, per_source, strongest_k))


def _image_table(source: ImageSource, plan: _Plan, state: Pass1State, settings: CollectSettings, log):
    """(kept candidate indices, the image table, remap: candidate index -> table row or -1) after pass 1; the table
    goes to the sink and each skipped image to `log`. Refuses a run where every image was skipped."""
    cand = plan.cand
    ok = state.ok
    kept = np.array([i for i in cand if ok[i - cand.start]], dtype=np.int64)
    skipped = ([] if settings.shard[0] > 1 else list(source.skipped)) + [
        (source.paths[i], state.reason[i - cand.start]) for i in cand if not ok[i - cand.start]
    ]
    if log:
        for path, reason in skipped:
            log(f"skipped {path}: {reason}")
    if len(kept) == 0:
        raise ScopeError(f"no usable images: all {len(cand)} were skipped (first: {skipped[-1][0]}: {skipped[-1][1]})")
    remap = np.full(plan.n_all, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    images = ImageTable(
        paths=[source.paths[i] for i in kept],
        sha256=[state.sha256[i - cand.start] for i in kept],
        width=np.array([state.width[i - cand.start] for i in kept], dtype=np.int32),
        height=np.array([state.height[i - cand.start] for i in kept], dtype=np.int32),
        label=source.label[kept].astype(np.int32),
        class_names=list(source.class_names),
        skipped=skipped,
        source=None if source.source is None else source.source[kept].astype(np.int32),
        source_names=list(source.source_names),
    )
    moments = state.pixels.result() if state.pixels is not None else None
    if moments is not None:
        images.pixel_mean, images.pixel_cov = moments
    plan.sink.set_dataset(images)
    return kept, images, remap


def _put_pass1(plan: _Plan, state: Pass1State, remap: np.ndarray, settings: CollectSettings, n_kept: int,
               log) -> None:
    """Pass 1's final records to the sink (statistics, activation sample, probe activations); a note when there
    are fewer usable images than examples per unit."""
    sink = plan.sink
    probe_index = state.probe_image_index()
    for rec in plan.records:
        acc = state.layers[rec.name]
        sink.put_stats(rec.name, acc.stats.finalize())
        if acc.sample is not None:
            sink.put(rec.name, "sample", acc.sample.result(rec.effective_layout.grid[1], remap))
        if plan.probe_n and len(probe_index):
            sink.put_probe(rec.name, ProbeBlock(image_index=remap[probe_index], acts=acc.probe_acts()))
    for which, k_ in (("top", settings.top_k), ("bottom", settings.bottom_k)):
        if k_ > n_kept and log:
            log(f"only {n_kept} usable images: {which} examples hold {n_kept} of {k_} per unit")


def _winners(plan: _Plan, state: Pass1State, remap: np.ndarray, pre) -> dict[tuple[str, str], Winners]:
    """Each layer's top and bottom examples without patches (image indices into the table); the strongest images
    go to the sink here (they need no patches)."""
    winners = {}
    for rec in plan.records:
        lay = rec.effective_layout
        whole = lay.field == "global"
        acc = state.layers[rec.name]
        for which in ("top", "bottom"):
            tracker = getattr(acc, which)
            if tracker.k == 0:
                continue
            score, img, loc, heat = tracker.result(lay.grid[1])
            img = np.where(img >= 0, remap[np.maximum(img, 0)], -1)
            box = rf_boxes(loc, rec.rf_size, rec.rf_stride, rec.rf_start, pre.crop, whole)
            shown = shown_windows(loc, rec.rf_size, rec.rf_stride, rec.rf_start, pre.crop, whole)
            oy, ox = heat_origins(loc[..., 0], loc[..., 1], heat.shape[2:], lay.grid)
            winners[(rec.name, which)] = Winners(score, img, loc, box, shown, heat, np.stack([oy, ox], -1).astype(np.int32))
        if plan.strongest_k:
            tracker = acc.strongest if acc.strongest is not None else acc.top
            score, img = (a[:, :plan.strongest_k] for a in tracker.result(lay.grid[1])[:2])
            plan.sink.put(rec.name, "strongest", Strongest(np.arange(rec.units, dtype=np.int64), score,
                                                           np.where(img >= 0, remap[np.maximum(img, 0)], -1),
                                                           STRONGEST_FRACTION, plan.per_source))
    return winners


def _result(model, plan: _Plan, images: ImageTable, settings: CollectSettings, timings: dict) -> CollectResult:
    """The CollectResult; records are copied into it only from collect's own MemorySink."""
    sink, own = plan.sink, plan.own_sink
    return CollectResult(
        model=model.info(), layers=plan.records, images=images,
        stats=dict(sink.stats) if own else {}, probe=dict(sink.probe) if own else {},
        examples=dict(sink.examples) if own else {}, extra=dict(sink.extra) if own else {},
        params=settings.params() | {"layers": plan.names, "workers": plan.workers}, candidates=len(plan.cand),
        timings=timings,
    )


def _trackers(settings, pre, device, groups: torch.Tensor | None, per_source: int, strongest_k: int):
    """trackers(record) -> (top, bottom, strongest or None) for Pass1State.empty: top and bottom keep
    heatmaps; the strongest (top 1 % of images, for label profiles) only when it needs more than top-k."""

    def make(rec: LayerRecord):
        lay = rec.effective_layout
        whole = lay.field == "global"
        geometry = HeatGeometry(tuple(lay.grid), heat_size(rec.rf_size, rec.rf_stride, pre.crop, lay.grid, whole))
        top = StreamingExtremes(rec.units, settings.top_k, True, device, geometry, groups, per_source)
        bottom = StreamingExtremes(rec.units, settings.bottom_k, False, device, geometry, groups, per_source)
        strongest = StreamingExtremes(rec.units, strongest_k, True, device, None, groups, per_source) \
            if strongest_k > settings.top_k else None
        return top, bottom, strongest

    return make


def _pass1(module, pre, source, cand, names, records, settings, device, workers, probe_n, quiet,
           checkpoint: Pass1Checkpoint | None = None, trackers=None) -> Pass1State:
    """Pass 1 over this shard's candidates (resuming from `checkpoint`), one batch at a time (`_pass1_batch`)."""
    m = len(cand)
    preparing = kernels.prepare(device)  # compiled loops (CPU, numba) load while the loader starts and a batch runs
    state = Pass1State.empty(records, m, device, trackers or _trackers(settings, pre, device, None, 0, 0),
                             (settings.sample, settings.seed))
    if not pre.is_rgb:
        state.pixels = PixelMoments(pre.channels, device)
    if checkpoint is not None:
        checkpoint.restore(state)  # the batches an interrupted run already did
    rest = range(min(cand.start + state.batches * settings.batch, cand.stop), cand.stop)
    loader = pass1_batches(source, rest, pre, settings, device, workers)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if settings.bf16
                else contextlib.nullcontext())
    with LayerTap(module, names) as tap, torch.no_grad(), \
            progress_bar(m, "collect: pass 1 (activations)", quiet=quiet, unit="img") as bar:
        bar.advance(rest.start - cand.start)
        for batch in loader:
            idx, good = _batch_meta(state, batch, cand)
            x = batch["image"].to(device, non_blocking=True)
            x = x.float().div_(float(pre.qmax))
            if state.pixels is not None and good.any():
                state.pixels.add(x[torch.from_numpy(good).to(x.device)])
            x = pre.normalize(x)
            with autocast:
                outs = tap(x)
            _pass1_batch(state, outs, idx, good, source, records, settings, device, probe_n)
            del outs
            bar.advance(len(idx))
            state.batches += 1
            if checkpoint is not None:
                checkpoint.save(state)
    if checkpoint is not None:
        checkpoint.save(state, force=True, pass1_done=True)
    if preparing is not None:
        preparing.join()
    return state


def pass1_batches(source, indices, pre, settings: CollectSettings, device: torch.device, workers: int):
    """The batches pass 1 feeds the model (dicts: image, index, ok, sha256, width, height, reason): decoded by the
    loader's threads or processes, or, when `decode_on_device`, read by them and decoded a batch at a time on the
    device. Benchmarks time their bare forward over the same batches."""
    if decode_on_device(settings, pre, device):
        encoded = make_loader(EncodedInputs(source.files, indices, settings.max_pixels), settings.batch, workers,
                              pin_memory=False, kind=settings.loader, collate=list)
        return device_batches(encoded, source.files, pre.resize, pre.crop, pre.interpolation, settings.max_pixels,
                              device)
    dataset = ModelInputs(source.files, indices, pre.resize, pre.crop, pre.interpolation, settings.max_pixels,
                          pixels=PixelSpec.of(pre, settings.channel_axis))
    return make_loader(dataset, settings.batch, workers, pin_memory=device.type == "cuda", kind=settings.loader)


def decode_on_device(settings: CollectSettings, pre, device: torch.device) -> bool:
    """Does pass 1 decode JPEGs on the model's device? `--decode device` asks for it (8-bit RGB inputs; on a CPU
    it is torchvision's decoder, what the tests check against Pillow's); `auto` picks it on a GPU that can."""
    if settings.decode == "cpu":
        return False
    fits = pre.is_rgb and device_decodes(pre.interpolation)
    if settings.decode == "device":
        if not fits:
            raise ScopeError(f"--decode device needs an 8-bit RGB model input resized by bilinear, bicubic or nearest "
                             f"(this one: {pre.channels} channels, {pre.bit_depth} bits, {pre.interpolation})")
        return True
    return fits and device.type == "cuda" and gpu_decode_available(device)


def _batch_meta(state: Pass1State, batch: dict, cand: range) -> tuple[np.ndarray, np.ndarray]:
    """Record a loader batch's per-image facts (ok, sha256, size, reason) in state; (candidate indices, ok mask)."""
    idx = batch["index"].numpy().astype(np.int64)
    rel = idx - cand.start
    good = batch["ok"].numpy().astype(bool)
    state.ok[rel] = good
    for j, r in enumerate(rel):
        state.sha256[r], state.width[r], state.height[r] = \
            batch["sha256"][j], int(batch["width"][j]), int(batch["height"][j])
        state.reason[r] = batch["reason"][j]
    return idx, good


def _pass1_batch(state: Pass1State, outs: dict, idx: np.ndarray, good: np.ndarray, source, records, settings,
                 device, probe_n: int) -> None:
    """One batch's layer outputs (the usable images only) into every layer's statistics, trackers, probe rows
    and activation sample."""
    sel = None if good.all() else _indices(np.flatnonzero(good), device)
    gidx = _indices(idx if sel is None else idx[good], device)
    is_probe = idx[good] < probe_n if sel is not None else idx < probe_n
    if is_probe.any():
        state.probe_index.append((idx if sel is None else idx[good])[is_probe])
    probe_sel = _indices(np.flatnonzero(is_probe), device) if is_probe.any() else None
    used = idx if sel is None else idx[good]
    used_paths = [source.paths[i] for i in used] if settings.sample else []
    tasks, finish = [], []
    for rec in records:
        a = adapter.units(outs[rec.name], rec.effective_layout).float()
        if sel is not None:
            a = a.index_select(0, sel)
        if a.shape[0] == 0:
            continue
        acc = state.layers[rec.name]
        layer_tasks, done = _observe_layer(acc, a, gidx, probe_sel)
        tasks += layer_tasks
        finish.append((acc, done))
        if acc.sample is not None:
            acc.sample.observe(a, used, used_paths)
    stats.run_sweeps(tasks, device)  # every layer's statistics and top-k at once: no wait between layers
    for acc, done in finish:
        probe = done()
        if probe is not None:
            acc.probe_rows.append(probe)  # stays on the device until read: no sync per batch


def _indices(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """Increasing int64 indices on the device; a run of consecutive values (the usual batch) is made there, so no
    copy from host memory waits for the device's queue."""
    if len(values) and values[-1] - values[0] == len(values) - 1:
        return torch.arange(int(values[0]), int(values[0]) + len(values), device=device)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(device)


def _observe_layer(acc: LayerPass1, a: torch.Tensor, gidx: torch.Tensor, probe_sel: torch.Tensor | None):
    """One layer's batch [N, C, P] into its statistics and top/bottom trackers, as (tasks, done): run the tasks
    (`stats.run_sweeps`), then done() returns the probe rows' spatial means (float16 [len(probe_sel), C]) or
    None. Everything per unit runs in the tasks, each for its own unit range, so the main thread issues no
    small ops."""
    a = a.contiguous()
    trackers = [(t, t.start(a.shape[0]), t.largest) for t in acc.trackers().values()]
    probe = None if probe_sel is None else torch.empty(len(probe_sel), a.shape[1], dtype=torch.float16,
                                                       device=a.device)

    def per_units(lo, hi, mx, mn, total, at_max, at_min):
        for tracker, new, largest in trackers:
            tracker.merge_units(new, lo, hi, mx if largest else mn, gidx, a[:, lo:hi], at_max if largest else at_min)
        if probe is not None:
            probe[:, lo:hi] = total.index_select(0, probe_sel) / a.shape[2]

    def bars(lo, hi):
        """Entry levels of units lo:hi: the lowest over the top trackers, the highest over the bottom ones (a new
        winner's extreme is beyond its tracker's level; +-inf where there is no such tracker: no positions)."""
        top = [t.threshold(lo, hi)[0] for t, new, largest in trackers if new is not None and largest]
        bottom = [t.threshold(lo, hi)[0] for t, new, largest in trackers if new is not None and not largest]
        return (torch.stack(top).amin(0).float() if top else torch.full((hi - lo,), float("inf")),
                torch.stack(bottom).amax(0).float() if bottom else torch.full((hi - lo,), float("-inf")))

    tasks, stats_done = acc.stats.sweep_tasks(a, per_units, bars)

    def done():
        stats_done()
        for tracker, new, _ in trackers:
            tracker.commit(new)
        return probe

    return tasks, done


def _layer_groups(records, winners, settings) -> list[list[LayerRecord]]:
    per_patch = settings.patch_size * settings.patch_size * 3
    budget = max(settings.patch_budget_mb, 1) * (1 << 20)
    groups, cur, size = [], [], 0
    for rec in records:
        need = sum(int((w.image >= 0).sum()) for key, w in winners.items() if key[0] == rec.name) * per_patch
        if cur and size + need > budget:
            groups.append(cur)
            cur, size = [], 0
        cur.append(rec)
        size += need
    if cur:
        groups.append(cur)
    return groups


def _load_inputs(source, kept, table_idx: np.ndarray, settings, pre, workers) -> dict[int, np.ndarray]:
    """Decode the given table images to HxWxC model inputs (same transform as pass 1): uint8, or uint16 for a
    16-bit input."""
    cand = [int(kept[i]) for i in table_idx]
    dataset = ModelInputs(source.files, cand, pre.resize, pre.crop, pre.interpolation, settings.max_pixels,
                          pixels=PixelSpec.of(pre, settings.channel_axis))
    loader = make_loader(dataset, min(settings.batch, 32), workers, pin_memory=False, kind=settings.loader)
    back = {int(c): int(t) for c, t in zip(cand, table_idx)}
    out = {}
    for batch in loader:
        for j, c in enumerate(batch["index"].tolist()):
            if not batch["ok"][j]:
                raise ScopeError(f"{source.paths[c]} could not be read again in pass 2 ({batch['reason'][j]}); "
                                 "was the dataset modified during collect?")
            pic = np.ascontiguousarray(batch["image"][j].permute(1, 2, 0).numpy())  # HWC rows: windows copy rows
            out[back[c]] = pic if pic.dtype == np.uint8 else pic.astype(np.uint16)
    return out


def _pass2(source, kept, images, records, winners, settings, pre, sink, workers, quiet, per_source: int = 0) -> int:
    per_image = pre.crop * pre.crop * pre.channels * (1 if pre.bit_depth == 8 else 2)
    all_needed = np.unique(np.concatenate([w.image[w.image >= 0] for w in winners.values()])) if winners \
        else np.array([], np.int64)
    cache: dict[int, np.ndarray] | None = None
    if len(all_needed) * per_image <= settings.image_cache_mb * (1 << 20):
        cache = {}
    total = int(sum((w.image >= 0).sum() for w in winners.values()))
    done = 0
    with progress_bar(total, "collect: pass 2 (patches)", quiet=quiet, unit="patch") as bar:
        for group in _layer_groups(records, winners, settings):
            keys = [(r.name, which) for r in group for which in ("top", "bottom") if (r.name, which) in winners]
            needed = np.unique(np.concatenate([winners[key].image[winners[key].image >= 0] for key in keys])) \
                if keys else np.array([], np.int64)
            if cache is not None:
                missing = np.array([t for t in needed if int(t) not in cache], dtype=np.int64)
                if len(missing):
                    cache.update(_load_inputs(source, kept, missing, settings, pre, workers))
                pictures = cache
            else:
                pictures = _load_inputs(source, kept, needed, settings, pre, workers)
            order = np.array(sorted(int(t) for t in needed), dtype=np.int64)
            stack = np.stack([pictures[int(t)] for t in order]) if len(order) else None
            for rec in group:
                for which in ("top", "bottom"):
                    if (rec.name, which) not in winners:
                        continue
                    n_done = _put_examples(rec, which, winners[(rec.name, which)], stack, order, settings, pre, sink,
                                           per_source)
                    done += n_done
                    bar.advance(n_done)
            if cache is None:
                del pictures
    return done


def _put_examples(rec: LayerRecord, which: str, win: Winners, stack: np.ndarray | None, order: np.ndarray, settings,
                  pre, sink, per_source: int) -> int:
    """Hand one layer's top or bottom examples to the sink, their patches cut from the stacked inputs (stack
    [len(order), H, W, C], rows of the table images in `order`) as the sink reads them; returns the number of
    patches."""
    score, img = win.score, win.image
    have = img >= 0
    side = patch_side(rec.rf_size, pre.crop, settings.patch_size, rec.effective_layout.field == "global")
    rows = np.where(have, np.searchsorted(order, np.maximum(img, 0)), -1)
    patches = PatchRows(stack, rows, win.shown, side)  # cut row by row as the sink reads them
    sink.put_examples(rec.name, which, ExampleSet(
        units=np.arange(rec.units, dtype=np.int64), score=score, image_index=img, loc=win.loc,
        box=win.box, patches=patches, shown=win.shown, heat=win.heat, heat_origin=win.heat_origin),
        patch_format="png" if settings.lossless else "jpeg", quality=JPEG_QUALITY, per_source=per_source)
    return int(have.sum())
