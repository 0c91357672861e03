"""The render loop: many units per optimization, truncated forward, evidence recorded with every image.

Each batch row renders its own target (unit, layer, objective, diversity index). Everything random about
a row — its initial image and every transform it will see — comes from a CPU generator seeded by
`derive_seed(seed, model fingerprint, layer, unit, diversity index)`, the loss is the sum of per-row
scores and the schedule (scopecli/render/schedule.py) depends only on the step, so a unit starts and is
transformed the same alone, in any batch, or on another machine. Its pixels are bit-identical wherever the
arithmetic is (same batch, device, kernels and thread count); where kernels round differently (another
batch size picks other CPU kernels on some machines, another machine), the optimisation amplifies the
rounding into differences of detail (pretrained Lite0 `_blocks.8`, 2 threads, alone vs batch of 4: mean
9-14/255, activation within 3 %; scripts/check_render_determinism.py measures them). The tests promise
only what holds on any CPU: the same activation within 20 % and pixels correlated at 0.9 or more.
The forward pass stops after the deepest requested layer (`LayerTap`). On a GPU nothing is fetched from
the device inside the step loop: the activation trace is kept on device and read once per batch.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from scopecli.core.devices import as_input, autocast, resolve_device
from scopecli.core.errors import ScopeError
from scopecli.model import adapter
from scopecli.model.capture import LayerTap
from scopecli.model.inputspec import input_channels
from scopecli.model.layers import layouts_at
from scopecli.model.spaces import resolve_space
from scopecli.core.records import RenderRecord
from scopecli.render import transforms as tf
from scopecli.render.estimate import LayerCost, RenderEstimate, deepest_layers, estimate_plan, time_layer
from scopecli.render.objectives import OBJECTIVE_KINDS, OBJECTIVES, RenderTarget, batch_objectives
from scopecli.render.param import PARAMS, default_color, make_param
from scopecli.render.reproducible import reproducible
from scopecli.render.redirect import RedirectedReLU
from scopecli.render.schedule import DEFAULT_SCHEDULE, DEFAULT_STEPS, SCHEDULES, get_schedule, scaled_transforms
from scopecli.core.settings import CheckedSettings, reads
from scopecli.core.units import split_space

MIN_SIZE = 16


@dataclass
class RenderSettings(CheckedSettings):
    """Everything that decides a rendered image (all recorded in the artifact).

    `check()` refuses values that cannot work; each rule runs once per value (scopecli/core/settings.py)."""

    steps: int = DEFAULT_STEPS[DEFAULT_SCHEDULE]
    size: int = 224
    param: str = "fft"
    lr: float | None = None  # None: the schedule's learning rate
    schedule: str = DEFAULT_SCHEDULE
    batch: int | str = "auto"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    deterministic: bool = True  # CUDA: deterministic kernels (render/reproducible.py); the CPU always is
    diversity_weight: float = 1.0
    redirect_steps: int = 16  # steps that use redirected ReLU gradients
    trace_every: int = 32
    robust_samples: int = 16
    transforms: tf.TransformSpec = field(default_factory=tf.TransformSpec)
    magnitude: np.ndarray | None = None  # MACO magnitude spectrum (param.spectrum_from_images); None = 1/f
    channels: int = 3  # the model's input channels (its input spec)
    bit_depth: int = 8  # pictures are stored at this depth
    color: np.ndarray | None = None  # C x C decorrelation (param.color_from_covariance); None: Lucid's RGB / identity
    color_source: str = ""  # where `color` came from: "collect" (the artifact's pixel covariance), "data" (--data)

    @reads("steps")
    def _steps(self) -> None:
        if int(self.steps) <= 0:
            raise ScopeError(f"--steps must be positive, got {self.steps}")

    @reads("size")
    def _size(self) -> None:
        if int(self.size) < MIN_SIZE:
            raise ScopeError(f"--size must be at least {MIN_SIZE} pixels, got {self.size}")

    @reads("param")
    def _param(self) -> None:
        if self.param not in PARAMS:
            raise ScopeError(f"unknown --param '{self.param}': choose one of {', '.join(PARAMS)}")

    @reads("lr")
    def _lr(self) -> None:
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ScopeError(f"--lr must be a positive number, got {self.lr}")

    @reads("schedule")
    def _schedule(self) -> None:
        get_schedule(self.schedule)

    @property
    def learning_rate(self) -> float:
        """--lr, or the schedule's own learning rate."""
        return float(self.lr) if self.lr is not None else get_schedule(self.schedule).lr

    @reads("batch")
    def _batch(self) -> None:
        if self.batch != "auto":
            try:
                ok = int(self.batch) >= 1
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ScopeError(f"--batch must be 'auto' or a positive integer, got {self.batch}")

    def describe(self) -> dict:
        """JSON-able parameters for the artifact's provenance."""
        return {
            "steps": int(self.steps),
            "size": int(self.size),
            "param": self.param,
            "lr": self.learning_rate,
            "schedule": get_schedule(self.schedule).describe(),
            "seed": int(self.seed),
            "amp": bool(self.amp),
            "deterministic": bool(self.deterministic),
            "diversity_weight": float(self.diversity_weight),
            "redirect_steps": int(self.redirect_steps),
            "trace_every": int(self.trace_every),
            "robust_samples": int(self.robust_samples),
            "transforms": self.transforms.describe(),
            "maco_spectrum": "images" if self.magnitude is not None else "1/f",
            **self._input_description(),
        }

    def _input_description(self) -> dict:
        """The input spec the images were made for, and the colour decorrelation used (absent for plain RGB, so RGB
        runs record exactly what they always did)."""
        if int(self.channels) == 3 and int(self.bit_depth) == 8 and self.color is None:
            return {}
        color = self.color if self.color is not None else default_color(int(self.channels))
        return {"channels": int(self.channels), "bit_depth": int(self.bit_depth),
                "color_source": self.color_source or ("lucid" if int(self.channels) == 3 else "identity"),
                "color": [[round(float(v), 6) for v in row] for row in np.asarray(color)]}

    def for_input(self, pre, color: np.ndarray | None = None, source: str = "") -> "RenderSettings":
        """Take the model's input spec: channels, depth, transforms scaled to a small input, the colour matrix."""
        self.channels, self.bit_depth = int(pre.channels), int(pre.bit_depth)
        if color is not None:
            self.color, self.color_source = np.asarray(color, dtype=np.float32), source
        self.transforms = tf.for_input_size(self.transforms, int(pre.crop))
        return self


