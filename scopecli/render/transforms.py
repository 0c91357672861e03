"""Transformation robustness: random pad/jitter/scale/rotate/jitter, drawn per sample, applied as one warp.

Lucid's standard chain (pad 12 with gray, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4) keeps
the optimizer from exploiting pixel-exact patterns. Here the whole chain for each sample collapses into one
2x3 affine matrix and the batch is warped with a single `affine_grid` + `grid_sample` (gray outside the
image), so every sample gets its own random transform at the cost of one resampling. Draws come from the
sample's own generator and are made for all steps at once, so a sample sees the same transform sequence
whatever batch it is in. The model always sees `size` x `size` pixels.

On CUDA, grid_sample's backward adds with atomics, so two runs of the same batch differ; inside
`render.reproducible` the warp's gradient comes from `splat_bilinear` instead (the same numbers, gathers
summed in a fixed order).
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

N_DRAWS = 6  # uniforms per transform: jitter1 y/x, scale, angle, jitter2 y/x
REPRODUCIBLE_WARP: ContextVar[bool] = ContextVar("scope_reproducible_warp", default=False)  # set by render.reproducible


@dataclass(frozen=True)
class TransformSpec:
    """Lucid's `standard_transforms`, as numbers."""

    pad: int = 12
    jitter1: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50.0 for i in range(11))
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5
    jitter2: int = 4
    pad_value: float = 0.5

    def describe(self) -> dict:
        return {
            "pad": self.pad,
            "jitter": [self.jitter1, self.jitter2],
            "scale": [min(self.scales), max(self.scales)],
            "rotate_deg": [min(self.angles), max(self.angles)],
        }


NO_TRANSFORM = TransformSpec(pad=0, jitter1=0, scales=(1.0,), angles=(0.0,), jitter2=0)
REFERENCE_INPUT = 224  # Lucid's pixel amounts are for ImageNet-sized inputs


def for_input_size(spec: TransformSpec, input_size: int) -> TransformSpec:
    """Pad and jitters scaled down for a model whose input is smaller than ImageNet's (a 32 px CIFAR model gets
    2 px of padding and 1 px jitters, not 12 and 8, which would move its whole picture); scale and rotation are
    relative and stay. Inputs of 224 px and more keep Lucid's numbers exactly."""
    if input_size >= REFERENCE_INPUT or spec == NO_TRANSFORM:
        return spec
    f = input_size / REFERENCE_INPUT

    def px(v: int) -> int:
        return 0 if v == 0 else max(1, int(round(v * f)))

    return replace(spec, pad=px(spec.pad), jitter1=px(spec.jitter1), jitter2=px(spec.jitter2))


def draw(generator: torch.Generator, n: int) -> torch.Tensor:
    """n transforms' worth of uniforms [n, N_DRAWS] from one sample's generator."""
    return torch.rand(n, N_DRAWS, generator=generator)


def _pick(u: torch.Tensor, choices) -> torch.Tensor:
    table = torch.tensor(choices, dtype=torch.float32)
    idx = (u * len(choices)).long().clamp_(0, len(choices) - 1)
    return table[idx]


def affine_matrices(u: torch.Tensor, size: int, spec: TransformSpec = TransformSpec()) -> torch.Tensor:
    """Turn uniforms [..., N_DRAWS] into affine_grid matrices [..., 2, 3] (normalized coordinates).

    The output view covers a window of side (size + 2*pad - jitter1 - jitter2) / scale image pixels,
    rotated by the angle and shifted by the two integer jitters (as Lucid's crops would).
    """
    j1 = (u[..., 0:2] * (spec.jitter1 + 1)).floor().clamp(max=spec.jitter1) - spec.jitter1 / 2
    scale = _pick(u[..., 2], spec.scales)
    angle = _pick(u[..., 3], spec.angles) * (math.pi / 180.0)
    j2 = (u[..., 4:6] * (spec.jitter2 + 1)).floor().clamp(max=spec.jitter2) - spec.jitter2 / 2
    window = (size + 2 * spec.pad - spec.jitter1 - spec.jitter2) / scale  # image pixels seen
    zoom = window / size
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    shift = (j1 + j2 / scale.unsqueeze(-1)) * (2.0 / size)  # pixels -> normalized coordinates
    row0 = torch.stack([cos, -sin, shift[..., 1]], dim=-1)  # x
    row1 = torch.stack([sin, cos, shift[..., 0]], dim=-1)  # y
    return torch.stack([row0, row1], dim=-2)


def warp(images: torch.Tensor, theta: torch.Tensor, pad_value: float = 0.5) -> torch.Tensor:
    """Warp a batch (N,3,H,W) by per-sample matrices (N,2,3); outside the image is `pad_value` gray."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    if REPRODUCIBLE_WARP.get():  # set by render.reproducible on CUDA
        return _ReproducibleWarp.apply(images - pad_value, grid) + pad_value
    out = F.grid_sample(images - pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + pad_value


class _ReproducibleWarp(torch.autograd.Function):
    """grid_sample (bilinear, zeros, align_corners=False) forward; the gradient to the images by `splat_bilinear`,
    gathers summed in a fixed order, instead of grid_sample's atomic adds."""

    @staticmethod
    def forward(ctx, images, grid):
        ctx.save_for_backward(grid)
        ctx.image_shape = images.shape
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, grad_out):
        (grid,) = ctx.saved_tensors
        return splat_bilinear(grad_out, grid, ctx.image_shape), None


