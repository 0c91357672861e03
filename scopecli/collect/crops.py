"""Receptive-field patches: the part of a model input a unit saw at its winning position.

Two windows per example, both in model-input pixels:
- the box: the true receptive field of the winning grid position (unclipped; provenance);
- the shown window: what the stored patch shows. Square, of side min(receptive field, input), centred
  on the field, then shifted inside the input (never past it), so a patch is all image: deep layers whose
  field exceeds the input show the whole input; gray padding appears only where the input itself is
  smaller than the window. A global field (attention over all tokens) shows the whole input.
The patch is the shown window resized to min(window side, --patch-size): early layers keep their native
pixels, large windows are shrunk. Heatmaps cover the grid positions around the winner that fall in the
shown window (`heat_size`, `heat_origins`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 127


def rf_boxes(loc: np.ndarray, rf_size: int, rf_stride: int, rf_start: int, input_size: int,
             whole: bool = False) -> np.ndarray:
    """The true receptive field of each position: loc [..., 2] (y, x) -> (x0, y0, x1, y1) int32, unclipped;
    the whole input for a global field."""
    if whole:
        return np.broadcast_to(np.array([0, 0, input_size, input_size], np.int32), loc.shape[:-1] + (4,)).copy()
    y0 = rf_start + loc[..., 0].astype(np.int64) * rf_stride
    x0 = rf_start + loc[..., 1].astype(np.int64) * rf_stride
    return np.stack([x0, y0, x0 + rf_size, y0 + rf_size], axis=-1).astype(np.int32)


def shown_side(rf_size: int, input_size: int, whole: bool = False) -> int:
    """Side of the shown window: the field, capped at the input (the whole input for a global field)."""
    return int(input_size) if whole else max(1, min(int(rf_size), int(input_size)))


def shown_windows(loc: np.ndarray, rf_size: int, rf_stride: int, rf_start: int, input_size: int,
                  whole: bool = False) -> np.ndarray:
    """The window each patch shows: side `shown_side`, centred on the field, shifted inside the input."""
    side = shown_side(rf_size, input_size, whole)
    if whole:
        return rf_boxes(loc, rf_size, rf_stride, rf_start, input_size, True)
    off = (int(rf_size) - side) // 2
    y0 = rf_start + loc[..., 0].astype(np.int64) * rf_stride + off
    x0 = rf_start + loc[..., 1].astype(np.int64) * rf_stride + off
    hi = max(0, int(input_size) - side)
    y0, x0 = np.clip(y0, 0, hi), np.clip(x0, 0, hi)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=-1).astype(np.int32)


def patch_side(rf_size: int, input_size: int, patch_size: int, whole: bool = False) -> int:
    """Pixels of a stored patch: the shown window's side, shrunk to at most `patch_size`."""
    return max(1, min(shown_side(rf_size, input_size, whole), int(patch_size)))


def heat_size(rf_size: int, rf_stride: int, input_size: int, grid: tuple[int, int], whole: bool = False) -> tuple[int, int]:
    """(rows, columns) of grid positions a heatmap keeps: those a shown window spans (the whole grid for
    a global field or a window as large as the input)."""
    gh, gw = int(grid[0]), int(grid[1])
    side = shown_side(rf_size, input_size, whole)
    if whole or side >= input_size:
        return gh, gw
    n = max(1, math.ceil(side / max(int(rf_stride), 1)))
    return min(gh, n), min(gw, n)