@dataclass
class RenderResult:
    """What a render run produced: (layer, record) pairs and the targets it had to skip, with why."""

    records: list[tuple[str, RenderRecord]]
    skipped: list[tuple[RenderTarget, str]]
    seconds: float
    batch_size: int
    device: str


def derive_seed(seed: int, fingerprint: str, layer: str, unit: int, diversity_index: int) -> int:
    """A per-image seed (0 .. 2**63-1) from the run seed and what the image is of."""
    text = f"scope-render|{int(seed)}|{fingerprint}|{layer}|{int(unit)}|{int(diversity_index)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def plan_targets(layer_units, objective: str = "channel", diversity: int = 1, position: str = "") -> list[RenderTarget]:
    """Targets for {layer: [units]} (or [(layer, units)]): K = `diversity` images per unit, contiguous.

    Per-layer objectives (deepdream) render one image per layer (unit -1) whatever the units.
    position: "" (centre for neuron), "cls" or "y,x" (see RenderTarget), with the neuron objective only.
    """
    if objective not in OBJECTIVES:
        raise ScopeError(f"unknown --objective '{objective}': choose one of {', '.join(OBJECTIVES)}")
    per_layer = OBJECTIVE_KINDS[objective].per_layer
    if int(diversity) < 1:
        raise ScopeError(f"--diversity must be at least 1, got {diversity}")
    items = layer_units.items() if isinstance(layer_units, dict) else layer_units
    targets = []
    for layer, units in items:
        if OBJECTIVE_KINDS[objective].direction and split_space(layer)[1] is None:
            raise ScopeError(direction_needs_space(layer))
        units = [-1] if per_layer else list(units)
        for unit in units:
            for k in range(int(diversity)):
                targets.append(RenderTarget(layer, int(unit), objective, k, position if not per_layer else ""))
    return targets


