"""Checks of the layer adapter against the model itself, for any torchvision model (one implementation:
`scripts/sweep_models.py` runs them on every model, `tests/test_model_sweep.py` on a fixed sample).

Why independent: the tracer (model/receptive.py) decides each layer's unit axis and receptive field from
what it understands of the ops; these checks ask the model instead, with nothing from the tracer but the
answer to check:
- unit axis: run the model at a second input size; the unit axis is the one whose size does not change,
  the position grid the axes that do (a model that refuses another size is rebuilt for it, or else the
  odd-one-out rule: the unit axis is not one of the grid's equal-sized axes);
- receptive field: the bounding box of the input gradient of a random combination of the units at the
  centre position (global poolings detached where squeeze-excitation gates enter, so the box is the
  local path the layer reports), compared side by side with the reported box: within 25 % of the
  measured extent or 8 px; a global field must cover the whole input within 8 px or 5 %;
- render (2 steps) and collect (4 synthetic images) on the first, middle and last default layer into one
  artifact, which must validate.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision
from torch.overrides import TorchFunctionMode

SIDE_FRACTION = 0.25  # each side of the reported box within 25 % of the measured extent ...
SIDE_PX = 8  # ... or 8 px
GLOBAL_FRACTION = 0.05  # a global field's support reaches every edge within 5 % of the input (or 8 px)
BIG_PARAMS = 300_000_000
BIG_INPUT = 384


def model_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


# ---------------------------------------------------------------- plain forwards (no tracer)


class _Stop(Exception):
    pass


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for item in obj.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def output_shapes(module, names, size: int, batch: int) -> dict[str, tuple]:
    """Shape of each named module's (first) output tensor in one plain forward of random images."""
    wanted = set(names)
    shapes: dict[str, tuple] = {}
    handles = []
    for name, m in module.named_modules():
        if name in wanted:
            def hook(mod, inputs, output, name=name):
                t = _first_tensor(output)
                if t is not None and name not in shapes:
                    shapes[name] = tuple(t.shape)
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(torch.randn(batch, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _rebuilt(name: str, size: int):
    """The same architecture built for another input size (ViT's image_size, MaxViT's input_size)."""
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    for kw in ({"image_size": size}, {"input_size": (size, size)}):
        try:
            return torchvision.models.get_model(name, weights=None, **kw, **extra).eval()
        except Exception:  # no such argument, or this size does not fit the architecture
            continue
    return None


def second_size_shapes(name: str, module, names, size: int) -> tuple[int, dict] | tuple[None, None]:
    """(size2, shapes) from a forward at another input size with batch 3 (the first had batch 2)."""
    for s2 in (size + 32, 2 * size):
        for build in (lambda: module, lambda: _rebuilt(name, s2)):
            m = build()
            if m is None:
                continue
            try:
                return s2, output_shapes(m, names, s2, 3)
            except Exception:  # this size does not fit this build
                continue
    return None, None


# ---------------------------------------------------------------- unit axis


def true_axes(shape1: tuple, shape2: tuple | None) -> tuple[int | None, set[int]] | None:
    """(unit axis, grid axes) of an output from its shapes at two input sizes (batch 2, then 3); None when
    the shapes cannot tell. Without a second shape: the grid is the pair of equal axes (square inputs)."""
    dims = len(shape1)
    if shape2 is not None and len(shape2) == dims:
        batch = [d for d in range(dims) if (shape1[d], shape2[d]) == (2, 3)]
        b = 0 if 0 in batch or not batch else batch[0]
        rest = [d for d in range(dims) if d != b]
        fixed = [d for d in rest if shape1[d] == shape2[d] and shape1[d] > 1]
        moving = {d for d in rest if shape1[d] != shape2[d]}
        if len(fixed) == 1:
            return fixed[0], moving
        if not fixed and not moving:
            return None
    rest = list(range(1, dims))
    big = [d for d in rest if shape1[d] > 1]
    if len(big) == 1:
        return big[0], set()
    if dims == 4:  # square input: the grid's two axes have equal sizes, the unit axis is the odd one out
        a, b_, c = (shape1[d] for d in rest)
        if b_ == c and a != b_:
            return 1, {2, 3}
        if a == b_ and c != a:
            return 3, {1, 2}
    return None


def unit_problems(info, shape1, shape2) -> list[str]:
    """Disagreements between the reported unit axis / grid and the axes the two shapes reveal."""
    lay = info.layout
    perm = tuple(lay.perm)
    problems = []
    if len(shape1) != len(perm):
        return [f"{info.name}: output has {len(shape1)} dims, layout {lay.kind} has {len(perm)}"]
    if shape1[perm[1]] != info.channels:
        problems.append(f"{info.name}: {info.channels} units reported, axis {perm[1]} has {shape1[perm[1]]}")
    truth = true_axes(shape1, shape2)
    if truth is None:
        return problems
    unit, grid = truth
    if unit != perm[1]:
        problems.append(f"{info.name}: unit axis {perm[1]} ({shape1[perm[1]]}) reported, the model's is {unit} "
                        f"({shape1[unit]}) of {shape1}")
    if grid and lay.kind != "vector" and not set(perm[2:]) <= grid | {d for d in perm[2:] if shape1[d] == 1}:
        problems.append(f"{info.name}: grid axes {perm[2:]} reported, the positions vary along {sorted(grid)}")
    if lay.kind != "vector":
        positions = math.prod(shape1[d] for d in perm[2:])
        if positions != lay.prefix + lay.grid[0] * lay.grid[1]:
            problems.append(f"{info.name}: {positions} positions in the output, grid {lay.describe()}")
    return problems


# ---------------------------------------------------------------- receptive field


class HoldGlobalPools(TorchFunctionMode):
    """Global poolings to 1x1 pass no gradient (squeeze-excitation gates held constant)."""

    NAMES = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "amax", "avg_pool2d")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if getattr(func, "__name__", "") in self.NAMES and isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor) \
                and src.dim() == 4 and out.dim() == 4 and out.shape[-2:] == (1, 1) and src.shape[-1] > 1:
            return out.detach()
        return out