def heat_origins(y, x, size: tuple[int, int], grid: tuple[int, int]):
    """Top-left grid position of each heatmap: centred on the winner, shifted inside the grid (works on
    numpy arrays and torch tensors alike)."""
    hs, ws = size
    gh, gw = grid
    oy = (y - hs // 2).clip(0, gh - hs)
    ox = (x - ws // 2).clip(0, gw - ws)
    return oy, ox


def _windows(pics: np.ndarray, which: np.ndarray, x0: np.ndarray, y0: np.ndarray, side: int) -> np.ndarray:
    """Gather side x side windows at (x0, y0) (may leave the picture: PAD_VALUE there) -> [M, side, side, C].

    A window inside its picture is one row-contiguous copy; one that leaves it is filled with the pad gray and
    gets the part that overlaps (no padded copy of the pictures: for a late layer's huge receptive fields
    that copy was larger than the pictures many times over)."""
    h, w, c = pics.shape[1:4]
    pad = PAD_VALUE if pics.dtype == np.uint8 else PAD_VALUE * 257  # the same gray at 16 bits
    out = np.empty((len(which), side, side, c), dtype=pics.dtype)
    inside = ((x0 >= 0) & (y0 >= 0) & (x0 + side <= w) & (y0 + side <= h)).tolist()
    for i, (t, y, x, ok) in enumerate(zip(which.tolist(), y0.tolist(), x0.tolist(), inside)):
        if ok:
            out[i] = pics[t, y : y + side, x : x + side]  # row-contiguous copies: faster than fancy indexing
            continue
        out[i] = pad
        ya, yb, xa, xb = max(y, 0), min(y + side, h), max(x, 0), min(x + side, w)
        if ya < yb and xa < xb:
            out[i, ya - y : yb - y, xa - x : xb - x] = pics[t, ya:yb, xa:xb]
    return out


def _side(boxes: np.ndarray, what: str) -> int:
    """The one side length of square boxes [M, 4] (M >= 1); ValueError otherwise."""
    side = int(boxes[0, 2] - boxes[0, 0])
    if not ((boxes[:, 2] - boxes[:, 0] == side) & (boxes[:, 3] - boxes[:, 1] == side)).all():
        raise ValueError(f"{what} needs square boxes of one size")
    return side


def _shrunk(pictures: np.ndarray, used: np.ndarray, f: float, chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Pictures `used` (rows of pictures) resized by f < 1, a chunk at a time: what shrunk windows are cut from."""
    h, w, c = pictures.shape[1:4]
    hs, ws = max(1, round(h * f)), max(1, round(w * f))
    small = np.empty((len(used), hs, ws, c), dtype=pictures.dtype)
    per = max(1, chunk_bytes // (h * w * c * pictures.itemsize))
    for s0 in range(0, len(used), per):
        small[s0 : s0 + per] = _resize(pictures[used[s0 : s0 + per]], (hs, ws))
    return small


def _scaled_windows(small: np.ndarray, rows: np.ndarray, boxes: np.ndarray, f: float, size: int) -> np.ndarray:
    """Windows of side `size` cut from shrunk pictures at the boxes' scaled positions (rounding <= half a pixel)."""
    ys = np.round(boxes[:, 1] * f).astype(np.int64)
    xs = np.round(boxes[:, 0] * f).astype(np.int64)
    return _windows(small, rows, xs, ys, size)


def crop_patches(pictures: np.ndarray, which: np.ndarray, boxes: np.ndarray, size: int,
                 chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Batched crop + resize: pictures [T, H, W, C] uint8 or uint16, which [M] rows of pictures, boxes [M, 4]
    all of one side length -> [M, size, size, C] of the pictures' dtype.

    Enlarging 2x or more uses nearest (pixels stay honest), otherwise antialiased bicubic. Shrinking
    resizes each picture once and cuts the windows at scaled positions (rounding <= half an output
    pixel): far cheaper than resizing every big crop. Every patch depends only on its picture and box,
    so shards and single runs give identical patches.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    m = len(boxes)
    c, dtype = (pictures.shape[3], pictures.dtype) if pictures is not None and np.ndim(pictures) == 4 else (3, np.uint8)
    if m == 0:
        return np.empty((0, size, size, c), dtype=dtype)
    side = _side(boxes, "crop_patches")
    pictures = np.ascontiguousarray(pictures)
    which = np.asarray(which, dtype=np.int64)
    if side > size:
        f = size / side
        used, row = np.unique(which, return_inverse=True)
        return _scaled_windows(_shrunk(pictures, used, f, chunk_bytes), row.reshape(-1), boxes, f, size)
    out = np.empty((m, size, size, c), dtype=dtype)
    step = max(1, chunk_bytes // (side * side * c * pictures.itemsize * 2))
    nearest = size >= 2 * side
    for s0 in range(0, m, step):
        sl = slice(s0, s0 + step)
        crops = _windows(pictures, which[sl], boxes[sl, 0], boxes[sl, 1], side)
        if side == size:
            out[sl] = crops
            continue
        if nearest:  # same sampling as torch's nearest-exact: src = floor((dst + 0.5) * side / size)
            src = np.minimum(((np.arange(size) + 0.5) * side / size).astype(np.int64), side - 1)
            out[sl] = crops[:, src][:, :, src]
            continue
        out[sl] = _resize(crops, (size, size))
    return out


def _resize(pics: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of [N, H, W, C] pictures: uint8 on torch's channels-last fast path, 16-bit
    through float32 (rounded and clipped back)."""
    if pics.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(pics)).permute(0, 3, 1, 2)
        return F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False).permute(0, 2, 3, 1).numpy()
    x = torch.from_numpy(pics.astype(np.float32)).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False).permute(0, 2, 3, 1)
    return y.round().clamp(0, 65535).numpy().astype(pics.dtype)


class PatchRows:
    """The [U][K] patches of one layer's top (or bottom) examples, cut when a row is read.

    Why: resnet50's 16 layers have 362,000 examples; cutting them all at once made ~10 GB of fresh arrays
    (the page faults alone cost more than pass 1 of 500 photos) that a writer then encoded and dropped. A row is
    cut when the writer (or a caller) reads it, from the pictures pass 2 decoded once, so the patches pass
    through the cache on their way to the encoder. Each patch is exactly what `crop_patches` gives for its
    picture and window. `pictures` [T, H, W, C]; `which` [U, K] rows of `pictures` (-1: no example);
    `boxes` [U, K, 4] windows of one side length; `size` the patch side.
    """

    def __init__(self, pictures: np.ndarray | None, which: np.ndarray, boxes: np.ndarray, size: int):
        self.which = np.asarray(which, dtype=np.int64)
        self.boxes = np.asarray(boxes, dtype=np.int64)
        self.size = int(size)
        self.k = self.which.shape[1] if self.which.ndim == 2 else 0
        have = self.which >= 0
        pictures = None if pictures is None else np.ascontiguousarray(pictures)  # once, not per row
        self.pictures, self.row_of, self.scale = pictures, None, None
        self._last: tuple[int, list] | None = None
        if not have.any():
            return
        side = _side(self.boxes[have], "PatchRows")
        if side > self.size:  # every used picture shrunk once, windows cut at scaled positions (as crop_patches)
            used = np.unique(self.which[have])
            self.scale = self.size / side
            self.pictures = _shrunk(pictures, used, self.scale)
            self.row_of = np.full(int(used.max()) + 1, -1, np.int64)
            self.row_of[used] = np.arange(len(used))

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, u: int) -> "PatchRow":
        if not -len(self) <= u < len(self):
            raise IndexError(u)
        return PatchRow(self, int(u) % len(self))

    def __iter__(self):
        return (PatchRow(self, u) for u in range(len(self)))

    def row(self, u: int) -> list[np.ndarray | None]:
        """Row u's K patches (None where there is no example); the last row read is kept."""
        if self._last is not None and self._last[0] == u:
            return self._last[1]
        out: list[np.ndarray | None] = [None] * self.k
        have = np.flatnonzero(self.which[u] >= 0)
        if len(have):
            which, boxes = self.which[u, have], self.boxes[u, have]
            if self.scale is None:
                cut = crop_patches(self.pictures, which, boxes, self.size)
            else:
                cut = _scaled_windows(self.pictures, self.row_of[which], boxes, self.scale, self.size)
            for n, j in enumerate(have.tolist()):
                out[j] = cut[n]
        self._last = (u, out)
        return out


class PatchRow:
    """One unit's K patches (a sequence; cut on first access)."""

    def __init__(self, rows: PatchRows, u: int):
        self._rows, self._u, self._items = rows, u, None

    def __len__(self) -> int:
        return self._rows.k

    def __getitem__(self, j):
        if self._items is None:
            self._items = self._rows.row(self._u)
        return self._items[j]

    def __iter__(self):
        return (self[j] for j in range(len(self)))


def crop_patch(image: np.ndarray, box, size: int) -> np.ndarray:
    """Cut the box (padded) from one HxWxC model input and resize it to size x size."""
    return crop_patches(image[None], np.zeros(1, np.int64), np.asarray(box)[None], size)[0]
