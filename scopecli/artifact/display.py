"""Stored pictures -> what a screen shows: gray for one channel, a false-colour composite for N channels.

Why here, once: show, export, serve and the Python API all display the same stored pictures, and a picture of a
5-channel 16-bit model cannot go to a browser as it is stored (a planar 16-bit PNG shows as a tall gray strip).
8-bit RGB and 8-bit gray pictures are shown as the stored bytes, untouched (so files without an input spec, and
8-bit RGB models, show byte for byte as they always did); everything else is decoded and re-encoded as an 8-bit
PNG (gray for one channel, else RGB). Pictures of small-input models (32 px CIFAR-like) are enlarged with
nearest neighbour for display only, so a browser does not blur the pixels the model saw.

Python use: `for_screen(view.image, DisplaySpec.of(art.model))` (a render) or `for_screen(example.patch, ...)`
gives the HxWx3 uint8 picture the gallery shows; `planes(pixels)` each channel as 8-bit gray.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, replace

import numpy as np

from scopecli.artifact.images import decode_image, encode_png, image_kind
from scopecli.artifact.layout import PNG_MAGIC
from scopecli.core.errors import ScopeError

SMALL_INPUT = 64  # models whose input side is at most this get nearest-neighbour enlargement on display
DISPLAY_MIN_SIDE = 128  # ... to at least this many pixels (an integer factor)


def default_mapping(channels: int) -> tuple[int, int, int]:
    """The channels a picture of `channels` channels shows as red, green, blue by default: gray for one, the
    first two as red and green for two, the first three otherwise."""
    if channels == 1:
        return (0, 0, 0)
    if channels == 2:
        return (0, 1, -1)
    return (0, 1, 2)


def default_names(channels: int) -> tuple[str, ...]:
    if channels in (1, 3):
        return ("gray",) if channels == 1 else ("R", "G", "B")
    return tuple(f"ch{i}" for i in range(channels))


def parse_mapping(text, channels: int, names=None) -> tuple[int, ...]:
    """'3,1,0' or 'DAPI,GFP,-' -> the channel indices shown as red, green, blue (-1: none); a one-line error
    for anything else (`--display-channels`, when recording an input spec or when showing a file)."""
    items = list(text) if isinstance(text, (list, tuple)) else [v.strip() for v in str(text).split(",")]
    if not 1 <= len(items) <= 3:
        raise ScopeError(f"--display-channels takes one to three channels (red,green,blue), got '{text}'")
    names = list(names or ())
    out = []
    for item in (str(v).strip() for v in items):
        if item in ("-", "none", "-1"):
            out.append(-1)
        elif item in names:
            out.append(names.index(item))
        else:
            try:
                k = int(item)
            except ValueError:
                known = f" (names: {', '.join(names)})" if names else ""
                raise ScopeError(f"--display-channels: '{item}' is not a channel index or name{known}") from None
            if not 0 <= k < channels:
                raise ScopeError(f"--display-channels: channel {k} is outside 0..{channels - 1}")
            out.append(k)
    if all(v < 0 for v in out):
        raise ScopeError("--display-channels shows no channel")
    return tuple(out)


@dataclass(frozen=True)
class DisplaySpec:
    """How a model's pictures are shown: its channel count, names, the red/green/blue channels, input size."""

    channels: int = 3
    names: tuple[str, ...] = ("R", "G", "B")
    rgb: tuple[int, ...] = ()  # channel shown as red, green, blue (-1: none); () = the default mapping
    input_size: int = 224
    enlarge_small: bool = False  # only files that record an input spec (1.2): older files show as they always did
    bit_depth: int = 8

    @classmethod
    def of(cls, model_info: dict | None) -> "DisplaySpec":
        """From an artifact's model info (`art.model`; 1.0/1.1 files and missing or odd records: 8-bit RGB)."""
        pre = (model_info or {}).get("preprocess") or {}
        if not isinstance(pre, dict):
            return cls()
        try:
            c = int(pre.get("channels") or 3)
            names = tuple(str(v) for v in (pre.get("channel_names") or ()))
            rgb = tuple(int(v) for v in (pre.get("display_channels") or ()))[:3]
            size = int(pre.get("crop") or 224)
            depth = int(pre.get("bit_depth") or 8)
        except (TypeError, ValueError):
            return cls()
        if not 1 <= c <= 64:
            return cls()
        if len(names) != c:
            names = default_names(c)
        if any(not -1 <= v < c for v in rgb) or (rgb and all(v < 0 for v in rgb)):
            rgb = ()
        return cls(c, names, rgb, size, "channels" in pre, 16 if depth == 16 else 8)

    def remapped(self, text: str | None) -> "DisplaySpec":
        """This spec with `--display-channels TEXT` (indices or this model's channel names) instead of the recorded
        mapping; itself when TEXT is None."""
        if text is None:
            return self
        return replace(self, rgb=parse_mapping(text, self.channels, self.names))

    @property
    def mapping(self) -> tuple[int, int, int]:
        """The channels shown as red, green and blue (-1: black)."""
        if self.rgb:
            return tuple((list(self.rgb) + [-1, -1, -1])[:3])  # type: ignore[return-value]
        return default_mapping(self.channels)

    def mapping_for(self, channels: int) -> tuple[int, int, int]:
        """The mapping for a picture of `channels` channels (the default one when it is not the model's count)."""
        return self.mapping if channels == self.channels else default_mapping(channels)

    @property
    def small(self) -> bool:
        return self.enlarge_small and self.input_size <= SMALL_INPUT

    @property
    def per_channel(self) -> bool:
        """Whether a unit page shows each channel of its render apart: any model but plain RGB."""
        return self.channels != 3 or bool(self.rgb)

    def describe(self) -> str:
        """'red=DAPI green=GFP blue=-' for a caption (empty for plain RGB and gray)."""
        if self.mapping == default_mapping(self.channels) and self.channels in (1, 3):
            return ""
        return " ".join(f"{c}={self.names[k] if k >= 0 else '-'}" for c, k in zip(("red", "green", "blue"), self.mapping))


