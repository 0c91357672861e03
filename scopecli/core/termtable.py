"""Terminal tables whose names are never cut: `scope layers`, `scope info`, `scope query`.

Why: a dotted layer name is what a user copies into the next command, so it is never wrapped or
truncated, and headers keep their words. When the table does not fit the terminal, each row becomes a
name line followed by an indented `header value · header value` line instead.
"""

from __future__ import annotations

import shutil

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def table(title: str, columns: list[tuple[str, str]], rows: list[list], keep: tuple[str, ...] = ("layer",),
          caption: str | None = None, width: int | None = None):
    """columns: (header, justify); the `keep` columns lead each row and are never wrapped."""
    rows = [[str(x) for x in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, (h, _) in enumerate(columns)]
    width = width or shutil.get_terminal_size((100, 24)).columns
    out = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption=caption)
    for (header, justify), w in zip(columns, widths):
        out.add_column(header, justify=justify, no_wrap=True, min_width=w)
    for r in rows:
        out.add_row(*r)
    if _rendered_width(out) <= width and (caption is None or len(caption) <= width):
        return out
    lines = [Text(title, style="bold")]
    kept = [i for i, (h, _) in enumerate(columns) if h in keep]
    for r in rows:
        lines.append(Text(" ".join(r[i] for i in kept if r[i]), style="bold"))
        lines.append(Text("   " + " · ".join(f"{h} {r[i]}" for i, (h, _) in enumerate(columns) if i not in kept and r[i])))
    if caption:
        lines.append(Text(caption, style="dim"))
    return Group(*lines)


def _rendered_width(out: Table) -> int:
    """The width rich gives the table when nothing limits it (cell padding and column gaps included)."""
    console = Console(width=1_000_000)
    return Measurement.get(console, console.options, out).maximum
