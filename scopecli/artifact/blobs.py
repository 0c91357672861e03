"""Index tables over concatenated encoded images: the checks and the packing every image element shares.

An image element stores its PNG/JPEG files back to back in one `blob` byte array with offset/length
columns (see SPEC.md). Reading checks every span against the array before any byte is read; writing
packs rows into offsets in one pass.
"""

from __future__ import annotations

import h5py
import numpy as np

from scopecli.artifact.h5io import first_line
from scopecli.artifact.layout import MAX_IMAGE_SIDE
from scopecli.core.errors import ScopeError


def blob_reader(ds: h5py.Dataset, where: str):
    """read(offset, length) -> bytes of one stored image, with a one-line error on damaged storage."""

    def read(off: int, length: int) -> bytes:
        try:
            return ds[off : off + length].tobytes()
        except OSError as exc:
            raise ScopeError(f"{where}: image bytes unreadable ({first_line(exc)}); the file is corrupt")

    return read


def check_blob(ds: h5py.Dataset, where: str) -> None:
    if ds.dtype != np.uint8 or ds.ndim != 1:
        raise ScopeError(f"{where}/blob: expected a 1-D uint8 array")


def check_spans(offset: np.ndarray, length: np.ndarray, blob_size: int, where: str, allow_empty: bool) -> None:
    """Every [offset, offset + length) lies inside the byte array (length 0 allowed only where stated)."""
    if offset.shape != length.shape:
        raise ScopeError(f"{where}: offset and length shapes differ")
    if offset.size == 0:
        return
    if (offset < 0).any() or (length < 0).any() or (not allow_empty and (length == 0).any()):
        raise ScopeError(f"{where}: negative or empty image offsets")
    if (offset.astype(np.int64) + length.astype(np.int64) > blob_size).any():
        raise ScopeError(f"{where}: image offsets out of bounds of the byte array ({blob_size} bytes)")


def check_sizes(h: np.ndarray, w: np.ndarray, where: str) -> None:
    """Declared image sizes are within 1..MAX_IMAGE_SIDE."""
    if h.size and ((h < 1).any() or (w < 1).any() or (h > MAX_IMAGE_SIDE).any() or (w > MAX_IMAGE_SIDE).any()):
        raise ScopeError(f"{where}: declared image sizes outside 1..{MAX_IMAGE_SIDE}")


def pack_offsets(lengths) -> tuple[np.ndarray, np.ndarray]:
    """(offset, length) int64 columns for items of the given byte lengths stored back to back."""
    ln = np.asarray(lengths, np.int64)
    off = np.zeros_like(ln)
    if ln.size > 1:
        np.cumsum(ln[:-1], out=off[1:])
    return off, ln


def present_mask(units: int, idx) -> np.ndarray:
    """uint8 [units] with 1 at the given unit indices (negative ones, layer-wide rows, ignored)."""
    m = np.zeros(units, np.uint8)
    idx = [int(i) for i in idx if int(i) >= 0]
    if idx:
        m[np.asarray(idx, np.int64)] = 1
    return m