def to8(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 (rounded: 65535 -> 255), uint8 unchanged."""
    if arr.dtype == np.uint8:
        return arr
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def enlarge_factor(height: int, width: int, min_side: int = DISPLAY_MIN_SIDE) -> int:
    """The smallest integer factor that brings the longer side to at least `min_side` (1: none needed)."""
    side = max(int(height), int(width), 1)
    return -(-min_side // side) if side < min_side else 1


def enlarge(arr: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest integer factor that reaches `min_side`."""
    k = enlarge_factor(arr.shape[0], arr.shape[1], min_side)
    return arr if k == 1 else np.repeat(np.repeat(arr, k, axis=0), k, axis=1)


def _hwc(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    return arr if arr.ndim == 3 else arr[:, :, None]


def composite(pixels: np.ndarray, spec: DisplaySpec = DisplaySpec()) -> np.ndarray:
    """HxWxC (or HxW) picture -> HxWx3 uint8: 8-bit RGB as is (the same array), one channel as gray, N channels
    through the spec's red/green/blue map; 16-bit values scaled to 8 bits."""
    arr = _hwc(pixels)
    c = arr.shape[2]
    mapping = spec.mapping_for(c)
    if c == 3 and mapping == (0, 1, 2):
        return to8(arr)
    out = np.zeros(arr.shape[:2] + (3,), np.uint8)
    for j, k in enumerate(mapping):
        if 0 <= k < c:
            out[:, :, j] = to8(arr[:, :, k])
    return out


def planes(pixels: np.ndarray) -> list[np.ndarray]:
    """Each channel of an HxWxC picture as an HxW uint8 gray image (per-channel panels)."""
    arr = _hwc(pixels)
    return [to8(arr[:, :, k]) for k in range(arr.shape[2])]


def for_screen(pixels: np.ndarray, spec: DisplaySpec = DisplaySpec()) -> np.ndarray:
    """What a screen shows of a decoded picture (a render's `.image`, an example's `.patch`): the HxWx3 uint8
    composite, enlarged with nearest neighbour when the model's input is small."""
    out = composite(pixels, spec)
    return enlarge(out) if spec.small else out


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) of a PNG, or None."""
    if data[:8] != PNG_MAGIC or len(data) < 26 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return w, h, data[24], data[25]


def _jpeg_channels(data: bytes) -> int | None:
    """1 or 3 for a gray or colour JPEG (its header only), None for anything else."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            return {"L": 1, "RGB": 3}.get(im.mode)
    except Exception:  # not readable: decode_image says why
        return None


def stored_channels(data: bytes, height: int) -> tuple[int, int] | None:
    """(channels, bits) of a stored picture from its header, or None when it is not a PNG/JPEG scope writes."""
    kind = image_kind(data)
    if kind == "jpeg":
        c = _jpeg_channels(data)
        return None if c is None else (c, 8)
    head = _png_header(data)
    if head is None:
        return None
    _w, h, depth, colour = head
    if colour == 2 and depth == 8:
        return 3, 8
    if colour == 0 and depth in (8, 16) and height > 0 and h % height == 0:
        return h // height, depth
    return None


def shown_as_stored(data: bytes, height: int, spec: DisplaySpec = DisplaySpec()) -> bool:
    """True when a browser shows the stored bytes right as they are: an 8-bit RGB or single-plane gray
    PNG/JPEG that the model's mapping shows unchanged, of a model whose input is not small."""
    if spec.small:
        return False
    if not spec.rgb and image_kind(data) == "jpeg":
        return True  # 8-bit gray or RGB, which the default mapping shows as they are
    found = stored_channels(data, height)
    if found is None:  # nothing scope writes: sent as it is, as before (a browser shows what it can)
        return True
    c, bits = found
    return bits == 8 and c in (1, 3) and spec.mapping_for(c) == default_mapping(c)


def screen_png(pixels: np.ndarray, spec: DisplaySpec = DisplaySpec(), what: str = "image") -> bytes:
    """An 8-bit PNG of what a screen shows of decoded pixels: single-plane gray when the composite is gray (one
    channel shown as gray), else RGB."""
    arr = _hwc(pixels)
    if arr.shape[2] == 1 and spec.mapping_for(1) == (0, 0, 0):
        out = to8(arr)
        return encode_png(enlarge(out) if spec.small else out, what)
    return encode_png(for_screen(arr, spec), what)


def display_bytes(data: bytes, height: int, width: int, spec: DisplaySpec = DisplaySpec(), what: str = "image") -> bytes:
    """The bytes to send to a browser for a stored picture (the stored bytes whenever they show correctly,
    else an 8-bit gray or RGB PNG of `for_screen`). Raises ScopeError when the picture does not decode."""
    if shown_as_stored(data, height, spec):
        return data
    return screen_png(decode_image(data, height, width, what), spec, what)


def plane_pngs(data: bytes, height: int, width: int, spec: DisplaySpec = DisplaySpec(), what: str = "image") -> list[bytes]:
    """One 8-bit gray PNG per channel of a stored picture (enlarged for small inputs)."""
    pics = planes(decode_image(data, height, width, what))
    return [encode_png(enlarge(p) if spec.small else p, what) for p in pics]


def mosaic(cells, grid: int, cell_px: int, spec: DisplaySpec = DisplaySpec()):
    """An activation atlas as one PIL RGB picture: each cell's composite at its place (cell_px square, Lanczos;
    nearest neighbour for small-input models), empty cells dark. `cells`: the atlas's cells (`.position`,
    `.image`). For 8-bit RGB cells this is exactly `AtlasView.mosaic`."""
    from PIL import Image

    resample = Image.Resampling.NEAREST if spec.small else Image.Resampling.LANCZOS
    img = Image.new("RGB", (grid * cell_px, grid * cell_px), (24, 24, 28))
    for c in cells:
        tile = Image.fromarray(composite(c.image, spec)).resize((cell_px, cell_px), resample)
        img.paste(tile, (c.position[1] * cell_px, c.position[0] * cell_px))
    return img
