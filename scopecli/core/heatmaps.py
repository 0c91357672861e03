"""Where in a dataset-example patch the unit fired: heatmap geometry and drawing, shared by cards and pages.

A stored heatmap holds the unit's activation at the grid positions around the winning one. Each
position stands for the centre of its receptive field in model-input pixels; the patch shows the
`shown` window of the input. So a cell maps to patch coordinates by that centre, and the heatmap covers
the patch area from its first cell's centre minus half a stride to its last cell's plus half a stride.
A unit that does not fire on the patch (every value <= 0, or all equal) gets no overlay: it is said,
not drawn as noise.
"""

from __future__ import annotations

import numpy as np

# a perceptual "inferno"-like ramp, dark to bright (anchors; linearly interpolated)
_RAMP = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                  (250, 193, 39), (252, 255, 164)], dtype=np.float64)


def fires(heat: np.ndarray | None, sign: float = 1.0) -> bool:
    """Whether a heatmap shows anything: some value of the example's sign (positive for top examples,
    negative for bottom ones), and not one constant."""
    if heat is None:
        return False
    h = sign * np.asarray(heat, np.float64)
    h = h[np.isfinite(h)]
    return bool(h.size > 0 and h.max() > 0 and h.max() > h.min())


def _centres(record, origin: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Input-pixel centres (ys, xs) of the heatmap's rows and columns."""
    lay = record.effective_layout
    stride = float(record.rf_stride)
    if lay.field == "global":  # every position sees everything: its centre is where its patch sits
        ys = (origin[0] + np.arange(size[0]) + 0.5) * stride
        xs = (origin[1] + np.arange(size[1]) + 0.5) * stride
    else:
        c0 = record.rf_start + record.rf_size / 2.0
        ys = c0 + (origin[0] + np.arange(size[0])) * stride
        xs = c0 + (origin[1] + np.arange(size[1])) * stride
    return ys, xs


def placement(example, record) -> tuple[float, float, float, float] | None:
    """(left, top, width, height) of the heatmap grid as fractions of the patch (may reach outside it),
    or None when the example has no heatmap or shown window."""
    if example.heatmap is None or example.shown is None or example.heat_origin is None:
        return None
    x0, y0, x1, y1 = example.shown
    side_x, side_y = max(x1 - x0, 1), max(y1 - y0, 1)
    ys, xs = _centres(record, example.heat_origin, example.heatmap.shape)
    half = record.rf_stride / 2.0
    left = (xs[0] - half - x0) / side_x
    top = (ys[0] - half - y0) / side_y
    return left, top, len(xs) * record.rf_stride / side_x, len(ys) * record.rf_stride / side_y


def peak(example, record) -> tuple[float, float] | None:
    """(x, y) of the winning position's centre as fractions of the patch."""
    if example.shown is None:
        return None
    x0, y0, x1, y1 = example.shown
    ys, xs = _centres(record, tuple(example.loc), (1, 1))
    return (xs[0] - x0) / max(x1 - x0, 1), (ys[0] - y0) / max(y1 - y0, 1)


def rgba(heat: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """uint8 [h, w, 4]: the heatmap's part of the example's sign as a colour ramp; the weakest fifth is
    transparent and opacity grows with the value, so the photo stays visible under it."""
    h = np.nan_to_num(sign * np.asarray(heat, np.float64), nan=0.0).clip(min=0)
    top = h.max()
    t = h / top if top > 0 else h
    pos = t * (len(_RAMP) - 1)
    i = np.clip(pos.astype(int), 0, len(_RAMP) - 2)
    f = (pos - i)[..., None]
    rgb = _RAMP[i] + f * (_RAMP[i + 1] - _RAMP[i])
    alpha = (((t - 0.2) / 0.8).clip(0, 1) * 170)[..., None]
    return np.concatenate([rgb, alpha], -1).round().astype(np.uint8)


def overlay(patch: np.ndarray, example, record, sign: float = 1.0) -> np.ndarray:
    """The patch with its heatmap blended in and a ring at the winning position (the patch unchanged when
    the unit does not fire there); sign -1 for bottom examples (where the unit is most negative)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.asarray(patch, np.uint8)).convert("RGBA")
    where = placement(example, record)
    if where is not None and fires(example.heatmap, sign):
        left, top, w, h = where
        pw, ph = img.size
        box = (round(left * pw), round(top * ph), round((left + w) * pw), round((top + h) * ph))
        layer = Image.fromarray(rgba(example.heatmap, sign), "RGBA").resize((max(box[2] - box[0], 1), max(box[3] - box[1], 1)),
                                                                      Image.Resampling.BILINEAR)
        canvas = Image.new("RGBA", img.size, (0, 0, 0, 0))
        canvas.paste(layer, box[:2])
        img = Image.alpha_composite(img, canvas)
    p = peak(example, record)
    if p is not None:
        d = ImageDraw.Draw(img)
        x, y = p[0] * img.size[0], p[1] * img.size[1]
        r = max(2.0, img.size[0] / 24)
        d.ellipse((x - r, y - r, x + r, y + r), outline=(0, 255, 255, 255), width=max(1, round(r / 3)))
    return np.asarray(img.convert("RGB"))
