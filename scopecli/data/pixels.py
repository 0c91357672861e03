"""One sample -> the model's input domain: integers 0..2^bit_depth-1 with the model's channel count.

Why: a model's input spec (channels, bit depth, value range) decides what a stored file means. Photos,
16-bit and float images, N-channel arrays, TIFF stacks and one-file-per-channel samples all have to end
up as the same kind of tensor, read the same way every time, and a file that does not fit is skipped with
a short reason (BadImage) instead of a traceback in a DataLoader worker.

Two paths: 8-bit RGB and 8-bit gray photos keep Pillow's path (decode, convert, torchvision Resize /
CenterCrop / PILToTensor: byte-identical to earlier releases and as fast); everything else is read into
an H x W x C numpy array at the file's native dtype (`read_pixels`), scaled to the spec's depth by its
value range, then resized and cropped as a float tensor (`model_input`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from scopecli.core.errors import ScopeError

MIN_SIDE = 16  # smaller images carry no usable detail after resizing to the model input
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit (width * height), enforced before decoding
MAX_CHANNELS = 64  # more than this is almost surely a misread axis (and a memory hazard)
TIFF_HINT = "pip install scopecli[tiff]"

ImageFile.LOAD_TRUNCATED_IMAGES = False

_TIFF_EXT = (".tif", ".tiff")
_NPY_MAGIC = b"\x93NUMPY"
_TENSOR_MODES = ("NEAREST", "NEAREST_EXACT", "BILINEAR", "BICUBIC")  # what torchvision resizes on tensors
_WIDE_MODES = ("I", "F")  # Pillow modes that hold more than 8 bits (I, I;16, I;16B, ..., F)


class BadImage(Exception):
    """A file that cannot be used; the message is the recorded reason."""


@dataclass(frozen=True)
class PixelSpec:
    """What the reader produces: `channels` planes of integers 0..qmax (qmax = 2**bit_depth - 1).

    value_range: the raw sample values that map to 0 and qmax (None: the data type's full range);
    channel_axis: which axis of a 3-D array (.npy, TIFF stack) holds the channels, 0 or -1 (None: guess).
    """

    channels: int = 3
    bit_depth: int = 8
    value_range: tuple[float, float] | None = None
    channel_axis: int | None = None

    def __post_init__(self):
        if not 1 <= int(self.channels) <= MAX_CHANNELS:
            raise ScopeError(f"input channels must be 1..{MAX_CHANNELS}, not {self.channels}")
        if int(self.bit_depth) not in (8, 16):
            raise ScopeError(f"input bit depth must be 8 or 16, not {self.bit_depth}")
        if self.channel_axis not in (None, 0, 2, -1):
            raise ScopeError(f"channel axis must be 0 (channels first) or -1 (channels last), not {self.channel_axis}")
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "bit_depth", int(self.bit_depth))
        if self.value_range is not None:
            lo, hi = (float(v) for v in self.value_range)
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
                raise ScopeError(f"value range needs two different finite numbers, not {tuple(self.value_range)}")
            object.__setattr__(self, "value_range", (lo, hi))

    @classmethod
    def of(cls, preprocess, channel_axis: int | None = None) -> "PixelSpec":
        """The spec of a model's Preprocess (anything with channels / bit_depth / value_range)."""
        vr = getattr(preprocess, "value_range", None)
        return cls(channels=getattr(preprocess, "channels", 3), bit_depth=getattr(preprocess, "bit_depth", 8),
                   value_range=None if vr is None else tuple(vr), channel_axis=channel_axis)

    @property
    def qmax(self) -> int:
        return (1 << self.bit_depth) - 1

    @property
    def dtype(self) -> torch.dtype:
        """uint8 for 8-bit inputs; int32 for 16-bit ones (torch has no uint16 that DataLoaders collate)."""
        return torch.uint8 if self.bit_depth == 8 else torch.int32

    @property
    def pil_path(self) -> bool:
        """8-bit RGB or gray with no value range: photos go through Pillow, exactly as before."""
        return self.bit_depth == 8 and self.channels in (1, 3) and self.value_range is None

    @property
    def axis(self) -> int | None:
        return None if self.channel_axis is None else (2 if self.channel_axis == -1 else self.channel_axis)


class ChannelFiles(tuple):
    """One sample stored as one single-channel file per channel (a row of a channels mapping file), in
    channel order. It stands where a Path stands in `ImageSource.files`; the readers accept both."""

    __slots__ = ()

    def __new__(cls, paths=()):
        return super().__new__(cls, tuple(Path(p) for p in paths))

    def __repr__(self) -> str:
        return f"ChannelFiles({', '.join(str(p) for p in self)})"


def _tifffile():
    try:
        import tifffile
    except ImportError:
        return None
    return tifffile


# -- bytes and Pillow ------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        raise BadImage("unreadable: permission denied") from None
    except OSError as exc:
        raise BadImage(f"unreadable: {exc.strerror or type(exc).__name__}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise BadImage(f"too large: {w}x{h} pixels is over the decompression-bomb limit of {max_pixels}")
    if min(w, h) < MIN_SIDE:
        raise BadImage(f"too small: {w}x{h} pixels (need at least {MIN_SIDE} on each side)")


def _open_pil(data: bytes, max_pixels: int) -> Image.Image:
    """Decode with Pillow, refusing images over `max_pixels` before decoding them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"too large: {w}x{h} pixels is over the decompression-bomb limit of {max_pixels}")
            img.load()
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"too large: over the decompression-bomb limit of {max_pixels} pixels") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt or truncated: {_first_line(exc)}") from None
    if min(w, h) < MIN_SIDE:
        raise BadImage(f"too small: {w}x{h} pixels (need at least {MIN_SIDE} on each side)")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; 16-bit and float grayscale are rescaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255):
            arr = arr / 65535.0 * 255.0  # 16-bit samples
        elif img.mode == "F" and arr.max() <= 1.0:
            arr = arr * 255.0  # float in [0, 1]
        gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _to_l(img: Image.Image) -> Image.Image:
    """An 8-bit photo -> Pillow "L" luminance (via RGB, so palettes and CMYK convert as they do for RGB)."""
    return img if img.mode == "L" else _to_rgb(img).convert("L")


def _convert(img: Image.Image, channels: int) -> Image.Image:
    try:
        return _to_rgb(img) if channels == 3 else _to_l(img)
    except (OSError, ValueError) as exc:
        target = "RGB" if channels == 3 else "L"
        raise BadImage(f"cannot convert mode {img.mode} to {target}: {exc}".splitlines()[0]) from None


def _is_wide(img: Image.Image) -> bool:
    return img.mode.startswith(_WIDE_MODES)


def _pil_native(img: Image.Image, channels: int | None) -> tuple[np.ndarray, bool]:
    """(H x W x C array, has alpha) of a decoded Pillow image. 16-bit and float modes keep their depth
    (uint16 / int32 / float32, one channel); 8-bit photos are converted by Pillow to RGB or L when the
    spec wants 3 or 1 channels, else kept as their own bands (LA, RGB, RGBA, CMYK)."""
    mode = img.mode
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.uint16)  # native byte order
    elif mode.startswith("I"):
        arr = np.asarray(img).astype(np.int32)
    elif mode == "F":
        arr = np.asarray(img).astype(np.float32)
    elif channels in (1, 3):
        arr = np.asarray(_convert(img, channels))
    else:
        if mode == "1":
            img = img.convert("L")
        elif mode in ("P", "PA"):
            img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
        elif mode == "La":
            img = img.convert("LA")
        elif mode in ("RGBa", "RGBX"):
            img = img.convert("RGBA" if mode == "RGBa" else "RGB")
        elif mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, img.mode in ("LA", "RGBA")


# -- arrays: .npy and TIFF ---------------------------------------------------------------------------

def _supported_dtype(dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise BadImage("refused: the array holds Python objects (pickled data is never loaded)")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise BadImage(f"unsupported data type {dtype} (need bool, integer or float samples)")


def _array_layout(shape: tuple[int, ...], pixels: PixelSpec, what: str, labels: str | None = None,
                  npy: bool = True) -> tuple[int | None, int, int, int]:
    """(channel axis or None for 2-D, height, width, channels) of an array shape (leading 1s dropped).

    .npy: the given channel_axis, else the one end axis whose length is the spec's channel count, else the
    shorter end axis (the last on a tie: H x W x C). TIFF: the axis tifffile labels as not Y/X, else the one end axis matching the spec, else
    channel_axis, else the shorter end axis."""
    if len(shape) == 2:
        return None, shape[0], shape[1], 1
    if len(shape) != 3:
        dims = "x".join(str(s) for s in shape)
        raise BadImage(f"{what} has {len(shape)} dimensions ({dims}); expected HxW, HxWxC or CxHxW")
    matches = [a for a in (0, 2) if shape[a] == pixels.channels]
    ax = None
    if labels and len(labels) == 3 and "Y" in labels and "X" in labels:
        other = [i for i, c in enumerate(labels) if c not in "YX"]
        ax = other[0] if other and other[0] in (0, 2) else None
    if ax is None:
        if npy:
            ax = pixels.axis if pixels.axis is not None else (matches[0] if len(matches) == 1 else
                                                              0 if shape[0] < shape[2] else 2)
        elif len(matches) == 1:
            ax = matches[0]
        elif pixels.axis is not None:
            ax = pixels.axis
        else:
            ax = 0 if shape[0] < shape[2] else 2
    h, w = [s for i, s in enumerate(shape) if i != ax]
    return ax, h, w, shape[ax]


def _check_layout(h: int, w: int, c: int, shape, max_pixels: int) -> None:
    if c > MAX_CHANNELS:
        dims = "x".join(str(s) for s in shape)
        raise BadImage(f"has {c} channels (array {dims}), over {MAX_CHANNELS}: is the channel axis right?")
    _check_size(w, h, max_pixels)


def _to_hwc(arr: np.ndarray, ax: int | None) -> np.ndarray:
    if ax is None:
        arr = arr[:, :, None]
    elif ax == 0:
        arr = np.moveaxis(arr, 0, 2)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _squeeze_shape(shape):
    """Leading length-1 axes dropped (a batch of one saved as 1 x C x H x W)."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _npy_check(path: Path, pixels: PixelSpec, max_pixels: int):
    """Shape and dtype of a .npy file from its header (memory-mapped), before any data is read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except PermissionError:
        raise BadImage("unreadable: permission denied") from None
    except OSError as exc:
        raise BadImage(f"unreadable: {exc.strerror or type(exc).__name__}") from None
    if not head.startswith(_NPY_MAGIC):
        if head.startswith(b"PK"):
            raise BadImage("a .npz archive, not a .npy array")
        if head[:1] == b"\x80":
            raise BadImage("refused: a pickle, not a .npy array (pickled data is never loaded)")
        raise BadImage("not a .npy array (no NUMPY header)")
    try:
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower() or "pickle" in str(exc).lower():
            raise BadImage("refused: the array holds Python objects (pickled data is never loaded)") from None
        raise BadImage(f"corrupt .npy: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a bad file is a reason, not a traceback
        raise BadImage(f"corrupt .npy: {_first_line(exc)}") from None
    try:
        if not isinstance(mm, np.ndarray):
            raise BadImage("not a .npy array")
        shape, dtype = tuple(mm.shape), mm.dtype
    finally:
        del mm
    _supported_dtype(dtype)
    shape = _squeeze_shape(shape)
    ax, h, w, c = _array_layout(shape, pixels, "array")
    _check_layout(h, w, c, shape, max_pixels)
    return shape, ax


def _npy_array(data: bytes, shape, ax) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise BadImage(f"corrupt .npy: {_first_line(exc)}") from None
    return _to_hwc(arr.reshape(shape), ax)


class _UsePillow(Exception):
    """tifffile cannot (or should not) decode this TIFF; Pillow gets to try."""


def _tiff_array(data: bytes, pixels: PixelSpec, max_pixels: int) -> tuple[np.ndarray, bool]:
    """(H x W x C array, has alpha) of a TIFF via tifffile: pages and samples are channels. Palette,
    min-is-white and other photometric interpretations Pillow renders properly are left to Pillow."""
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            if not tf.pages or not tf.series:
                raise BadImage("the TIFF holds no images")
            page, series = tf.pages[0], tf.series[0]
            photometric = int(getattr(page, "photometric", 1))
            if photometric not in (1, 2) and len(tf.pages) == 1:
                raise _UsePillow("photometric")
            _supported_dtype(np.dtype(series.dtype))
            full = tuple(int(s) for s in series.shape)
            labels = str(getattr(series, "axes", "") or "")
            keep = [i for i, s in enumerate(full) if s != 1 or (labels[i:i + 1] in ("Y", "X"))]
            shape = tuple(full[i] for i in keep)
            labels = "".join(labels[i] for i in keep) if len(labels) == len(full) else None
            ax, h, w, c = _array_layout(shape, pixels, "the TIFF", labels, npy=False)
            _check_layout(h, w, c, shape, max_pixels)
            arr = series.asarray().reshape(shape)
            alpha = photometric == 2 and bool(getattr(page, "extrasamples", ()))
    except (BadImage, _UsePillow):
        raise
    except Exception as exc:  # noqa: BLE001 - codec missing, corrupt file, ...
        raise _UsePillow(_first_line(exc)) from None
    return _to_hwc(arr, ax), alpha


# -- channel counts ------------------------------------------------------------------------------------

def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (Pillow's "L" weights) at the input's dtype."""
    f = rgb[..., 0].astype(np.float64) * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if rgb.dtype == np.bool_:
        return f >= 0.5
    if rgb.dtype.kind in "iu":
        info = np.iinfo(rgb.dtype)
        return np.clip(np.round(f), info.min, info.max).astype(rgb.dtype)
    return f.astype(rgb.dtype)


def _match_channels(arr: np.ndarray, channels: int, alpha: bool = False, hint: str = "") -> np.ndarray:
    """The sample's channels as the model's: equal counts pass; for 1- and 3-channel models gray is
    repeated to RGB, RGB becomes luminance and an alpha band is dropped; anything else is refused."""
    k = arr.shape[2]
    if k == channels:
        return arr
    if channels == 3 and (k == 1 or (alpha and k == 2)):
        return np.ascontiguousarray(np.repeat(arr[:, :, :1], 3, axis=2))
    if channels == 3 and alpha and k == 4:
        return np.ascontiguousarray(arr[:, :, :3])
    if channels == 1 and (k == 3 or (alpha and k == 4)):
        return _luminance(arr[:, :, :3])[:, :, None]
    if channels == 1 and alpha and k == 2:
        return np.ascontiguousarray(arr[:, :, :1])
    raise BadImage(f"has {k} channel{'' if k == 1 else 's'}; the model takes {channels}{hint}")


# -- one sample ---------------------------------------------------------------------------------------

def _is_npy(path: Path) -> bool:
    return path.name.lower().endswith(".npy")


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith(_TIFF_EXT)


def _decode_file(path: Path, pixels: PixelSpec, max_pixels: int, want_pil: bool,
                 native: bool = False) -> tuple[Image.Image | np.ndarray, bytes, bool]:
    """(Pillow image or H x W x C array, the file's bytes, has alpha) of one file.

    A Pillow image comes back only when `want_pil` and the spec is 8-bit RGB/gray and Pillow can give it
    exactly as before; `native` skips the channel conversions (per-channel files keep their own bands)."""
    target = None if native else pixels.channels
    if _is_npy(path):
        shape, ax = _npy_check(path, pixels, max_pixels)
        data = _read_bytes(path)
        return _npy_array(data, shape, ax), data, False
    data = _read_bytes(path)
    tiff = _is_tiff(path)
    tifffile = _tifffile() if tiff else None
    pil_first = pixels.pil_path and not native  # 8-bit RGB/gray photos: Pillow, exactly as before
    tried, tiff_reason = False, ""
    if tiff and tifffile is not None and not pil_first:
        tried = True
        try:
            arr, alpha = _tiff_array(data, pixels, max_pixels)
            return arr, data, alpha
        except _UsePillow as exc:
            tiff_reason = "" if str(exc) == "photometric" else str(exc)
    try:
        img = _open_pil(data, max_pixels)
    except BadImage as exc:
        if not tiff or "too large" in str(exc) or "too small" in str(exc):
            raise
        if tifffile is None:
            raise BadImage(f"{exc}; multi-channel and scientific TIFFs need tifffile: {TIFF_HINT}") from None
        if tried:
            raise BadImage(f"cannot decode this TIFF: {tiff_reason or exc}") from None
        try:  # 8-bit RGB/gray spec: Pillow first (as before), tifffile when Pillow cannot
            arr, alpha = _tiff_array(data, pixels, max_pixels)
        except _UsePillow as exc2:
            raise BadImage(f"{exc}; tifffile: {exc2}") from None
        return arr, data, alpha
    if want_pil and pil_first and (pixels.channels == 3 or not _is_wide(img)):
        return _convert(img, pixels.channels), data, False
    frames = int(getattr(img, "n_frames", 1) or 1)
    if tiff and tifffile is None and frames > 1 and not pil_first:
        raise BadImage(f"a {frames}-page TIFF: reading pages as channels needs tifffile: {TIFF_HINT}")
    arr, alpha = _pil_native(img, target)
    return arr, data, alpha


def _read_channel_files(files: ChannelFiles, pixels: PixelSpec, max_pixels: int):
    """Stack single-channel files into one H x W x C array; the hash covers all their bytes in order."""
    if not files:
        raise BadImage("no channel files")
    if len(files) != pixels.channels and pixels.channels not in (1, 3):
        n = len(files)
        raise BadImage(f"has {n} channel{'' if n == 1 else 's'}; the model takes {pixels.channels}")
    one = PixelSpec(channels=1, bit_depth=16, channel_axis=pixels.channel_axis)
    sha = hashlib.sha256()
    planes = []
    for i, f in enumerate(files):
        try:
            arr, data, _ = _decode_file(Path(f), one, max_pixels, want_pil=False, native=True)
        except BadImage as exc:
            raise BadImage(f"channel {i} ({Path(f).name}): {exc}") from None
        if arr.shape[2] != 1:
            raise BadImage(f"channel {i} ({Path(f).name}) has {arr.shape[2]} channels; a channel file must hold one")
        if planes and arr.shape[:2] != planes[0].shape[:2]:
            (h0, w0), (h, w) = planes[0].shape[:2], arr.shape[:2]
            raise BadImage(f"channel files differ in size: {Path(files[0]).name} is {w0}x{h0}, "
                           f"{Path(f).name} is {w}x{h}")
        if planes and arr.dtype != planes[0].dtype:
            raise BadImage(f"channel files differ in data type: {Path(files[0]).name} is {planes[0].dtype}, "
                           f"{Path(f).name} is {arr.dtype}")
        sha.update(data)
        planes.append(arr)
    return np.concatenate(planes, axis=2), sha.hexdigest()


def _decode(src, pixels: PixelSpec, max_pixels: int, want_pil: bool):
    """(Pillow image or H x W x C array at the model's channel count, sha256, (width, height))."""
    if isinstance(src, ChannelFiles):
        arr, sha = _read_channel_files(src, pixels, max_pixels)
        arr = _match_channels(arr, pixels.channels)
        return arr, sha, (arr.shape[1], arr.shape[0])
    path = Path(src)
    got, data, alpha = _decode_file(path, pixels, max_pixels, want_pil)
    sha = hashlib.sha256(data).hexdigest()
    if isinstance(got, Image.Image):
        return got, sha, got.size
    hint = ""
    if _is_tiff(path) and _tifffile() is None:
        hint = f" (multi-channel TIFFs need tifffile: {TIFF_HINT})"
    arr = _match_channels(got, pixels.channels, alpha, hint)
    return arr, sha, (arr.shape[1], arr.shape[0])


def read_pixels(src, pixels: PixelSpec, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str, tuple[int, int]]:
    """One sample (a file path or ChannelFiles) as (H x W x C array at its native dtype, with the spec's
    channel count; sha256 of its bytes; (width, height)). Raises BadImage with a short reason."""
    arr, sha, size = _decode(src, pixels, int(max_pixels), want_pil=False)
    return arr, sha, size


def read_image(path, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Read, hash and decode one file (or ChannelFiles) to an 8-bit RGB Pillow image; raises BadImage with a
    short reason. Photos take Pillow's path exactly as before; arrays and stacks are scaled to 8 bits."""
    rgb = PixelSpec()
    got, sha, _ = _decode(path, rgb, int(max_pixels), want_pil=True)
    if isinstance(got, Image.Image):
        return got, sha
    q = _quantize(got, rgb)  # 3 x H x W, integers as floats
    return Image.fromarray(np.ascontiguousarray(q.transpose(1, 2, 0)).astype(np.uint8), mode="RGB"), sha


# -- to the model input -------------------------------------------------------------------------------

def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if dtype == np.bool_ or dtype.kind == "f":
        return 0.0, 1.0
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def _quantize(arr: np.ndarray, pixels: PixelSpec) -> np.ndarray:
    """C x H x W float32 of q = clip(round((raw - lo) / (hi - lo) * qmax), 0, qmax); NaN -> 0."""
    lo, hi = pixels.value_range or _dtype_range(arr.dtype)
    qmax = pixels.qmax
    h, w, c = arr.shape
    if arr.dtype.kind == "u" and lo == 0 and hi == qmax and np.iinfo(arr.dtype).max <= qmax:  # no scaling
        return np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)
    scale = qmax / (hi - lo)
    out = np.empty((c, h, w), np.float32)
    for i in range(c):
        v = (arr[:, :, i].astype(np.float64) - lo) * scale
        np.nan_to_num(v, copy=False, nan=0.0, posinf=qmax, neginf=0.0)
        np.round(v, out=v)
        np.clip(v, 0, qmax, out=v)
        out[i] = v
    return out


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `size`, the longer keeps the aspect ratio."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _array_input(arr: np.ndarray, pixels: PixelSpec, resize: int, crop: int, interpolation: str) -> torch.Tensor:
    """H x W x C raw samples -> [C, crop, crop] integers 0..qmax (uint8 or int32)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    name = interpolation.upper()
    t = torch.from_numpy(_quantize(arr, pixels))
    h, w = t.shape[-2:]
    nh, nw = _resized_size(int(h), int(w), int(resize))
    if (nh, nw) != (h, w):
        if name in _TENSOR_MODES:
            t = TF.resize(t, [nh, nw], interpolation=getattr(InterpolationMode, name), antialias=True)
        else:  # box / hamming / lanczos: Pillow resizes float planes with every filter
            pil_filter = getattr(Image.Resampling, name)
            t = torch.from_numpy(np.stack([np.asarray(Image.fromarray(p, mode="F").resize((nw, nh), pil_filter))
                                           for p in t.numpy()]))
    t = TF.center_crop(t, [int(crop), int(crop)])
    return t.round_().clamp_(0, pixels.qmax).to(pixels.dtype)


@functools.lru_cache(maxsize=16)
def pil_transform(resize: int, crop: int, interpolation: str = "bilinear"):
    """The 8-bit photo path: torchvision Resize, CenterCrop, PILToTensor (uint8 [C, crop, crop])."""
    from torchvision import transforms

    mode = getattr(transforms.InterpolationMode, interpolation.upper())
    return transforms.Compose([
        transforms.Resize(int(resize), interpolation=mode),
        transforms.CenterCrop(int(crop)),
        transforms.PILToTensor(),
    ])


def model_input(src, pixels: PixelSpec, resize: int, crop: int, interpolation: str = "bilinear",
                max_pixels: int = MAX_PIXELS, transform=None) -> tuple[torch.Tensor, str, tuple[int, int]]:
    """One sample -> ([channels, crop, crop] uint8/int32 model input, not normalized; sha256; (width,
    height) before resizing). Raises BadImage. `transform`: a prebuilt `pil_transform` for the photo path."""
    got, sha, size = _decode(src, pixels, int(max_pixels), want_pil=True)
    if isinstance(got, Image.Image):
        x = (transform or pil_transform(resize, crop, interpolation))(got)
    else:
        x = _array_input(got, pixels, resize, crop, interpolation)
    return x, sha, size


def zeros_input(pixels: PixelSpec, crop: int) -> torch.Tensor:
    """The stand-in for a bad sample: zeros of the model input's shape and dtype."""
    return torch.zeros(pixels.channels, int(crop), int(crop), dtype=pixels.dtype)


__all__ = ["BadImage", "ChannelFiles", "MAX_CHANNELS", "MAX_PIXELS", "MIN_SIDE", "PixelSpec", "TIFF_HINT",
           "model_input", "pil_transform", "read_image", "read_pixels", "zeros_input"]
