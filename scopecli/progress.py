"""One progress bar style for all long work: rich, on stderr, with rate and ETA; silent when quiet."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress = progress
        self._task = task

    def advance(self, n: float = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)


@contextlib.contextmanager
def progress(total: float, description: str, quiet: bool = False, unit: str = "it"):
    """Yield an object with `.advance(n)`; shows a bar with rate and ETA on stderr unless quiet."""
    if quiet:
        yield _Bar(None, None)
        return
    console = Console(file=sys.stderr)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")
        handle = _Bar(bar, task)

        def advance(n: float = 1, **fields):
            bar.update(task, advance=n, **fields)
            t = bar.tasks[0]
            if t.speed:
                bar.update(task, rate=f"{t.speed:.2f} {unit}/s")

        handle.advance = advance  # type: ignore[method-assign]
        yield handle
