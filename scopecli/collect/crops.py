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


def patch_windows(loc: np.ndarray, rf_size: int, rf_stride: int, rf_start: int, input_size: int) -> np.ndarray:
    """Vectorised patch_window: loc [..., 2] (y, x) -> boxes [..., 4] int32."""
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


def crop_patches(pictures: np.ndarray, which: np.ndarray, boxes: np.ndarray, size: int,
                 chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Batched crop + resize: pictures [T, H, W, 3] uint8, which [M] rows of pictures, boxes [M, 4] all of
    one side length -> [M, size, size, 3] uint8.

    Enlarging 2x or more uses nearest (pixels stay honest), otherwise antialiased bicubic; shrinking
    resizes each picture once and cuts the windows from it.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    m = len(boxes)
    out = np.empty((m, size, size, 3), dtype=np.uint8)
    if m == 0:
        return out
    side = int(boxes[0, 2] - boxes[0, 0])
    if not ((boxes[:, 2] - boxes[:, 0] == side) & (boxes[:, 3] - boxes[:, 1] == side)).all():
        raise ValueError("crop_patches needs square boxes of one size")
    h, w = pictures.shape[1:3]
    which = np.asarray(which, dtype=np.int64)
    if side > size:
        # downscale: resize each needed picture once, then cut size x size windows at scaled positions
        # (position rounding <= half an output pixel); far cheaper than resizing every big crop. Depends
        # only on the picture and the box, so shards and single runs give identical patches.
        f = size / side
        pics = torch.from_numpy(np.ascontiguousarray(pictures))
        used = np.unique(which)
        hs, ws = max(1, round(h * f)), max(1, round(w * f))
        small = torch.empty((len(used), hs, ws, 3), dtype=torch.uint8)
        per = max(1, chunk_bytes // (h * w * 3))
        for s0 in range(0, len(used), per):
            sel = torch.from_numpy(used[s0 : s0 + per])
            small[s0 : s0 + per] = F.interpolate(pics[sel].permute(0, 3, 1, 2), size=(hs, ws), mode="bicubic",
                                                 antialias=True, align_corners=False).permute(0, 2, 3, 1)
        row = np.searchsorted(used, which)
        ys = np.round(boxes[:, 1] * f).astype(np.int64)
        xs = np.round(boxes[:, 0] * f).astype(np.int64)
        small_np = small.numpy()
        for i, (t, y0, x0) in enumerate(zip(row.tolist(), ys.tolist(), xs.tolist())):
            out[i] = cut_box(small_np[t], (x0, y0, x0 + size, y0 + size))
        return out
    lo = int(max(0, -boxes[:, :2].min()))
    hi = int(max(0, boxes[:, 2].max() - w, boxes[:, 3].max() - h))
    pics = torch.from_numpy(np.ascontiguousarray(pictures))
    if lo or hi:
        padded = torch.full((pics.shape[0], h + lo + hi, w + lo + hi, 3), PAD_VALUE, dtype=torch.uint8)
        padded[:, lo : lo + h, lo : lo + w] = pics
        pics = padded
    step = max(1, chunk_bytes // (side * side * 3))
    nearest = size >= 2 * side
    for s0 in range(0, m, step):
        part = boxes[s0 : s0 + step]
        crops = torch.empty((len(part), side, side, 3), dtype=torch.uint8)
        for i, (t, (x0, y0)) in enumerate(zip(which[s0 : s0 + step].tolist(), (part[:, :2] + lo).tolist())):
            crops[i] = pics[t, y0 : y0 + side, x0 : x0 + side]
        if side != size:  # uint8 channels-last resize (fast path in torch)
            mode = "nearest-exact" if nearest else "bicubic"
            extra = {} if nearest else {"antialias": True, "align_corners": False}
            crops = F.interpolate(crops.permute(0, 3, 1, 2), size=(size, size), mode=mode, **extra).permute(0, 2, 3, 1)
        out[s0 : s0 + step] = crops.numpy()
    return out


def crop_patch(image: np.ndarray, box, size: int) -> np.ndarray:
    """Cut the box (padded) from one HxWx3 uint8 model input and resize it to size x size."""
    return crop_patches(image[None], np.zeros(1, np.int64), np.asarray(box)[None], size)[0]
