"""Encode images for the artifact (PNG lossless, JPEG for dataset patches) and decode them safely.

Decoding is for bytes from strangers: only PNG/JPEG magic is accepted, the declared size is checked
before pixels are decoded, and the decoded array must be exactly HxWx3 uint8 as the file declares.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from scopecli.artifact.layout import JPEG_MAGIC, MAX_IMAGE_SIDE, PNG_MAGIC
from scopecli.core.errors import ScopeError

PATCH_FORMATS = ("jpeg", "png")


def _as_rgb_uint8(image: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ScopeError(f"{what} must be an HxWx3 uint8 array, got {arr.dtype} {tuple(arr.shape)}")
    if not (0 < arr.shape[0] <= MAX_IMAGE_SIDE and 0 < arr.shape[1] <= MAX_IMAGE_SIDE):
        raise ScopeError(f"{what} size {arr.shape[1]}x{arr.shape[0]} is outside 1..{MAX_IMAGE_SIDE}")
    return np.ascontiguousarray(arr)


def encode_png(image: np.ndarray, what: str = "image") -> bytes:
    """Lossless PNG bytes of an HxWx3 uint8 array at zlib's default level: PIL's `optimize` saved 2 % on real
    renders but cost up to 20x the time on detailed images (scripts/bench_artifact.py write_s), so not used."""
    buf = io.BytesIO()
    Image.fromarray(_as_rgb_uint8(image, what), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 90, what: str = "image", optimize: bool = False) -> bytes:
    """Baseline JPEG bytes (4:4:4 at quality >= 90) of an HxWx3 uint8 array. `optimize`: Huffman tables
    fitted to the image, about 8 % fewer bytes for the very same pixels."""
    if not 1 <= int(quality) <= 100:
        raise ScopeError(f"JPEG quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    sub = 0 if quality >= 90 else 2
    Image.fromarray(_as_rgb_uint8(image, what), "RGB").save(
        buf, format="JPEG", quality=int(quality), subsampling=sub, optimize=bool(optimize)
    )
    return buf.getvalue()


def encode_patch(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode one dataset patch in `fmt` ('jpeg' or 'png')."""
    if fmt == "jpeg":
        return encode_jpeg(image, quality, "patch", optimize=True)
    if fmt == "png":
        return encode_png(image, "patch")
    raise ScopeError(f"unknown patch format {fmt!r}; use one of: {', '.join(PATCH_FORMATS)}")


def image_kind(data: bytes) -> str | None:
    """'png', 'jpeg' or None, from the magic bytes."""
    if data[:8] == PNG_MAGIC:
        return "png"
    if data[:3] == JPEG_MAGIC:
        return "jpeg"
    return None


def decode_image(data: bytes, height: int, width: int, what: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes into HxWx3 uint8, refusing anything else or any size mismatch."""
    kind = image_kind(data)
    if kind is None:
        raise ScopeError(f"{what} is not a PNG or JPEG image (bad magic bytes)")
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise ScopeError(f"{what} declares an impossible size {width}x{height}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"] if kind == "png" else ["JPEG"]) as im:
            if im.size != (width, height):
                raise ScopeError(f"{what} is {im.size[0]}x{im.size[1]} but the file declares {width}x{height}")
            if im.mode != "RGB":
                raise ScopeError(f"{what} has mode {im.mode}, expected RGB")
            im.load()
            arr = np.asarray(im)
    except ScopeError:
        raise
    except Exception as exc:  # PIL raises many types on corrupt data
        raise ScopeError(f"{what} does not decode: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if arr.shape != (height, width, 3) or arr.dtype != np.uint8:
        raise ScopeError(f"{what} decoded to {arr.dtype} {arr.shape}, expected {(height, width, 3)} uint8")
    return arr
