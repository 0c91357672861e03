"""Stored pictures -> what a screen shows: gray for one channel, a false-colour composite for N channels.

Why here, once: show, export, serve and the Python API all display the same stored pictures, and a picture of a
5-channel 16-bit model cannot go to a browser as it is stored (a planar 16-bit PNG shows as a tall gray strip).
8-bit RGB and 8-bit gray pictures are shown as the stored bytes, untouched; everything else is decoded and
re-encoded as an 8-bit RGB PNG. Pictures of small-input models (32 px CIFAR-like) are enlarged with nearest
neighbour for display only, so a browser does not blur the pixels the model saw.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from scopecli.artifact.images import decode_image, encode_png
from scopecli.artifact.layout import PNG_MAGIC

SMALL_INPUT = 64  # models whose input side is at most this get nearest-neighbour enlargement on display
DISPLAY_MIN_SIDE = 128  # ... to at least this many pixels (an integer factor)


@dataclass(frozen=True)
class DisplaySpec:
    """How a model's pictures are shown: its channel count, names, the red/green/blue channels, input size."""

    channels: int = 3
    names: tuple[str, ...] = ("R", "G", "B")
    rgb: tuple[int, ...] = ()  # channel shown as red, green, blue (-1: none); () = the default mapping
    input_size: int = 224
    enlarge_small: bool = False  # only files that record an input spec (1.2): older files show as they always did

    @classmethod
    def of(cls, model_info: dict | None) -> "DisplaySpec":
        """From an artifact's model info (1.0/1.1 files and missing records: RGB)."""
        pre = (model_info or {}).get("preprocess") or {}
        try:
            c = int(pre.get("channels") or 3)
            names = tuple(str(v) for v in (pre.get("channel_names") or ()))
            rgb = tuple(int(v) for v in (pre.get("display_channels") or ()))
            size = int(pre.get("crop") or 224)
        except (TypeError, ValueError):
            return cls()
        if len(names) != c:
            names = ("R", "G", "B") if c == 3 else ("gray",) if c == 1 else tuple(f"ch{i}" for i in range(c))
        if any(not -1 <= v < c for v in rgb):
            rgb = ()
        return cls(c, names, rgb, size, "channels" in pre)

    @property
    def mapping(self) -> tuple[int, int, int]:
        """The channels shown as red, green and blue (-1: black)."""
        if self.rgb:
            return tuple((list(self.rgb) + [-1, -1, -1])[:3])  # type: ignore[return-value]
        if self.channels == 2:
            return (0, 1, -1)
        return (0, 1, 2)

    @property
    def small(self) -> bool:
        return self.enlarge_small and self.input_size <= SMALL_INPUT

    def describe(self) -> str:
        """'red=DAPI green=GFP blue=-' for a caption (empty for plain RGB and gray)."""
        if self.channels in (1, 3) and not self.rgb:
            return ""
        return " ".join(f"{c}={self.names[k] if k >= 0 else '-'}" for c, k in zip(("red", "green", "blue"), self.mapping))


def to8(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 (rounded), uint8 unchanged."""
    if arr.dtype == np.uint8:
        return arr
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def enlarge(arr: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest integer factor that reaches `min_side`."""
    side = max(arr.shape[0], arr.shape[1])
    k = -(-min_side // side) if side < min_side else 1
    return arr if k == 1 else np.repeat(np.repeat(arr, k, axis=0), k, axis=1)


def composite(pixels: np.ndarray, spec: DisplaySpec = DisplaySpec()) -> np.ndarray:
    """HxWxC picture -> HxWx3 uint8: RGB as is, one channel as gray, N channels through the red/green/blue map."""
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    c = arr.shape[2]
    if c == 3 and not spec.rgb:
        return to8(arr)
    if c == 1:
        return np.repeat(to8(arr), 3, axis=2)
    out = np.zeros(arr.shape[:2] + (3,), np.uint8)
    for j, k in enumerate(spec.mapping):
        if 0 <= k < c:
            out[:, :, j] = to8(arr[:, :, k])
    return out


def planes(pixels: np.ndarray) -> list[np.ndarray]:
    """Each channel of an HxWxC picture as an HxW uint8 gray image (per-channel panels)."""
    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return [to8(arr[:, :, k]) for k in range(arr.shape[2])]


def for_screen(pixels: np.ndarray, spec: DisplaySpec = DisplaySpec()) -> np.ndarray:
    """What a screen shows of a decoded picture: the composite, enlarged when the model's input is small."""
    out = composite(pixels, spec)
    return enlarge(out) if spec.small else out


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) of a PNG, or None."""
    if data[:8] != PNG_MAGIC or len(data) < 26 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return w, h, data[24], data[25]


def shown_as_stored(data: bytes, height: int, spec: DisplaySpec = DisplaySpec()) -> bool:
    """True when a browser shows the stored bytes correctly as they are: JPEG, 8-bit RGB PNG, 8-bit single-plane
    gray PNG, with the default mapping and an input that is not small."""
    if spec.small or spec.rgb:
        return False
    head = _png_header(data)
    if head is None:
        return True  # JPEG (8-bit RGB or gray, by construction)
    _w, h, depth, colour = head
    return depth == 8 and (colour == 2 or (colour == 0 and h == height))


def display_bytes(data: bytes, height: int, width: int, spec: DisplaySpec = DisplaySpec(), what: str = "image") -> bytes:
    """The bytes to send to a browser for a stored picture (the stored bytes whenever they show correctly)."""
    if shown_as_stored(data, height, spec):
        return data
    return encode_png(for_screen(decode_image(data, height, width, what), spec), what)


def plane_pngs(data: bytes, height: int, width: int, spec: DisplaySpec = DisplaySpec(), what: str = "image") -> list[bytes]:
    """One 8-bit gray PNG per channel of a stored picture (enlarged for small inputs)."""
    pics = planes(decode_image(data, height, width, what))
    return [encode_png(enlarge(p) if spec.small else p, what) for p in pics]
