"""`scope layers` as a terminal table: every addressable layer with its units, layout and receptive field.

The dotted name is the one thing a user must copy, so it is never cut or wrapped: the other columns
give way (fold) on narrow terminals.
"""

from __future__ import annotations

from rich import box
from rich.table import Table


def field_text(info) -> str:
    """RF column: size/stride/start for traced fields, ~size/stride for measured ones (gradient support of
    the centre position; `?` until measured), `global` when every position sees the whole input."""
    lay = info.layout
    if lay.field == "global":
        return "global"
    if lay.field == "measured":
        return f"~{info.rf_size}/{info.rf_stride}" if info.measured else "? (on use)"
    return f"{info.rf_size}/{info.rf_stride}/{info.rf_start}"


def layers_table(title: str, table) -> Table:
    out = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False,
                caption="RF: size/stride/start px; ~ measured from gradients; G: a global gate also enters")
    width = max((len(i.name) for i in table), default=5)
    out.add_column("", no_wrap=True, width=1)
    out.add_column("layer", no_wrap=True, min_width=width)
    out.add_column("type", overflow="fold")
    out.add_column("units", justify="right", overflow="fold", min_width=5)
    out.add_column("layout", overflow="fold")
    out.add_column("RF", justify="right", overflow="fold", min_width=6)
    for info in table:
        rf = field_text(info) + (" G" if info.layout.global_context else "")
        out.add_row("*" if info.default else "", info.name, info.kind, str(info.channels), info.layout.describe(), rf)
    return out
