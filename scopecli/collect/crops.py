"""Receptive-field patches: the part of a model input a unit saw at its winning position.

Why a fixed rule: viewers draw the box on the full image and compare patches across units, so the
window is always centred on the receptive field of the winning grid position, square, and never larger
than the model input (deep layers' fields exceed the image; then the patch is an input-sized window
centred on the winning location). Parts outside the image are padded with mid-gray, never stretched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 127


def patch_window(y: int, x: int, rf_size: int, rf_stride: int, rf_start: int, input_size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in model-input pixels of the patch for grid position (y, x); may extend outside."""
    side = max(1, min(int(rf_size), int(input_size)))
    off = (int(rf_size) - side) // 2
    x0 = rf_start + x * rf_stride + off
    y0 = rf_start + y * rf_stride + off
    return (x0, y0, x0 + side, y0 + side)


def patch_windows(loc: np.ndarray, rf_size: int, rf_stride: int, rf_start: int, input_size: int,
                  whole: bool = False) -> np.ndarray:
    """Vectorised patch_window: loc [..., 2] (y, x) -> boxes [..., 4] int32. whole=True (a global field:
    every position sees everything) gives the whole model input for every position."""
    if whole:
        return np.broadcast_to(np.array([0, 0, input_size, input_size], np.int32), loc.shape[:-1] + (4,)).copy()
    side = max(1, min(int(rf_size), int(input_size)))
    off = (int(rf_size) - side) // 2
    y0 = rf_start + loc[..., 0].astype(np.int64) * rf_stride + off
    x0 = rf_start + loc[..., 1].astype(np.int64) * rf_stride + off
    return np.stack([x0, y0, x0 + side, y0 + side], axis=-1).astype(np.int32)


def cut_box(image: np.ndarray, box) -> np.ndarray:
    """The box's pixels from an HxWx3 uint8 image, padded with PAD_VALUE where it leaves the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def _windows(pics: np.ndarray, which: np.ndarray, x0: np.ndarray, y0: np.ndarray, side: int) -> np.ndarray:
    """Gather side x side windows at (x0, y0) (may leave the picture: PAD_VALUE there) -> [M, side, side, 3]."""
    h, w = pics.shape[1:3]
    lo = int(max(0, -x0.min(), -y0.min()))
    hi = int(max(0, (x0 + side).max() - w, (y0 + side).max() - h))
    if lo or hi:
        padded = np.full((pics.shape[0], h + lo + hi, w + lo + hi, 3), PAD_VALUE, dtype=np.uint8)
        padded[:, lo : lo + h, lo : lo + w] = pics
        pics = padded
    out = np.empty((len(which), side, side, 3), dtype=np.uint8)
    for i, (t, y, x) in enumerate(zip(which.tolist(), (y0 + lo).tolist(), (x0 + lo).tolist())):
        out[i] = pics[t, y : y + side, x : x + side]  # row-contiguous copies: faster than fancy indexing
    return out


def crop_patches(pictures: np.ndarray, which: np.ndarray, boxes: np.ndarray, size: int,
                 chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Batched crop + resize: pictures [T, H, W, 3] uint8, which [M] rows of pictures, boxes [M, 4] all of
    one side length -> [M, size, size, 3] uint8.

    Enlarging 2x or more uses nearest (pixels stay honest), otherwise antialiased bicubic. Shrinking
    resizes each picture once and cuts the windows at scaled positions (rounding <= half an output
    pixel): far cheaper than resizing every big crop. Every patch depends only on its picture and box,
    so shards and single runs give identical patches.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    m = len(boxes)
    if m == 0:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    side = int(boxes[0, 2] - boxes[0, 0])
    if not ((boxes[:, 2] - boxes[:, 0] == side) & (boxes[:, 3] - boxes[:, 1] == side)).all():
        raise ValueError("crop_patches needs square boxes of one size")
    pictures = np.ascontiguousarray(pictures)
    h, w = pictures.shape[1:3]
    which = np.asarray(which, dtype=np.int64)
    if side > size:
        f = size / side
        used, row = np.unique(which, return_inverse=True)
        hs, ws = max(1, round(h * f)), max(1, round(w * f))
        small = np.empty((len(used), hs, ws, 3), dtype=np.uint8)
        per = max(1, chunk_bytes // (h * w * 3))
        pics = torch.from_numpy(pictures)
        for s0 in range(0, len(used), per):
            sel = torch.from_numpy(used[s0 : s0 + per])
            small[s0 : s0 + per] = F.interpolate(pics[sel].permute(0, 3, 1, 2), size=(hs, ws), mode="bicubic",
                                                 antialias=True, align_corners=False).permute(0, 2, 3, 1).numpy()
        ys = np.round(boxes[:, 1] * f).astype(np.int64)
        xs = np.round(boxes[:, 0] * f).astype(np.int64)
        return _windows(small, row.reshape(-1), xs, ys, size)
    out = np.empty((m, size, size, 3), dtype=np.uint8)
    step = max(1, chunk_bytes // (side * side * 3 * 2))
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
        x = torch.from_numpy(crops).permute(0, 3, 1, 2)  # uint8 channels-last: torch's fast path
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[sl] = x.permute(0, 2, 3, 1).numpy()
    return out


def crop_patch(image: np.ndarray, box, size: int) -> np.ndarray:
    """Cut the box (padded) from one HxWx3 uint8 model input and resize it to size x size."""
    return crop_patches(image[None], np.zeros(1, np.int64), np.asarray(box)[None], size)[0]
