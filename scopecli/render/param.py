"""Image parameterizations: what the optimizer actually changes, and how it becomes a model-input image.

Feature visualization in raw pixel space drifts into high-frequency noise; optimizing a Fourier spectrum
scaled by 1/f in a decorrelated color space (Olah et al., Distill 2017) equalizes the learning rate across
frequencies and colors and gives natural-looking images. MACO (Fel et al. 2023) goes further and keeps a
natural magnitude spectrum fixed, optimizing only the phase. Every parameterization here holds one tensor
with the batch first; row i belongs only to sample i, so Adam (elementwise) keeps samples independent.
Random initial values come from each sample's own CPU `torch.Generator`, so a sample's start does not
depend on which batch it is in.

Each `--param NAME` is one class registered with `@parameterization(NAME, help)`; it is built as
`cls(size, generators, magnitude=..., init_scale=..., decay_power=...)` and takes the keyword arguments it
declares (only MACO uses `magnitude`; the schedule's `init_scale` and `decay_power` reach fft and pixel /
fft). PARAMS and `make_param` read the registry.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scopecli.core.errors import ScopeError

PARAMETERIZATIONS: dict[str, type] = {}
PARAMS = PARAMETERIZATIONS.keys()  # every registered name, in registration order (a live view)

# Square root of ImageNet's RGB color covariance (from its SVD), as published with Lucid.
# Mapping decorrelated values through it yields colors with natural correlations.
_COLOR_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
COLOR_CORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))

_INIT_SD = 0.01  # initial spread of spectra / pixels, as in Lucid
_FFT_DAMP = 4.0  # Lucid divides the fft image by 4 so its initial range suits the sigmoid


def rfft_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitude of every coefficient of a real 2-D FFT of an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def inverse_f_scale(h: int, w: int, decay_power: float = 1.0) -> np.ndarray:
    """1/f amplitude scaling (clamped at the lowest non-zero frequency)."""
    return (1.0 / np.maximum(rfft_freqs(h, w), 1.0 / max(h, w)) ** decay_power).astype(np.float32)


def _per_sample(generators: list[torch.Generator], fn) -> torch.Tensor:
    """Stack one draw per sample, each from that sample's own generator."""
    return torch.stack([fn(g) for g in generators])


def _recolor(x: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Map decorrelated channels (N,C,H,W) to the model's input channels."""
    return torch.einsum("ij,njhw->nihw", color, x)


# How far one unit of decorrelated value moves a pixel channel in Lucid's RGB matrix (the RMS of its row norms,
# 0.604): N-channel matrices are scaled to the same gain, so a gray or 5-channel render has the contrast an RGB
# render has, not 1.7x more (a column-normalised gray "matrix" would be 1.0 and saturate).
RGB_CHANNEL_GAIN = float(np.sqrt((np.linalg.norm(COLOR_CORRELATION, axis=1) ** 2).mean()))


def _channel_gain(matrix: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt((np.linalg.norm(matrix, axis=1) ** 2).mean()))
    return (matrix * (RGB_CHANNEL_GAIN / rms)).astype(np.float32) if rms > 1e-12 else matrix.astype(np.float32)


def color_from_covariance(cov: np.ndarray) -> np.ndarray:
    """Lucid's colour decorrelation for any channel count: the square root of the channels' covariance (measured
    on the data's pixels), scaled to Lucid's RGB gain per channel (`RGB_CHANNEL_GAIN`)."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not np.all(np.isfinite(cov)):
        raise ScopeError(f"channel covariance must be a finite square matrix, got shape {cov.shape}")
    cov = (cov + cov.T) / 2
    vals, vecs = np.linalg.eigh(cov)
    root = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    if not np.abs(root).max() > 1e-12:
        return default_color(cov.shape[0])
    return _channel_gain(root)


def default_color(channels: int) -> np.ndarray:
    """Lucid's ImageNet matrix for RGB; independent channels at Lucid's gain for any other count without data."""
    if channels == 3:
        return COLOR_CORRELATION.copy()
    return _channel_gain(np.eye(channels))


def parameterization(name: str, help: str):
    """Register the decorated ImageParam subclass as `--param name` (`help`: a few words for the CLI)."""

    def register(cls):
        if name in PARAMETERIZATIONS:
            raise ValueError(f"parameterization '{name}' is already registered")
        cls.kind, cls.help = name, help
        PARAMETERIZATIONS[name] = cls
        return cls

    return register


def params_help() -> str:
    """'fft (…), pixel (…) or maco (…)': the registry for `--param`'s help."""
    items = [f"{name} ({cls.help})" for name, cls in PARAMETERIZATIONS.items()]
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


class ImageParam(nn.Module):
    """Base: `forward()` returns the batch of images (N, C, H, W) in [0, 1]; `color` (C x C) maps decorrelated
    channels to the model's channels (Lucid's matrix for RGB, the data's for others, identity without data)."""

    kind = "?"
    help = ""

    def __init__(self, size: int, color: np.ndarray | None = None, channels: int = 3):
        super().__init__()
        self.size = size
        color = default_color(channels) if color is None else np.asarray(color, dtype=np.float32)
        if color.shape != (channels, channels):
            raise ScopeError(f"colour matrix has shape {color.shape}, expected {(channels, channels)}")
        self.channels = channels
        self.register_buffer("color", torch.from_numpy(color.copy()))

    def _to_rgb(self, decorrelated: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(_recolor(decorrelated, self.color))


@parameterization("fft", "Lucid")
class FFTParam(ImageParam):
    """Lucid's Fourier parameterization: 1/f-scaled spectrum, decorrelated color, sigmoid."""

    def __init__(self, size: int, generators: list[torch.Generator], decay_power: float = 1.0,
                 init_scale: float = 1.0, color: np.ndarray | None = None, channels: int = 3):
        super().__init__(size, color, channels)
        scale = inverse_f_scale(size, size, decay_power) * math.sqrt(size * size)
        self.register_buffer("scale", torch.from_numpy(scale))
        fh, fw = scale.shape
        init = _per_sample(generators, lambda g: torch.randn(channels, fh, fw, 2, generator=g) * _INIT_SD) * init_scale
        self.raw = nn.Parameter(init)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.raw.float()) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="backward") / _FFT_DAMP
        return self._to_rgb(image)


