"""Encode images for the artifact (PNG lossless, JPEG for dataset patches) and decode them safely.

Every picture is stored at its true channel count and bit depth (format 1.2), in files any PNG reader opens:
- 3 channels, 8 bits: an RGB PNG (or JPEG for patches), as always;
- 1 channel: a grayscale PNG, 8 or 16 bits (or a grayscale JPEG for 8-bit patches);
- anything else (N channels, or 3 channels at 16 bits): a *planar* grayscale PNG, 8 or 16 bits, whose C
  channel planes are stacked top to bottom (C*H rows of W pixels), lossless.
So the decoded file says what it holds: RGB mode is interleaved colour; a gray file of H rows is one channel; a
gray file of C*H rows (for the row's declared H) is C planes.

Decoding is for bytes from strangers: only PNG/JPEG magic is accepted, the declared size is checked
before pixels are decoded, and the decoded array must be exactly what the declared size allows.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from scopecli.artifact.layout import JPEG_MAGIC, MAX_IMAGE_SIDE, PNG_MAGIC, input_spec_of
from scopecli.core.errors import ScopeError

PATCH_FORMATS = ("jpeg", "png")


MAX_PLANES = 64  # channels a planar image may hold


def _as_rgb_uint8(image: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ScopeError(f"{what} must be an HxWx3 uint8 array, got {arr.dtype} {tuple(arr.shape)}")
    _check_side(arr, what)
    return np.ascontiguousarray(arr)


def _check_side(arr: np.ndarray, what: str) -> None:
    if not (0 < arr.shape[0] <= MAX_IMAGE_SIDE and 0 < arr.shape[1] <= MAX_IMAGE_SIDE):
        raise ScopeError(f"{what} size {arr.shape[1]}x{arr.shape[0]} is outside 1..{MAX_IMAGE_SIDE}")


def as_pixels(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An HxWxC (or HxW) uint8/uint16 array as HxWxC, checked."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.dtype not in (np.uint8, np.uint16) or not 1 <= arr.shape[2] <= MAX_PLANES:
        raise ScopeError(f"{what} must be an HxWxC uint8 or uint16 array with 1..{MAX_PLANES} channels, "
                         f"got {arr.dtype} {tuple(arr.shape)}")
    _check_side(arr, what)
    return np.ascontiguousarray(arr)


def _gray(plane: np.ndarray) -> Image.Image:
    """A 2-D uint8 (mode L) or uint16 (mode I;16) PIL image."""
    if plane.dtype == np.uint16:
        return Image.fromarray(np.ascontiguousarray(plane.astype("<u2")))  # mode I;16
    return Image.fromarray(np.ascontiguousarray(plane), "L")


def pil_image(image: np.ndarray, what: str = "image") -> tuple[Image.Image, bool]:
    """(the PIL image a PNG is written from, planar?) for an HxWxC picture."""
    arr = as_pixels(image, what)
    c = arr.shape[2]
    if c == 3 and arr.dtype == np.uint8:
        return Image.fromarray(arr, "RGB"), False
    if c == 1:
        return _gray(arr[:, :, 0]), False
    if arr.shape[0] * c > MAX_IMAGE_SIDE * MAX_PLANES:
        raise ScopeError(f"{what}: {c} planes of {arr.shape[0]} rows are too tall to store")
    return _gray(arr.transpose(2, 0, 1).reshape(c * arr.shape[0], arr.shape[1])), True


def encode_png(image: np.ndarray, what: str = "image") -> bytes:
    """Lossless PNG bytes of an HxWxC uint8/uint16 picture (RGB, gray or planar, see the module doc) at zlib's
    default level: PIL's `optimize` saved 2 % on real renders but cost up to 20x the time on detailed images
    (scripts/bench_artifact.py write_s), so not used."""
    buf = io.BytesIO()
    pil_image(image, what)[0].save(buf, format="PNG")
    return buf.getvalue()


def jpeg_ok(image: np.ndarray) -> bool:
    """JPEG holds 8-bit RGB or gray; other pictures are stored as PNG whatever the patch format says."""
    arr = np.asarray(image)
    return arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3)))


def encode_jpeg(image: np.ndarray, quality: int = 90, what: str = "image", optimize: bool = False) -> bytes:
    """Baseline JPEG bytes (4:4:4 at quality >= 90) of an HxWx3 uint8 array. `optimize`: Huffman tables
    fitted to the image, about 8 % fewer bytes for the very same pixels."""
    if not 1 <= int(quality) <= 100:
        raise ScopeError(f"JPEG quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    sub = 0 if quality >= 90 else 2
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1 and arr.dtype == np.uint8 or arr.ndim == 2:
        pic = _gray(as_pixels(arr, what)[:, :, 0])  # a grayscale JPEG
    else:
        pic = Image.fromarray(_as_rgb_uint8(image, what), "RGB")
    pic.save(buf, format="JPEG", quality=int(quality), subsampling=sub, optimize=bool(optimize))
    return buf.getvalue()


def encode_patch(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode one dataset patch in `fmt` ('jpeg' or 'png'; pictures JPEG cannot hold are PNG)."""
    if fmt == "jpeg" and jpeg_ok(image):
        return encode_jpeg(image, quality, "patch", optimize=True)
    if fmt in ("png", "jpeg"):
        return encode_png(image, "patch")
    raise ScopeError(f"unknown patch format {fmt!r}; use one of: {', '.join(PATCH_FORMATS)}")