def _pixels(grid: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """affine_grid's normalized sample points (N, Ho, Wo, 2) as input pixel coordinates x, y (align_corners=False)."""
    return ((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2


def splat_bilinear(grad_out: torch.Tensor, grid: torch.Tensor, image_shape) -> torch.Tensor:
    """The gradient of bilinear `grid_sample` to its input, for an affine `grid`, computed by gathers alone.

    Each input pixel p collects grad_out[o] * hat(s(o) - p) from the output pixels o whose sample point s(o) lies
    within one pixel of it. The grid is affine, so those o lie in a small window around the point that maps onto
    p (its size follows from the inverse of the per-sample 2x2 map); the window's cells are visited in a fixed
    order, so the sum is the same on every run (grid_sample's own backward adds with atomics on CUDA)."""
    n, c, h, w = image_shape
    ho, wo = grid.shape[1:3]
    sx, sy = _pixels(grid.detach().to(torch.float32), h, w)  # (N, Ho, Wo)
    origin = torch.stack([sx[:, 0, 0], sy[:, 0, 0]], -1)  # s(o = 0, 0)
    # one output step in j and in i, measured across the whole grid (float rounding / width)
    if wo > 1:
        col = (torch.stack([sx[:, 0, -1], sy[:, 0, -1]], -1) - origin) / (wo - 1)
    else:
        col = torch.tensor([1.0, 0.0], device=grid.device).expand(n, 2)
    if ho > 1:
        row = (torch.stack([sx[:, -1, 0], sy[:, -1, 0]], -1) - origin) / (ho - 1)
    else:
        row = torch.tensor([0.0, 1.0], device=grid.device).expand(n, 2)
    m = torch.stack([col, row], -1)  # (N, 2, 2): output (j, i) steps -> input (x, y)
    inv = torch.linalg.inv(m.double()).float()
    # o with |s(o) - p| < 1 per axis lie strictly within `reach` of the point that lands on p: at most
    # ceil(2 * reach) integers per axis, the first one floor(centre - reach) + 1 (a margin covers rounding)
    reach = inv.abs().sum(-1) + 1e-2
    k_j, k_i = (math.ceil(2 * r) for r in reach.amax(0).tolist())  # one device -> host read per step
    py, px = torch.meshgrid(torch.arange(h, device=grid.device, dtype=torch.float32),
                            torch.arange(w, device=grid.device, dtype=torch.float32), indexing="ij")
    dx = px.unsqueeze(0) - origin[:, 0, None, None]  # (N, H, W)
    dy = py.unsqueeze(0) - origin[:, 1, None, None]
    oj = inv[:, 0, 0, None, None] * dx + inv[:, 0, 1, None, None] * dy
    oi = inv[:, 1, 0, None, None] * dx + inv[:, 1, 1, None, None] * dy
    base_j = (oj - reach[:, 0, None, None]).floor() + 1
    base_i = (oi - reach[:, 1, None, None]).floor() + 1
    flat_g = grad_out.reshape(n, c, ho * wo)
    flat_x, flat_y = sx.reshape(n, ho * wo), sy.reshape(n, ho * wo)
    out = torch.zeros(n, c, h * w, dtype=grad_out.dtype, device=grad_out.device)
    px, py = px.reshape(1, -1), py.reshape(1, -1)
    for a in range(k_i):
        i = base_i + a
        for b in range(k_j):
            j = base_j + b
            inside = ((j >= 0) & (j <= wo - 1) & (i >= 0) & (i <= ho - 1)).reshape(n, -1)
            index = (i.clamp(0, ho - 1) * wo + j.clamp(0, wo - 1)).long().reshape(n, -1)
            weight = ((1 - (flat_x.gather(1, index) - px).abs()).clamp(min=0)
                      * (1 - (flat_y.gather(1, index) - py).abs()).clamp(min=0) * inside)
            out += flat_g.gather(2, index.unsqueeze(1).expand(n, c, -1)) * weight.unsqueeze(1).to(out.dtype)
    return out.reshape(n, c, h, w)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """A batch of optimized images (N,C,H,W) in [0, 1] as (N,H,W,C) uint8 on the images' device (the render
    engine moves it to the host together with its other per-batch results). Values are clamped and rounded;
    a NaN (a diverged sample) becomes mid-gray, so one bad sample cannot break the encoding of the batch
    (callers report divergence from the float image)."""
    return (images.nan_to_num(0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_pixels(images: torch.Tensor, bit_depth: int = 8) -> torch.Tensor:
    """`to_uint8`, or at bit depth 16 the (N,H,W,C) values 0..65535 as int32 (torch has no full uint16 support)."""
    if int(bit_depth) == 8:
        return to_uint8(images)
    return (images.nan_to_num(0.5).clamp(0, 1) * 65535).round().to(torch.int32).permute(0, 2, 3, 1)


def stored_pixels(pixels: torch.Tensor) -> np.ndarray:
    """One image of `to_pixels` as the host array the artifact stores (uint8, or uint16 at 16 bits)."""
    arr = pixels.cpu().numpy()
    return np.ascontiguousarray(arr if arr.dtype == np.uint8 else arr.astype(np.uint16))