@parameterization("pixel", "plain pixels")
class PixelParam(ImageParam):
    """Plain pixels (decorrelated color + sigmoid, as Lucid's `image(fft=False)`)."""

    def __init__(self, size: int, generators: list[torch.Generator], init_scale: float = 1.0,
                 color: np.ndarray | None = None, channels: int = 3):
        super().__init__(size, color, channels)
        init = _per_sample(generators, lambda g: torch.randn(channels, size, size, generator=g) * _INIT_SD) * init_scale
        self.raw = nn.Parameter(init)

    def forward(self) -> torch.Tensor:
        return self._to_rgb(self.raw)


@parameterization("maco", "phase only; magnitude from --data or 1/f")
class MacoParam(ImageParam):
    """MACO: a fixed natural magnitude spectrum; only the phase is optimized.

    The magnitude (3, H, W//2+1), in decorrelated color space, comes from the user's images
    (`spectrum_from_images`) or a 1/f prior. The image is standardized per sample before the color
    mapping, so its contrast is set by the prior rather than by the optimizer.
    """

    def __init__(self, size: int, generators: list[torch.Generator], magnitude: np.ndarray | None = None,
                 channels: int = 3):
        if channels != 3:
            raise ScopeError(f"--param maco needs an RGB model: its magnitude spectrum is measured in Lucid's "
                             f"decorrelated RGB colours, and this model takes {channels} channels; use --param fft")
        super().__init__(size)
        if magnitude is None:
            magnitude = np.repeat(inverse_f_scale(size, size)[None], 3, axis=0)
        magnitude = np.asarray(magnitude, dtype=np.float32)
        fh, fw = size, size // 2 + 1
        if magnitude.shape != (3, fh, fw):
            raise ScopeError(f"MACO magnitude spectrum has shape {magnitude.shape}, expected {(3, fh, fw)}")
        self.register_buffer("magnitude", torch.from_numpy(magnitude.copy()))
        init = _per_sample(generators, lambda g: (torch.rand(3, fh, fw, generator=g) * 2 - 1) * math.pi)
        self.raw = nn.Parameter(init)

    def forward(self) -> torch.Tensor:
        phase = self.raw.float()
        spectrum = torch.polar(self.magnitude.expand_as(phase), phase)
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        image = image - image.mean(dim=(-2, -1), keepdim=True)
        image = image / (image.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-6)
        return self._to_rgb(image)


def spectrum_from_images(folder: str | Path, size: int, limit: int = 256) -> np.ndarray:
    """Mean FFT magnitude (decorrelated color) of up to `limit` images in `folder` (sorted order).

    Images are resized (shorter side) and center-cropped to `size`. Nothing is downloaded.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise ScopeError(f"--data {folder}: not a directory")
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())[:limit]
    if not files:
        raise ScopeError(f"--data {folder}: no images found (looked for {', '.join(sorted(exts))})")
    inverse = np.linalg.inv(COLOR_CORRELATION).astype(np.float32)
    total = np.zeros((3, size, size // 2 + 1), dtype=np.float64)
    used = 0
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = size / min(im.size)
                im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))))
                left, top = (im.width - size) // 2, (im.height - size) // 2
                arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError):
            continue
        decorrelated = np.einsum("ij,hwj->ihw", inverse, arr - arr.mean(axis=(0, 1)))
        total += np.abs(np.fft.rfft2(decorrelated, norm="ortho"))
        used += 1
    if used == 0:
        raise ScopeError(f"--data {folder}: none of the images could be read")
    return (total / used).astype(np.float32)


def make_param(
    kind: str,
    size: int,
    generators: list[torch.Generator],
    magnitude: np.ndarray | None = None,
    init_scale: float = 1.0,
    decay_power: float = 1.0,
    channels: int = 3,
    color: np.ndarray | None = None,
) -> ImageParam:
    """Build the parameterization `kind` for len(generators) samples of size x size pixels with `channels`
    channels (options a parameterization does not declare are not passed to it; one that cannot take the channel
    count refuses)."""
    if kind not in PARAMETERIZATIONS:
        raise ScopeError(f"unknown parameterization '{kind}': choose one of {', '.join(PARAMS)}")
    cls = PARAMETERIZATIONS[kind]
    options = {"magnitude": magnitude, "init_scale": init_scale, "decay_power": decay_power, "channels": channels,
               "color": color}
    accepted = inspect.signature(cls).parameters
    return cls(size, generators, **{k: v for k, v in options.items() if k in accepted})