def check_channels(pixels: np.ndarray, model_info: dict | None, what: str) -> np.ndarray:
    """Refuse a decoded picture whose channel count or depth is not the model input's (1.0/1.1 files: RGB 8-bit)."""
    channels, depth = input_spec_of(model_info)
    got = (pixels.shape[2], 16 if pixels.dtype == np.uint16 else 8)
    if got != (channels, depth):
        raise ScopeError(f"{what} has {got[0]} channels at {got[1]} bits; the model's input is {channels} channels at "
                         f"{depth} bits")
    return pixels


def image_kind(data: bytes) -> str | None:
    """'png', 'jpeg' or None, from the magic bytes."""
    if data[:8] == PNG_MAGIC:
        return "png"
    if data[:3] == JPEG_MAGIC:
        return "jpeg"
    return None


def decode_image(data: bytes, height: int, width: int, what: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes: HxWx3 uint8 for RGB (as always), HxWxC uint8/uint16 for gray and planar files;
    anything else, or any size that the declared height and width do not allow, is refused."""
    kind = image_kind(data)
    if kind is None:
        raise ScopeError(f"{what} is not a PNG or JPEG image (bad magic bytes)")
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise ScopeError(f"{what} declares an impossible size {width}x{height}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"] if kind == "png" else ["JPEG"]) as im:
            w, h = im.size
            planes = h // height if h % height == 0 else 0
            if w != width or not 1 <= planes <= MAX_PLANES or (planes > 1 and im.mode not in _GRAY_MODES):
                raise ScopeError(f"{what} is {w}x{h} but the file declares {width}x{height}")
            if im.mode not in ("RGB",) + _GRAY_MODES:
                raise ScopeError(f"{what} has mode {im.mode}, expected RGB or grayscale")
            im.load()
            arr = np.asarray(im)
            mode = im.mode
    except ScopeError:
        raise
    except Exception as exc:  # PIL raises many types on corrupt data
        raise ScopeError(f"{what} does not decode: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if mode == "RGB":
        if arr.shape != (height, width, 3) or arr.dtype != np.uint8:
            raise ScopeError(f"{what} decoded to {arr.dtype} {arr.shape}, expected {(height, width, 3)} uint8")
        return arr
    if arr.ndim != 2 or arr.shape != (planes * height, width):
        raise ScopeError(f"{what} decoded to {arr.dtype} {arr.shape}, expected {(planes * height, width)}")
    if mode == "L":
        arr = arr.astype(np.uint8, copy=False)
    else:  # 16-bit gray (I;16 in current Pillow, I in older ones)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise ScopeError(f"{what} holds values outside 16 bits")
        arr = arr.astype(np.uint16)
    return np.ascontiguousarray(arr.reshape(planes, height, width).transpose(1, 2, 0))


_GRAY_MODES = ("L", "I;16", "I;16B", "I;16L", "I")
