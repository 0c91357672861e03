"""Transformation robustness: random pad/jitter/scale/rotate/jitter, drawn per sample, applied as one warp.

Lucid's standard chain (pad 12 with gray, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4) keeps
the optimizer from exploiting pixel-exact patterns. Here the whole chain for each sample collapses into one
2x3 affine matrix and the batch is warped with a single `affine_grid` + `grid_sample` (gray outside the
image), so every sample gets its own random transform at the cost of one resampling. Draws come from the
sample's own generator and are made for all steps at once, so a sample sees the same transform sequence
whatever batch it is in. The model always sees `size` x `size` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

N_DRAWS = 6  # uniforms per transform: jitter1 y/x, scale, angle, jitter2 y/x


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
    out = F.grid_sample(images - pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + pad_value


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """A batch of optimized images (N,3,H,W) in [0, 1] as (N,H,W,3) uint8 on the images' device (the render
    engine moves it to the host together with its other per-batch results). Values are clamped and rounded;
    a NaN (a diverged sample) becomes mid-gray, so one bad sample cannot break the encoding of the batch
    (callers report divergence from the float image)."""
    return (images.nan_to_num(0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_uint8_pixels(images: torch.Tensor) -> np.ndarray:
    """`to_uint8` as the host numpy array the artifact stores."""
    return to_uint8(images).cpu().numpy()