def support_box(module, name: str, info, size: int, hold: bool, seed: int = 0) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): input pixels whose gradient reaches a random unit mix at the centre position."""
    lay = info.layout
    target = dict(module.named_modules())[name]
    store = {}

    def hook(mod, inputs, output):
        if "out" not in store:
            store["out"] = _first_tensor(output)
            raise _Stop

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, size, size, generator=g).requires_grad_(True)
    handle = target.register_forward_hook(hook)
    try:
        with torch.enable_grad(), (HoldGlobalPools() if hold else _nothing()):
            try:
                module(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    out = store["out"]
    perm = tuple(lay.perm)
    index = [0] * out.dim()
    index[perm[1]] = slice(None)
    cy, cx = lay.grid[0] // 2, lay.grid[1] // 2
    if lay.kind == "tokens":
        index[perm[2]] = lay.prefix + cy * lay.grid[1] + cx
    else:
        index[perm[2]], index[perm[3]] = cy, cx
    picked = out[tuple(index)].float()
    weights = torch.randn(picked.shape[0], generator=g)
    (grad,) = torch.autograd.grad((picked * weights).sum(), [x])
    support = grad[0].abs().sum(0) > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def reported_box(info, size: int) -> tuple[int, int, int, int]:
    """The box the layer record gives the centre position, clipped to the input."""
    if info.layout.field == "global":
        return 0, size, 0, size
    cy, cx = info.height // 2, info.width // 2
    y0, x0 = info.rf_start + cy * info.rf_stride, info.rf_start + cx * info.rf_stride
    clip = lambda v: min(max(v, 0), size)  # noqa: E731
    return clip(y0), clip(y0 + info.rf_size), clip(x0), clip(x0 + info.rf_size)


def box_problem(info, reported, measured, size: int) -> str | None:
    """None when every side of the reported box is within tolerance of the measured one."""
    if measured is None:
        return f"{info.name}: no input pixel reaches the centre position"
    glob = info.layout.field == "global"
    for side, (r, m) in enumerate(zip(reported, measured)):
        extent = measured[1] - measured[0] if side < 2 else measured[3] - measured[2]
        tol = max(SIDE_PX, (GLOBAL_FRACTION * size) if glob else SIDE_FRACTION * extent)
        if abs(r - m) > tol:
            return f"{info.name} ({info.layout.field}): reported box {reported} vs measured {measured} (y0 y1 x0 x1)"
    return None


def rf_problems(module, infos, size: int, seed: int = 0) -> tuple[list[str], int]:
    """(problems, exact): the reported field of each layer against its measured support; `exact` counts
    measured-field layers whose record matches the re-measurement to the pixel."""
    problems, exact = [], 0
    for info in infos:
        hold = info.layout.global_context and info.layout.field != "global"
        measured = support_box(module, info.name, info, size, hold, seed)
        reported = reported_box(info, size)
        problem = box_problem(info, reported, measured, size)
        if problem:
            problems.append(problem)
        elif info.layout.field == "measured" and measured is not None:
            exact += _record_of(measured, info) == (info.rf_size, info.rf_start)
    return problems, exact


def _record_of(box, info) -> tuple[int, int]:
    """(size, start) a measured record would hold for this box (the square convention of LayerRecord)."""
    y0, y1, x0, x1 = box
    cy, cx = info.height // 2, info.width // 2
    return max(y1 - y0, x1 - x0), min(y0 - cy * info.rf_stride, x0 - cx * info.rf_stride)


# ---------------------------------------------------------------- render, collect, validate


def synthetic_images(folder: str, n: int, seed: int = 0) -> None:
    """n small noise-and-gradient PNGs of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        h, w = 48 + 16 * (i % 3), 64 + 8 * i
        ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        img = np.clip(0.5 * ramp + rng.integers(0, 128, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"img{i:02d}.png"))


