"""`scope layers` as a terminal table: every addressable layer with its units, layout and receptive field.

The dotted name is the one thing a user must copy, so it is never cut or wrapped: when the names leave
too little room for the other columns (ViT's and MaxViT's names are 50-75 characters, a terminal is
often 80), each layer takes two lines, its name alone, then the other columns beneath it.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

CAPTION = "RF: size/stride/start px; ~ measured from gradients; G: a global gate enters"
TYPE_MIN = 10  # the type column may shrink to this (with an ellipsis) before the layout goes to two lines


def field_text(info) -> str:
    """RF column: size/stride/start for traced fields, ~size/stride for measured ones (gradient support of
    the centre position; `?` until measured), `global` when every position sees the whole input."""
    lay = info.layout
    if lay.field == "global":
        return "global"
    if lay.field == "measured":
        return f"~{info.rf_size}/{info.rf_stride}" if info.measured else "? (on use)"
    return f"{info.rf_size}/{info.rf_stride}/{info.rf_start}"


def _cells(info) -> tuple[str, str, str, str, str, str]:
    rf = field_text(info) + (" G" if info.layout.global_context else "")
    return "*" if info.default else "", info.name, info.kind, str(info.channels), info.layout.describe(), rf


class LayersView:
    """The layer list, laid out for the console's width at print time (one row per layer when the names
    leave room for the other columns, else two lines per layer)."""

    def __init__(self, title: str, table):
        self.title = title
        self.rows = [_cells(info) for info in table]

    def widths(self) -> list[int]:
        heads = ("", "layer", "type", "units", "layout", "RF")
        return [max([len(h)] + [len(r[i]) for r in self.rows]) for i, h in enumerate(heads)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, type_width = options.max_width, self.widths()[2]
        unbounded = options.update(max_width=1_000_000)  # a measurement is clamped to the width it is given
        full = self.table(type_width)
        excess = Measurement.get(console, unbounded, full).maximum - width
        if excess <= 0:
            yield full
            return
        if type_width - excess >= TYPE_MIN:
            narrow = self.table(type_width - excess)
            if Measurement.get(console, unbounded, narrow).maximum <= width:
                yield narrow
                return
        yield self.stacked()

    def table(self, type_width: int) -> Table:
        """One row per layer; no cell wraps; type names longer than `type_width` end in an ellipsis."""
        out = Table(title=self.title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                    caption=CAPTION)
        out.add_column("", no_wrap=True)
        out.add_column("layer", no_wrap=True)
        out.add_column("type", no_wrap=True)
        out.add_column("units", justify="right", no_wrap=True)
        out.add_column("layout", no_wrap=True)
        out.add_column("RF", justify="right", no_wrap=True)
        for mark, name, kind, *rest in self.rows:
            kind = kind if len(kind) <= type_width else kind[: type_width - 1] + "…"
            out.add_row(mark, name, kind, *rest)
        return out

    def stacked(self) -> Group:
        """Name lines (whole, never wrapped), each followed by an indented line of the other columns."""
        w = self.widths()
        tw, uw, lw, rw = w[2], w[3], w[4], w[5]

        def details(kind, units, layout, rf) -> str:
            return f"    {kind:<{tw}}  {units:>{uw}}  {layout:<{lw}}  {rf:>{rw}}".rstrip()

        lines = [Text(self.title, justify="center", no_wrap=True, overflow="ignore"), Text(""),
                 Text("  layer", style="bold", no_wrap=True),
                 Text(details("type", "units", "layout", "RF"), style="bold", no_wrap=True)]
        lines.append(Text("─" * max(len(details(*("",) * 4)), 24), no_wrap=True, overflow="crop"))
        for mark, name, kind, units, layout, rf in self.rows:
            lines.append(Text(f"{mark or ' '} {name}", no_wrap=True, overflow="ignore"))
            lines.append(Text(details(kind, units, layout, rf)))
        lines.append(Text(CAPTION, style="dim italic"))
        return Group(*lines)


def layers_table(title: str, table) -> LayersView:
    """What `scope layers` prints (a rich renderable)."""
    return LayersView(title, table)
