"""PIL drawings for compare: the labelled CKA heatmap of `scope diff --png`.

Why PIL: matplotlib is not a dependency. Text uses PIL's default font so output is the same on
every machine.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scopecli.core.fileio import AtomicFile, check_output_file

# Anchor colours of the viridis colour map (perceptually uniform, readable in grey scale).
_VIRIDIS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37),
], dtype=np.float64)
NAN_COLOUR = (200, 200, 200)


def colour(value: float) -> tuple[int, int, int]:
    """Viridis colour of a value in [0, 1] (clipped); grey for NaN."""
    if value is None or not np.isfinite(value):
        return NAN_COLOUR
    t = float(np.clip(value, 0.0, 1.0)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    c = _VIRIDIS[i] + (t - i) * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    return tuple(int(round(v)) for v in c)  # type: ignore[return-value]


def font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


# The default font's space is 2 px wide at its size: words ran together ("stimulusshuffles"). Text is
# laid out word by word with this gap instead (same result on every machine, no font file needed).
WORD_GAP = 4


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text) -> str:
    """`text` with control characters (newlines, tabs, ...) as spaces: a name read from a stranger's file is
    drawn on one line, never measured as multi-line text (which PIL refuses)."""
    return _CONTROL.sub(" ", str(text))


def _words(text: str) -> list[str]:
    return one_line(text).split(" ")


def text_width(draw: ImageDraw.ImageDraw, text: str) -> int:
    """Advance width of `text` as `draw_text` lays it out."""
    words = _words(text)
    return int(sum(draw.textlength(w, font=font()) for w in words) + WORD_GAP * (len(words) - 1))


def text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    """(width, height) of `text` as `draw_text` draws it."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), one_line(text).replace(" ", ""), font=font())
    return max(text_width(draw, text), x1 - x0), y1 - y0


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill="black") -> None:
    """Draw one line of text in the default font, words WORD_GAP pixels apart."""
    x, y = xy
    for w in _words(text):
        if w:
            draw.text((x, y), w, fill=fill, font=font())
        x += draw.textlength(w, font=font()) + WORD_GAP


def _vertical_label(text: str, height: int) -> Image.Image:
    """Text rotated 90 degrees (reads bottom-to-top), right-aligned at the bottom of a strip."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    w, h = text_size(probe, text)
    img = Image.new("RGB", (max(w, 1) + 4, h + 6), "white")
    draw_text(ImageDraw.Draw(img), (2, 1), text)
    return img.rotate(90, expand=True)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def cka_panel(values: np.ndarray, floor: np.ndarray, rows: list[str], cols: list[str], title: str,
              cell: int) -> Image.Image:
    """One heatmap: cells coloured by value, the number written in each cell when it fits, a cross
    where the score does not beat its permutation floor, a white frame on each row's best cell."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_labels = [_short(r) for r in rows]
    col_labels = [_vertical_label(_short(c), cell) for c in cols]
    left = max(text_size(probe, s)[0] for s in row_labels) + 10
    top = max(im.height for im in col_labels) + 24
    width = left + cell * len(cols) + 10
    height = top + cell * len(rows) + 10
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    draw_text(d, (left, 4), title, fill="black")
    for j, lab in enumerate(col_labels):
        img.paste(lab, (left + j * cell + (cell - lab.width) // 2, top - lab.height - 2))
    for i, name in enumerate(row_labels):
        tw, th = text_size(d, name)
        draw_text(d, (left - tw - 6, top + i * cell + (cell - th) // 2 - 1), name, fill="black")
    best = [int(np.nanargmax(r)) if not np.isnan(r).all() else -1 for r in values]
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(values[i, j])
            x0, y0 = left + j * cell, top + i * cell
            c = colour(v)
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=c)
            lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
            ink = "black" if lum > 140 else "white"
            fl = float(floor[i, j]) if floor is not None else float("nan")
            if np.isfinite(v) and np.isfinite(fl) and v <= fl:
                d.line([x0 + 2, y0 + 2, x0 + cell - 3, y0 + cell - 3], fill=ink, width=1)
                d.line([x0 + 2, y0 + cell - 3, x0 + cell - 3, y0 + 2], fill=ink, width=1)
            elif cell >= 30 and np.isfinite(v):
                s = f"{v:.2f}"
                tw, th = text_size(d, s)
                draw_text(d, (x0 + (cell - tw) // 2, y0 + (cell - th) // 2 - 1), s, fill=ink)
            if j == best[i]:
                d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline="white", width=2)
                d.rectangle([x0 + 2, y0 + 2, x0 + cell - 3, y0 + cell - 3], outline="black", width=1)
    return img


def colour_bar(height: int) -> Image.Image:
    img = Image.new("RGB", (70, height), "white")
    d = ImageDraw.Draw(img)
    bar_top, bar_bottom = 20, height - 20
    for y in range(bar_top, bar_bottom):
        v = 1.0 - (y - bar_top) / max(1, bar_bottom - bar_top - 1)
        d.line([6, y, 22, y], fill=colour(v))
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bar_top + (1.0 - v) * (bar_bottom - bar_top - 1)
        draw_text(d, (26, y - 5), f"{v:.2f}", fill="black")
    return img


def cka_heatmap(res) -> Image.Image:
    """Linear and debiased CKA side by side for a DiffResult, with a header and a legend."""
    la, lb = res.layers_a, res.layers_b
    cell = int(np.clip(720 // max(len(la), len(lb), 1), 10, 48))
    a_name = res.model_a.get("name") or res.path_a
    b_name = res.model_b.get("name") or res.path_b
    p1 = cka_panel(res.cka_linear, res.floor_linear, la, lb, "linear CKA", cell)
    p2 = cka_panel(res.cka_debiased, res.floor_debiased, la, lb, "debiased CKA", cell)
    bar = colour_bar(p1.height)
    header = [
        f"scope diff   rows: A = {a_name} ({res.path_a})   columns: B = {b_name} ({res.path_b})",
        f"{res.n_cka} shared probe images; floor = max over {res.permutations} stimulus shuffles "
        f"(seed {res.seed}); X = not above floor; framed = best B layer per row",
    ]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    head_w = max(text_size(probe, s)[0] for s in header) + 20
    width = max(p1.width + p2.width + bar.width + 20, head_w)
    img = Image.new("RGB", (width, p1.height + 40), "white")
    d = ImageDraw.Draw(img)
    for k, s in enumerate(header):
        draw_text(d, (10, 6 + 14 * k), s, fill="black")
    img.paste(p1, (0, 40))
    img.paste(p2, (p1.width + 10, 40))
    img.paste(bar, (p1.width + p2.width + 20, 40))
    return img


def save_png(img: Image.Image, out, suffixes: tuple[str, ...] = ()) -> None:
    """Save a PNG atomically (`fileio.AtomicFile`), with one-line errors; `suffixes`: the names it accepts."""
    check_output_file(out, "out.png", suffixes)
    with AtomicFile(out) as target:
        img.save(target.tmp, format="PNG")