def render_collect_validate(loaded, layers: list[str], workdir: str, steps: int = 2, images: int = 4) -> dict:
    """Render unit 0 of each layer, collect `images` synthetic images, validate the one artifact.
    {'render': ok|error, 'collect': ..., 'validate': ...} (a later step is skipped after a failure)."""
    from scopecli.artifact.validate import validate
    from scopecli.data.dataset import open_source
    from scopecli.collect.engine import CollectSettings
    from scopecli.jobs.collect import run_collect
    from scopecli.render.engine import RenderSettings
    from scopecli.jobs.render import plan_render, render_job

    out = {"render": "-", "collect": "-", "validate": "-"}
    path = os.path.join(workdir, "sweep.h5")
    crop = loaded.preprocess.crop
    try:
        plan = plan_render(loaded, layers=layers, units="0",
                           settings=RenderSettings(steps=steps, size=crop, device="cpu", batch=len(layers),
                                                         robust_samples=1))
        summary = render_job(loaded, plan, output=path, quiet=True)
        out["render"] = "ok" if summary["rendered"] == len(layers) else f"{summary['rendered']}/{len(layers)}: " \
            + "; ".join(summary["skipped"])[:120]
    except Exception as exc:
        out["render"] = _first_line(exc)
        return out
    try:
        folder = os.path.join(workdir, "images")
        synthetic_images(folder, images)
        settings = CollectSettings(top_k=2, bottom_k=1, probe=images, batch=images, workers=0, device="cpu",
                                   patch_size=32)
        summary = run_collect(loaded, open_source(folder), layers=layers, settings=settings, output=path, quiet=True)
        out["collect"] = "ok" if summary["images"] == images else f"{summary['images']}/{images} images"
    except Exception as exc:
        out["collect"] = _first_line(exc)
        return out
    problems = validate(path)
    out["validate"] = "ok" if not problems else f"{len(problems)} problems: {problems[0][:120]}"
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


# ---------------------------------------------------------------- one model


@dataclass
class Row:
    model: str
    status: str = "ok"  # ok | failed | skipped | unsupported
    reason: str = ""
    size: int = 0
    params_m: float = 0.0
    layers: int = 0
    defaults: int = 0
    layouts: str = ""
    units: str = "-"
    rf: str = "-"
    rf_exact: str = ""  # measured-field layers matching the re-measurement to the pixel
    render: str = "-"
    collect: str = "-"
    validate: str = "-"
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time (all threads): comparable when other jobs share the machine
    phases: dict = field(default_factory=dict)  # seconds of table, units, rf, pipeline
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.units == "ok" and self.rf == "ok" and \
            (self.render, self.collect, self.validate) in (("ok", "ok", "ok"), ("-", "-", "-"))


def size_of(name: str) -> tuple[int, float]:
    """(default input size, parameters in millions) without building real weights (meta device)."""
    from scopecli.model.families import family_for

    family, spec = family_for(name)
    crop = family.preprocess(spec).crop
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    try:
        with torch.device("meta"):  # no memory, no init
            m = torchvision.models.get_model(name, weights=None, **extra)
    except Exception:  # a builder that computes widths with tensors (RegNet) needs real ones
        m = torchvision.models.get_model(name, weights=None, **extra)
    return int(crop), sum(p.numel() for p in m.parameters()) / 1e6


def spread(names: list[str], k: int) -> list[str]:
    """k names evenly spread over the list, first and last included."""
    if len(names) <= k:
        return list(names)
    idx = sorted({round(i * (len(names) - 1) / (k - 1)) for i in range(k)})
    return [names[i] for i in idx]


