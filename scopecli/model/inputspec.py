"""The model's input spec from the model itself and the user's options: channel count, depth, range, names.

Why: scope used to assume 3-channel 8-bit RGB. Grayscale X-ray models, 4-band satellite models and 5-channel
cell-painting models fail at the first forward with a shape error, so the channel count is read off the
first layer that reads the input (a forward pre-hook that stops the forward there), and everything else
(normalization of any length, 16-bit depth, the raw value range, channel names, which channels a false-colour
composite shows) is an option recorded in the artifact (`Preprocess.to_dict`, format 1.2).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from scopecli.artifact.display import parse_mapping
from scopecli.core.errors import ScopeError
from scopecli.model.loaded import Preprocess

MAX_CHANNELS = 64  # input channels scope stores and shows (hyperspectral cubes beyond this are refused)
MIN_INPUT_SIZE = 16


class _Stop(Exception):
    pass


_CHANNELS: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def declare_channels(module: nn.Module, channels: int) -> None:
    """Remember a resolved model's input channel count (for probes that build an input: layer tracing, fields)."""
    _CHANNELS[module] = int(channels)


def input_channels(module: nn.Module) -> int:
    """The channel count to build probe inputs with: declared by the resolver, else traced, else 3."""
    if module not in _CHANNELS:
        found = detect_channels(module)
        _CHANNELS[module] = found[0] if found else 3
    return _CHANNELS[module]


def detect_channels(module: nn.Module, size: int = 64) -> tuple[int, str] | None:
    """(channels, module name) of the first module with `in_channels` (a convolution, a patch embedding) that the
    forward reaches, or None when the input reaches no such module first (an MLP on flat inputs)."""
    found: list[tuple[int, str]] = []
    names = {m: n for n, m in module.named_modules()}

    def pre_hook(mod, _inputs):
        found.append((int(mod.in_channels), names.get(mod, "?")))
        raise _Stop

    handles = [m.register_forward_pre_hook(pre_hook) for m in module.modules()
               if isinstance(getattr(m, "in_channels", None), int) and isinstance(m, nn.Module)]
    if not handles:
        return None
    try:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    except _Stop:
        pass
    except Exception:  # the model fails before any layer with in_channels: nothing to learn here
        return None
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _numbers(text, what: str) -> tuple[float, ...]:
    values = list(text) if isinstance(text, (list, tuple)) else [v for v in str(text).replace(" ", "").split(",") if v]
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        raise ScopeError(f"--{what} must be comma-separated numbers like 0.5,0.5,0.5, got '{text}'") from None
    if not out:
        raise ScopeError(f"--{what} is empty")
    return out


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ScopeError(f"--{what} has {len(values)} values but the model takes {channels} channels "
                         f"(give one value, or {channels})")
    return values


@dataclass
class InputOptions:
    """What the user said about the input (None: not said)."""

    in_channels: int | None = None
    bit_depth: int | None = None
    value_range: str | tuple | None = None
    channel_names: str | list | None = None
    display_channels: str | list | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.in_channels, self.bit_depth, self.value_range, self.channel_names,
                                           self.display_channels))


def apply_input_options(pre: Preprocess, opts: InputOptions, detected: tuple[int, str] | None,
                        mean=None, std=None) -> Preprocess:
    """Set the channel count (the model's first layer decides; --in-channels must agree with it or stand in
    where nothing was detected), depth, range, names, display mapping and per-channel mean/std on `pre`."""
    channels = pre.channels
    if detected is not None:
        channels = detected[0]
        if opts.in_channels is not None and int(opts.in_channels) != channels:
            raise ScopeError(f"--in-channels {opts.in_channels}: the model's first layer ({detected[1]}) reads "
                             f"{channels} channels")
    elif opts.in_channels is not None:
        channels = int(opts.in_channels)
    if not 1 <= channels <= MAX_CHANNELS:
        raise ScopeError(f"--in-channels must be 1..{MAX_CHANNELS}, got {channels}")
    pre.channels = channels
    if opts.bit_depth is not None:
        if int(opts.bit_depth) not in (8, 16):
            raise ScopeError(f"--bit-depth must be 8 or 16, got {opts.bit_depth}")
        pre.bit_depth = int(opts.bit_depth)
    if opts.value_range is not None:
        lo_hi = _numbers(opts.value_range, "value-range")
        if len(lo_hi) != 2 or not lo_hi[1] > lo_hi[0]:
            raise ScopeError(f"--value-range must be LOW,HIGH with HIGH > LOW (raw sample values that map to 0 and 1), "
                             f"got '{opts.value_range}'")
        pre.value_range = (lo_hi[0], lo_hi[1])
    if opts.channel_names is not None:
        names = [n.strip() for n in (opts.channel_names if isinstance(opts.channel_names, (list, tuple))
                                     else str(opts.channel_names).split(","))]
        if len(names) != channels or any(not n for n in names):
            raise ScopeError(f"--channel-names needs {channels} non-empty names, got '{opts.channel_names}'")
        if len(set(names)) != len(names):
            raise ScopeError(f"--channel-names repeats a name: '{opts.channel_names}'")
        pre.channel_names = tuple(names)
    if opts.display_channels is not None:
        pre.display_channels = parse_mapping(opts.display_channels, channels, pre.names())
    # mean/std: the user's (one value or one per channel), else the family's when it has the right length,
    # else its average for every channel (ImageNet's gray mean for a 1-channel model)
    if mean is not None:
        pre.mean = _per_channel(_numbers(mean, "mean"), channels, "mean")
    elif len(pre.mean) != channels:
        pre.mean = (sum(pre.mean) / len(pre.mean),) * channels
    if std is not None:
        pre.std = _per_channel(_numbers(std, "std"), channels, "std")
    elif len(pre.std) != channels:
        pre.std = (sum(pre.std) / len(pre.std),) * channels
    if any(v <= 0 for v in pre.std):
        raise ScopeError("--std values must be positive")
    return pre


def spec_from_dict(pre: Preprocess, d: dict) -> Preprocess:
    """Apply a recorded `preprocess` dict (model info_json) to `pre`; absent keys (format 1.0/1.1) mean RGB."""
    try:
        if d.get("channels") is not None:
            pre.channels = int(d["channels"])
        if d.get("bit_depth") is not None:
            pre.bit_depth = int(d["bit_depth"])
        if d.get("value_range"):
            pre.value_range = (float(d["value_range"][0]), float(d["value_range"][1]))
        if d.get("channel_names"):
            pre.channel_names = tuple(str(v) for v in d["channel_names"])
        if d.get("display_channels"):
            pre.display_channels = tuple(int(v) for v in d["display_channels"])
        if d.get("mean") is not None:
            pre.mean = tuple(float(v) for v in d["mean"])
        if d.get("std") is not None:
            pre.std = tuple(float(v) for v in d["std"])
        if d.get("crop") is not None:
            pre.crop = int(d["crop"])
        if d.get("resize") is not None:
            pre.resize = int(d["resize"])
        if d.get("interpolation") in ("bilinear", "bicubic", "nearest"):
            pre.interpolation = d["interpolation"]
    except (TypeError, ValueError, IndexError, KeyError):
        raise ScopeError("the artifact's recorded preprocessing is malformed") from None
    if not 1 <= pre.channels <= MAX_CHANNELS or pre.bit_depth not in (8, 16) or len(pre.mean) != pre.channels \
            or len(pre.std) != pre.channels:
        raise ScopeError("the artifact's recorded input spec is malformed (channels, bit depth or mean/std length)")
    return pre