def check_position(position: str, objective: str, layout, layer: str) -> str:
    """The normalised --position for a layer ("" = the grid), or a one-line error."""
    text = (position or "").strip().lower().replace(" ", "")
    if text in ("", "center", "centre"):
        return ""
    if objective != "neuron":
        raise ScopeError(f"--position {position} picks one position: use it with --objective neuron")
    if text == "cls":
        if layout.kind != "tokens" or layout.prefix < 1:
            raise ScopeError(f"--position cls: layer {layer} has no class token ({layout.describe()})")
        return "cls"
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ScopeError(f"--position must be center, cls or ROW,COL (e.g. 3,5), got '{position}'") from None
    gh, gw = layout.grid
    if not (0 <= y < gh and 0 <= x < gw):
        raise ScopeError(f"--position {y},{x} is outside the {gh}x{gw} position grid of layer {layer}")
    return f"{y},{x}"


def activation_views(raw: dict[str, torch.Tensor], layouts: dict, keys) -> dict[str, torch.Tensor]:
    """What objectives read: each layer as its canonical grid (N, C, rows, cols) or (N, C), and for
    positioned targets `layer|cls` / `layer|y,x` as that one position (N, C, 1)."""
    out = {}
    for key in keys:
        layer, _, pos = key.partition("|")
        lay = layouts[layer]
        if not pos:
            out[key] = adapter.grid(raw[layer], lay)
        elif pos == "cls":
            out[key] = adapter.prefix(raw[layer], lay)[:, :, :1]
        else:
            y, x = (int(v) for v in pos.split(","))
            out[key] = adapter.grid(raw[layer], lay)[:, :, y, x].unsqueeze(2)
    return out


def tapped_layers(targets: list[RenderTarget]) -> list[str]:
    """The layers a batch must capture: each target's layer and the layer its objective reads (a direction
    objective on `BASE@SPACE` reads BASE)."""
    return list(dict.fromkeys([t.layer for t in targets] + [t.view.partition("|")[0] for t in targets]))


def _directions(module, device):
    """directions(layer, unit) -> (direction [C], pre_bias [C]): the decoder row of a bound unit space."""

    def find(layer: str, unit: int):
        if split_space(layer)[1] is None:
            raise ScopeError(direction_needs_space(layer))
        return resolve_space(module, layer).direction(unit, device)

    return find


def direction_needs_space(layer: str) -> str:
    return (f"--objective direction follows a unit space's decoder row: use it on a space's units "
            f"(LAYER@SPACE, e.g. {layer}@pca32), not on layer {layer} (its units' directions are channels)")


def _unwrap(model, normalize, fingerprint):
    """Accept a scopecli LoadedModel or a bare nn.Module (+ normalize/fingerprint)."""
    if isinstance(model, nn.Module):
        module = model
    else:
        module = model.module
        if normalize is None:
            normalize = _Normalize(model.preprocess.mean, model.preprocess.std)
        if fingerprint is None:
            fingerprint = model.fingerprint
    if normalize is None:
        normalize = _identity
    return module, normalize, fingerprint or "unknown-model"


def _identity(x):
    return x


class _Normalize:
    """(x - mean) / std with the constants made once per device (no host-to-device copy per step)."""

    def __init__(self, mean, std):
        self.mean, self.std, self._cache = tuple(mean), tuple(std), {}

    def __call__(self, x):
        key = (x.device, x.dtype)
        if key not in self._cache:
            mean = torch.tensor(self.mean, dtype=x.dtype).view(1, len(self.mean), 1, 1).to(x.device)
            std = torch.tensor(self.std, dtype=x.dtype).view(1, len(self.std), 1, 1).to(x.device)
            self._cache[key] = (mean, std)
        mean, std = self._cache[key]
        return (x - mean) / std