def check_model(name: str, steps: int = 2, images: int = 4, skip_big: bool = False, rf_layers: int | None = None,
                pipeline: bool = True) -> Row:
    """Every check on one model; never raises (a failure is a row). rf_layers: check only that many
    default layers, spread over the set (all by default)."""
    from scopecli.core.errors import ScopeError
    from scopecli.model import layer_table, resolve_model

    row = Row(name)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        row.size, row.params_m = size_of(name)
        if skip_big and (row.params_m * 1e6 > BIG_PARAMS or row.size > BIG_INPUT):
            row.status, row.reason = "skipped", f"big: {row.params_m:.0f}M parameters, {row.size}px input"
            return row
        loaded = resolve_model(name, weights="random")
        module, size = loaded.module, loaded.preprocess.crop
        lap = [time.perf_counter()]

        def phase(key):
            now = time.perf_counter()
            row.phases[key] = round(now - lap[0], 1)
            lap[0] = now

        try:
            table = layer_table(module, size)
            phase("table")
        except ScopeError as exc:
            row.status, row.reason = "unsupported", str(exc)
            return row
        defaults = [i for i in table if i.default]
        row.layers, row.defaults = len(table), len(defaults)
        row.layouts = "/".join(k for k in ("nchw", "nhwc", "tokens", "vector") if any(i.layout.kind == k for i in table))
        if not defaults:
            row.status, row.reason = "unsupported", "no default layers"
            return row

        names = [i.name for i in table]
        shapes1 = output_shapes(module, names, size, 2)
        _, shapes2 = second_size_shapes(name, module, names, size)
        problems = []
        for info in table:
            problems += unit_problems(info, shapes1[info.name], (shapes2 or {}).get(info.name))
        row.units = "ok" if not problems else f"{len(problems)} failed"
        row.problems += problems
        phase("units")

        checked = spread(defaults, rf_layers) if rf_layers else defaults
        rf, exact = rf_problems(module, checked, size)
        row.rf = "ok" if not rf else f"{len(rf)} failed"
        n_measured = sum(i.layout.field == "measured" for i in checked)
        row.rf_exact = f"{exact}/{n_measured}" if n_measured else ""
        row.problems += rf
        phase("rf")

        if pipeline:
            picks = spread([i.name for i in defaults], 3)
            with tempfile.TemporaryDirectory(prefix="scope-sweep-") as tmp:
                res = render_collect_validate(loaded, picks, tmp, steps, images)
            row.render, row.collect, row.validate = res["render"], res["collect"], res["validate"]
            row.problems += [f"{k}: {v}" for k, v in res.items() if v not in ("ok", "-")]
            phase("pipeline")
        if not row.ok:
            row.status = "failed"
    except Exception as exc:  # a crash is a finding, not the end of the sweep
        row.status, row.reason = "failed", _first_line(exc)
        row.problems.append(traceback.format_exc(limit=-3))
    finally:
        row.seconds = round(time.perf_counter() - start, 1)
        row.cpu_seconds = round(time.process_time() - cpu, 1)
    return row


COLUMNS = ("model", "layers", "default", "layouts", "units", "RF", "render", "collect", "validate", "s")


def short(text: str, n: int = 12) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def format_rows(rows: list[Row]) -> str:
    """A plain text table, one line per model; skipped and unsupported models with their reason."""
    lines = [f"{'model':<20} {'layers':>6} {'default':>7} {'layouts':<19} {'units':<9} {'RF':<14} "
             f"{'render':<8} {'collect':<8} {'validate':<8} {'s':>6} {'cpu s':>6}"]
    for r in rows:
        if r.status in ("skipped", "unsupported"):
            lines.append(f"{r.model:<20} {r.status}: {r.reason}")
            continue
        rf = r.rf + (f" ({r.rf_exact}=)" if r.rf_exact else "")
        lines.append(f"{r.model:<20} {r.layers:>6} {r.defaults:>7} {r.layouts:<19} {short(r.units, 9):<9} "
                     f"{short(rf, 14):<14} {short(r.render, 8):<8} {short(r.collect, 8):<8} "
                     f"{short(r.validate, 8):<8} {r.seconds:>6.1f} {f'{r.cpu_seconds:.1f}' if r.cpu_seconds else '-':>6}")
        if r.status == "failed" and r.reason:
            lines.append(f"    {r.reason}")
    return "\n".join(lines)
