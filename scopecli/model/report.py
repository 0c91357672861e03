"""`scope layers` as a terminal table: every addressable layer with its units, layout and receptive field.

The dotted name is the one thing a user must copy, so it is never cut or wrapped: the other columns
give way (fold) on narrow terminals.
"""

from __future__ import annotations

from rich.table import Table

from scopecli.core.termtable import table


def field_text(info) -> str:
    """RF column: size/stride/start for traced fields, ~size/stride for measured ones (gradient support of
    the centre position; `?` until measured), `global` when every position sees the whole input."""
    lay = info.layout
    if lay.field == "global":
        return "global"
    if lay.field == "measured":
        return f"~{info.rf_size}/{info.rf_stride}" if info.measured else "? (on use)"
    return f"{info.rf_size}/{info.rf_stride}/{info.rf_start}"


def layers_table(title: str, infos) -> Table:
    rows = [["*" if i.default else "", i.name, i.kind, i.channels, i.layout.describe(),
             field_text(i) + (" G" if i.layout.global_context else "")] for i in infos]
    cols = [("", "left"), ("layer", "left"), ("type", "left"), ("units", "right"), ("layout", "left"), ("RF", "right")]
    return table(title, cols, rows, keep=("", "layer"),
                 caption="RF: size/stride/start px; ~ measured from gradients; G: a global gate enters")