def _activation_bytes_per_sample(module, layers, size, device, normalize) -> int:
    """Bytes of module outputs one sample produces up to the deepest layer (one probe forward)."""
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out[:1].numel() * 4

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), LayerTap(module, layers) as tap:
            tap(normalize(torch.full((1, input_channels(module), size, size), 0.5, device=device)))
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1)


def auto_batch(module, layers, size, device, normalize=_identity, group: int = 1) -> int:
    """Batch size from memory: saved activations + gradients ~ 4x the forward outputs per sample."""
    per_sample = 4 * _activation_bytes_per_sample(module, layers, size, device, normalize)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        n = int(free * 0.5 // per_sample)
        cap = 256
    else:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
        n = int(avail * 0.25 // per_sample)
        cap = 16  # CPU throughput stops growing with batch long before memory runs out
    n = max(1, min(n, cap))
    return max(group, n // group * group)


def batches(targets: list[RenderTarget], size: int, group: int | None = None):
    """Chunks of `size` (a multiple of the diversity group, so a unit's K images share a batch)."""
    group = group or max((t.diversity_index for t in targets), default=0) + 1
    size = max(group, size // group * group)
    for i in range(0, len(targets), size):
        yield targets[i : i + size]


def render_units(
    model,
    targets: list[RenderTarget],
    settings: RenderSettings | None = None,
    *,
    normalize=None,
    fingerprint: str | None = None,
    dataset_max: dict[str, dict[int, float]] | None = None,
    progress=None,
    on_batch=None,
    on_records=None,
    on_estimate=None,
    layouts: dict | None = None,
    clock=time.perf_counter,
) -> RenderResult:
    """Render every target; return records (with evidence) and skipped targets.

    model: a `scopecli.model.LoadedModel` or a bare nn.Module (then pass `normalize`, a function on
    [0,1] NCHW images, and `fingerprint`, used for the per-image seeds).
    dataset_max: {layer: {unit: dataset maximum}} to fill `dataset_max_ratio`.
    progress: an object with `.advance(n, work=w)` (scopecli.core.progress), advanced in units; after an
    estimate, `work` is predicted seconds (the bar's ETA then follows the per-layer costs).
    on_batch(done_batches, total_batches, done_targets, elapsed_s): called after every batch (elapsed since
    the first batch started).
    on_records(records): called with each batch's [(layer, RenderRecord)] (e.g. to store them at once).
    on_estimate(RenderEstimate): when given and there is more than one batch, each batch's deepest layer
    gets one timed step first (scopecli/render/estimate.py) and the prediction is passed here.
    layouts: {layer: LayerLayout} at settings.size (default: traced here).
    clock: the timer used for the estimate (tests inject a fake one).
    """
    settings = settings or RenderSettings()
    settings.check()
    module, normalize, fingerprint = _unwrap(model, normalize, fingerprint)
    if not targets:
        raise ScopeError("nothing to render: no units selected")
    device = resolve_device(settings.device)
    was_training = module.training
    _place(module, device)
    start = time.perf_counter()
    with reproducible(device, bool(settings.deterministic)):
        try:
            run = _plan_run(module, normalize, fingerprint, targets, settings, device, layouts)
            if on_estimate is not None and len(run.chunks) > 1:
                run.estimate = estimate_render(module, normalize, run.chunks, settings, device, clock)
                on_estimate(run.estimate)
            records, skipped = _render_chunks(run, dataset_max, progress, on_batch, on_records)
            return RenderResult(records, skipped, time.perf_counter() - start, run.batch_size, str(device))
        finally:
            module.train(was_training)


def _place(module, device) -> None:
    """Eval mode on the render device (channels-last on a GPU, where convolutions run faster that way)."""
    module.eval()
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)


@dataclass
class _Run:
    """What every batch of one render run shares: the model, its layer layouts and the batches."""

    module: nn.Module
    normalize: object
    fingerprint: str
    settings: RenderSettings
    device: torch.device
    layouts: dict
    batch_size: int
    chunks: list[list[RenderTarget]]
    estimate: RenderEstimate | None = None


def _plan_run(module, normalize, fingerprint, targets, settings, device, layouts) -> _Run:
    """Layouts of every tapped layer (traced where not given) and the batches (diversity groups whole)."""
    group = max(t.diversity_index for t in targets) + 1
    layers = tapped_layers(targets)
    layouts = dict(layouts or {})
    missing = [name for name in layers if name not in layouts]
    if missing:
        layouts.update(layouts_at(module, int(settings.size), missing))
    if settings.batch == "auto":
        batch_size = auto_batch(module, layers, int(settings.size), device, normalize, group)
    else:
        batch_size = int(settings.batch)
    chunks = list(batches(targets, batch_size, group))
    return _Run(module, normalize, fingerprint, settings, device, layouts, batch_size, chunks)


def _render_chunks(run: _Run, dataset_max, progress, on_batch, on_records):
    """Render the run's batches in order, reporting each (see render_units' callbacks)."""
    batches_start = time.perf_counter()
    records, skipped, done = [], [], 0
    settings = run.settings
    for b, chunk in enumerate(run.chunks):
        seeds = [derive_seed(settings.seed, run.fingerprint, t.layer, t.unit, t.diversity_index) for t in chunk]
        work = run.estimate.batch_seconds[b] if run.estimate is not None else float(len(chunk))
        recs, skips = _render_batch(run.module, run.normalize, chunk, seeds, settings, run.device, dataset_max,
                                    progress, run.layouts, work)
        records.extend(recs)
        skipped.extend(skips)
        if on_records is not None and recs:
            on_records(recs)
        done += len(chunk)
        if on_batch is not None:
            on_batch(b + 1, len(run.chunks), done, time.perf_counter() - batches_start)
    return records, skipped


def layer_depth_order(module, layers) -> list[str]:
    """`layers` in the order the forward pass reaches them (module registration order)."""
    index = {name: i for i, (name, _) in enumerate(module.named_modules())}
    return sorted(layers, key=lambda name: index.get(name, len(index)))


def estimate_render(module, normalize, chunks, settings: RenderSettings, device, clock=time.perf_counter,
                    timer=time_layer) -> RenderEstimate:
    """Predicted seconds per batch: one timed step (and forward) on each batch's deepest layer, at the
    largest batch size of the run. `timer(module, normalize, layer, batch, size, device, amp, clock)`
    returns a LayerCost (tests pass a fake one)."""
    order = layer_depth_order(module, {t.layer for chunk in chunks for t in chunk})
    batch = max(len(chunk) for chunk in chunks)
    costs: dict[str, LayerCost] = {}
    for layer in deepest_layers(chunks, order):
        costs[layer] = timer(module, normalize, layer, batch, int(settings.size), device, bool(settings.amp), clock)
    evidence = 1 + int(settings.robust_samples)  # final image + robustness transforms, forward only
    return estimate_plan(chunks, order, costs, int(settings.steps), evidence)


def step_transforms(draws: torch.Tensor, size: int, spec: tf.TransformSpec, schedule) -> torch.Tensor:
    """Affine matrices (steps, n, 2, 3) for per-step draws (steps, n, 6), each step at the schedule's strength."""
    steps = draws.shape[0]
    if schedule.transform_end == 1.0:
        return tf.affine_matrices(draws, size, spec)
    return torch.stack([tf.affine_matrices(draws[s], size, scaled_transforms(spec, schedule.strength_at(s, steps)))
                        for s in range(steps)])


def _render_batch(module, normalize, targets, seeds, settings, device, dataset_max, progress, layouts, work=None):
    """Optimize one batch; returns ([(layer, RenderRecord)], [(target, reason)]).

    work: what this batch is worth to the progress bar's ETA (predicted seconds; default: its size)."""
    t0 = time.perf_counter()
    n = len(targets)
    draws = _draw_batch(settings, seeds, device)
    objective, measure = batch_objectives(targets, settings.diversity_weight, _directions(module, device))
    views = list(dict.fromkeys([t.view for t in targets] + [t.layer for t in targets]))
    ticker = _Ticker(progress, n, int(settings.steps), float(n if work is None else work))
    with LayerTap(module, tapped_layers(targets)) as tap:
        forward = _Forward(tap, normalize, layouts, views, device, settings.amp)
        trace = _optimize(draws, forward, objective, measure, settings, n, ticker)
        evidence = _evidence(draws, forward, measure, settings.transforms.pad_value, int(settings.bit_depth))
    ticker.finish()
    # One transfer back per batch.
    evidence = _Evidence(evidence.pixels.cpu(), evidence.final.cpu(), evidence.robust.cpu(),
                         evidence.finite_image.cpu(), trace.cpu())
    return _records(targets, seeds, evidence, settings, dataset_max, (time.perf_counter() - t0) / n)


@dataclass
class _Draws:
    """A batch's parameterised images and every transform they will see (steps, then robustness)."""

    param: nn.Module
    step_thetas: torch.Tensor  # (steps, n, 2, 3)
    robust_thetas: torch.Tensor  # (robust_samples, n, 2, 3)


def _draw_batch(settings: RenderSettings, seeds, device, param_factory=None) -> _Draws:
    """Everything random about the batch, from one CPU generator per row.

    The order of draws per row is fixed: initial image, then every step's transform, then the robustness
    transforms, so a row's draws never depend on the batch it is in. `param_factory(size, generators)`: a
    caller's parameterization instead of `settings.param` (`render/api.py`)."""
    size, steps = int(settings.size), int(settings.steps)
    spec, schedule = settings.transforms, get_schedule(settings.schedule)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    if param_factory is None:
        param = make_param(settings.param, size, generators, settings.magnitude, init_scale=schedule.init_scale,
                           decay_power=schedule.decay_power, channels=int(settings.channels), color=settings.color)
    else:
        param = param_factory(size, generators)
        if not isinstance(getattr(param, "raw", None), torch.Tensor) or not callable(param):
            raise ScopeError("param must build an ImageParam-like module with a `raw` tensor to optimize")
    param = param.to(device)
    step_draws = torch.stack([tf.draw(g, steps) for g in generators], dim=1)  # (steps, n, 6)
    robust_draws = torch.stack([tf.draw(g, settings.robust_samples) for g in generators], dim=1)
    step_thetas = step_transforms(step_draws, size, spec, schedule).to(device)
    robust_thetas = tf.affine_matrices(robust_draws, size, spec).to(device)
    return _Draws(param, step_thetas, robust_thetas)


class _Forward:
    """Images in [0, 1] -> the activation views objectives read (normalised, autocast, truncated forward)."""

    def __init__(self, tap, normalize, layouts, views, device, amp):
        self.tap, self.normalize, self.layouts, self.views = tap, normalize, layouts, views
        self.device, self.amp = device, amp

    def __call__(self, x, redirect: bool = False):
        x = as_input(self.normalize(x), self.device)
        with autocast(self.device, self.amp), (RedirectedReLU() if redirect else nullcontext()):
            return activation_views(self.tap(x), self.layouts, self.views)


class _Ticker:
    """Advances the progress bar every steps/16 steps, in units and in predicted seconds (`work`)."""

    def __init__(self, progress, n: int, steps: int, work: float):
        self.progress, self.n, self.steps, self.work = progress, n, steps, work
        self.tick = max(1, steps // 16)

    def step_done(self, step: int) -> None:
        if self.progress is not None and (step + 1) % self.tick == 0:
            self.progress.advance(self.n * self.tick / self.steps, work=self.work * self.tick / self.steps)

    def finish(self) -> None:
        rest = self.steps % self.tick
        if self.progress is not None and rest:
            self.progress.advance(self.n * rest / self.steps, work=self.work * rest / self.steps)


def _optimize(draws: _Draws, forward, objective, measure, settings, n: int, ticker: _Ticker) -> torch.Tensor:
    """The step loop: Adam on the summed per-row scores. Returns the activation trace (on the device,
    one row every `trace_every` steps) so nothing is fetched from a GPU inside the loop."""
    steps, param = int(settings.steps), draws.param
    schedule, lr, pad = get_schedule(settings.schedule), settings.learning_rate, settings.transforms.pad_value
    every = max(1, int(settings.trace_every))
    trace = torch.zeros((steps + every - 1) // every, n, device=draws.step_thetas.device)
    optimizer = torch.optim.Adam([param.raw], lr=lr, betas=schedule.betas)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step, steps, lr)
        acts = forward(tf.warp(param(), draws.step_thetas[step], pad), step < settings.redirect_steps)
        score = objective(acts)
        (grad,) = torch.autograd.grad(-score.sum(), [param.raw])
        param.raw.grad = grad
        optimizer.step()
        if step % every == 0:
            trace[step // every] = measure(acts).detach()
        ticker.step_done(step)
    return trace


@dataclass
class _Evidence:
    """What is recorded with each image: its pixels and the activations it reaches (one row per target)."""

    pixels: torch.Tensor  # (n, H, W, C) uint8 (int32 holding 16-bit values at bit depth 16)
    final: torch.Tensor  # activation of the final image
    robust: torch.Tensor  # mean activation over the robustness transforms
    finite_image: torch.Tensor  # (n,) bool
    trace: torch.Tensor | None = None


def _evidence(draws: _Draws, forward, measure, pad_value, bit_depth: int = 8) -> _Evidence:
    """The final images, their activation as they are and averaged over the robustness transforms."""
    with torch.no_grad():
        image = draws.param().float()
        final = measure(forward(image)).float()
        robust = torch.zeros_like(final)
        thetas = draws.robust_thetas
        for r in range(thetas.shape[0]):
            robust += measure(forward(tf.warp(image, thetas[r], pad_value))).float()
        robust /= max(1, thetas.shape[0])
        return _Evidence(tf.to_pixels(image, bit_depth), final, robust, torch.isfinite(image).flatten(1).all(dim=1))


def _records(targets, seeds, ev: _Evidence, settings, dataset_max, seconds: float):
    """One RenderRecord per target whose image and activations stayed finite; the rest skipped, with why."""
    records, skipped = [], []
    schedule = get_schedule(settings.schedule)
    for i, target in enumerate(targets):
        values = [float(ev.final[i]), float(ev.robust[i])]
        if not (bool(ev.finite_image[i]) and all(math.isfinite(v) for v in values)
                and bool(torch.isfinite(ev.trace[:, i]).all())):
            what = f"{target.layer}:{target.unit}" if target.unit >= 0 else target.layer
            skipped.append((target, f"{what} ({target.objective}, image {target.diversity_index}): loss became NaN/inf"))
            continue
        rec = RenderRecord(
            unit=target.unit,
            objective=target.stored_objective,
            diversity_index=target.diversity_index,
            image=tf.stored_pixels(ev.pixels[i]),
            seed=seeds[i],
            steps=int(settings.steps),
            size=int(settings.size),
            param=settings.param,
            lr=settings.learning_rate,
            schedule=schedule.name,
            act_final=values[0],
            act_robust=values[1],
            act_trace=ev.trace[:, i].numpy().astype(np.float32),
            time_s=seconds,
            dataset_max_ratio=_dataset_ratio(target, values[0], dataset_max),
        )
        records.append((target.layer, rec))
    return records, skipped


def _dataset_ratio(target: RenderTarget, act: float, dataset_max) -> float:
    """act / the unit's dataset maximum, where one is known and positive (NaN otherwise; directions have none)."""
    if not dataset_max or target.unit < 0 or OBJECTIVE_KINDS[target.objective].direction:
        return math.nan
    top = dataset_max.get(target.layer, {}).get(target.unit)
    if top is not None and math.isfinite(top) and top > 0:
        return act / top
    return math.nan
