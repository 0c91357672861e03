"""Human-readable views (rich) of artifact summaries for `scope info`, `validate` and `pack`."""

from __future__ import annotations

from rich.console import Group
from scopecli.core.termtable import table
from rich.text import Text


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def info_report(info: dict) -> Group:
    """Header lines (file, model, dataset, runs) and a per-layer table of what is stored."""
    m = info["model"]
    lines = [
        Text.assemble(("file  ", "bold"), f"{info['path']}  ({human_bytes(info['size_bytes'])}, format "
                      f"{info['format_version']}, written by {info['writer']}, modified {info['modified']})"),
        Text.assemble(("model ", "bold"), f"{m.get('spec', '?')}  arch {m.get('architecture', '?')}  weights "
                      f"{m.get('weights', '?')}  fingerprint {str(m.get('fingerprint', ''))[:16]}…"),
    ]
    ds = info["dataset"]
    if ds:
        lines.append(Text.assemble(("data  ", "bold"), f"{ds['count']} images, {ds['classes']} classes, "
                                   f"{ds['skipped']} skipped, fingerprint {ds['fingerprint'][:16]}…"))
    else:
        lines.append(Text.assemble(("data  ", "bold"), "no dataset collected"))
    lines.append(Text.assemble(("runs  ", "bold"), f"{info['runs']}: {', '.join(str(c) for c in info['commands'])}"))
    rows = [[L["name"], L["units"], "x".join(str(x) for x in L["shape"]), f"{L['rf_size']}/{L['rf_stride']}",
             L["rendered"], L["collected"], L["stats"], L["probe_images"]] for L in info["layers"]]
    cols = [("layer", "left"), ("units", "right"), ("CxHxW", "right"), ("RF", "right"), ("rendered", "right"),
            ("collected", "right"), ("stats", "right"), ("probe imgs", "right")]
    t = table(f"{len(info['layers'])} layers", cols, rows)
    return Group(*lines, t)
