"""Small inline SVG charts for unit pages: activation histogram, quantile strip, optimization trace.

Why inline SVG: no script, no network, no image files to keep in sync, crisp at any zoom; colours
come from the page's stylesheet classes. Every number drawn is also printed in the stats table.
"""

from __future__ import annotations

import math

import numpy as np

from scopecli.export.names import esc, fmt
from scopecli.core.sketch import NUM_BUCKETS, bucket_representatives

LOGLINEAR_KIND = "loglinear-float32-histogram"


def _finite(*xs) -> bool:
    return all(x is not None and math.isfinite(float(x)) for x in xs)


def rebin_sketch(hist_row: np.ndarray, attrs: dict, vmin: float, vmax: float, bins: int = 48) -> np.ndarray | None:
    """Counts of one unit's log-linear sketch histogram re-binned into `bins` equal bins over [min, max].

    Returns None for sketches this page cannot read (other kinds or sizes).
    """
    if attrs.get("kind") != LOGLINEAR_KIND or not _finite(vmin, vmax):
        return None
    hist_row = np.asarray(hist_row, dtype=np.int64).reshape(-1)
    if hist_row.shape[0] != NUM_BUCKETS or int(attrs.get("num_buckets", NUM_BUCKETS)) != NUM_BUCKETS:
        return None
    reps = _reps(bucket_representatives)
    values = reps.copy()
    values[0], values[-1] = vmin, vmax  # overflow buckets hold the exact extremes
    nz = np.nonzero(hist_row)[0]
    out = np.zeros(bins, dtype=np.float64)
    if nz.size == 0:
        return out
    span = vmax - vmin
    if span <= 0:
        out[bins // 2] = hist_row.sum()
        return out
    idx = np.clip(((np.clip(values[nz], vmin, vmax) - vmin) / span * bins).astype(np.int64), 0, bins - 1)
    np.add.at(out, idx, hist_row[nz])
    return out


_REPS_CACHE: list = []


def _reps(factory) -> np.ndarray:
    if not _REPS_CACHE:
        _REPS_CACHE.append(factory())
    return _REPS_CACHE[0]


def histogram_svg(counts: np.ndarray, vmin: float, vmax: float, markers=(), width: int = 420, height: int = 120) -> str:
    """Bars of log(1 + count) over [vmin, vmax], with labelled vertical markers [(value, label, css_class)]."""
    counts = np.asarray(counts, dtype=np.float64)
    nb = len(counts)
    left, right, top, bottom = 8, 8, 18, 22
    pw, ph = width - left - right, height - top - bottom
    peak = math.log1p(counts.max()) if nb and counts.max() > 0 else 1.0
    bw = pw / max(nb, 1)
    parts = [f'<svg class="chart hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="activation histogram">']
    parts.append(f'<title>activation histogram over all positions (bar height: log of count), '
                 f'{esc(fmt(vmin))} to {esc(fmt(vmax))}</title>')
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        h = max(1.0, ph * math.log1p(c) / peak)
        parts.append(f'<rect class="bar" x="{left + i * bw:.1f}" y="{top + ph - h:.1f}" width="{max(bw - 1, 0.6):.1f}" '
                     f'height="{h:.1f}"><title>{int(c)} positions near '
                     f'{esc(fmt(vmin + (i + 0.5) * (vmax - vmin) / nb))}</title></rect>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>')
    parts.append(f'<text class="tick" x="{left}" y="{height - 6}">{esc(fmt(vmin))}</text>')
    parts.append(f'<text class="tick end" x="{left + pw}" y="{height - 6}">{esc(fmt(vmax))}</text>')
    span = vmax - vmin if vmax > vmin else 1.0
    placed: list[float] = []
    for value, label, cls in markers:
        if not _finite(value):
            continue
        beyond = value > vmax
        x = left + pw * (min(max(value, vmin), vmax) - vmin) / span
        parts.append(f'<line class="mark {esc(cls)}" x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{top + ph}">'
                     f'<title>{esc(label)} = {esc(fmt(value))}</title></line>')
        lx = x
        while any(abs(lx - p) < 34 for p in placed):  # keep labels apart
            lx -= 36
        placed.append(lx)
        anchor = "end" if lx > left + pw - 30 else "start"
        text = label + (" →" if beyond else "")
        parts.append(f'<text class="mlabel {esc(cls)} {anchor}" x="{lx:.1f}" y="{top - 6}">{esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def quantile_strip_svg(stats: dict, width: int = 420, height: int = 46) -> str | None:
    """A number line from min to max with the mean ± std band and the stored quantiles as ticks."""
    vmin, vmax = stats.get("min"), stats.get("max")
    if not _finite(vmin, vmax):
        return None
    left, right = 8, 8
    pw = width - left - right
    span = vmax - vmin if vmax > vmin else 1.0

    def x(v: float) -> float:
        return left + pw * (min(max(v, vmin), vmax) - vmin) / span

    y = 16
    parts = [f'<svg class="chart strip" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="quantiles">',
             f'<line class="axis" x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}"/>']
    mean, std = stats.get("mean"), stats.get("std")
    if _finite(mean, std):
        x0, x1 = x(mean - std), x(mean + std)
        parts.append(f'<rect class="band" x="{x0:.1f}" y="{y - 6}" width="{max(x1 - x0, 1):.1f}" height="12">'
                     f'<title>mean ± std: {esc(fmt(mean))} ± {esc(fmt(std))}</title></rect>')
        parts.append(f'<circle class="dot" cx="{x(mean):.1f}" cy="{y}" r="3"><title>mean {esc(fmt(mean))}</title></circle>')
    for key in sorted(k for k in stats if k.startswith("p")):
        v = stats[key]
        if _finite(v):
            parts.append(f'<line class="qtick" x1="{x(v):.1f}" y1="{y - 8}" x2="{x(v):.1f}" y2="{y + 8}">'
                         f'<title>{esc(key)} = {esc(fmt(v))}</title></line>')
    parts.append(f'<text class="tick" x="{left}" y="{height - 6}">min {esc(fmt(vmin))}</text>')
    parts.append(f'<text class="tick end" x="{left + pw}" y="{height - 6}">max {esc(fmt(vmax))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def trace_svg(trace: np.ndarray, width: int = 120, height: int = 26) -> str | None:
    """Sparkline of the objective during optimization (one value every 32 steps)."""
    t = np.asarray(trace, dtype=np.float64).reshape(-1)
    t = t[np.isfinite(t)]
    if t.size < 2:
        return None
    lo, hi = float(t.min()), float(t.max())
    span = hi - lo if hi > lo else 1.0
    pts = " ".join(
        f"{2 + (width - 4) * i / (t.size - 1):.1f},{height - 3 - (height - 6) * (v - lo) / span:.1f}"
        for i, v in enumerate(t)
    )
    return (f'<svg class="chart trace" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="optimization trace"><title>objective during optimization: {esc(fmt(t[0]))} → '
            f'{esc(fmt(t[-1]))}</title><polyline points="{pts}"/></svg>')
