"""One progress display for all long work, on stderr: a bar with counts, rate and ETA; silent when quiet.

Why it draws its own line: the numbers are what a user reads (how far, how fast, how long still), so
they must never be cut. In a terminal the bar takes whatever width the numbers leave (none on a very
narrow one); without a terminal (a CI log, `| tee`) there is no bar at all, only plain lines at most
every 10 % or 30 s, and a last one at the end.

Items need not cost the same (a render unit of a deep layer costs several of an early one): after
`set_work(total)`, `advance(n, work=w)` counts n items but the ETA follows the work done, so the bar's
ETA agrees with an up-front estimate made in the same work units (e.g. predicted seconds).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

from rich.console import Console
from rich.progress import Progress, ProgressColumn
from rich.text import Text

PLAIN_EVERY_S = 30.0
PLAIN_EVERY_FRACTION = 0.1


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _count(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:.1f}"


class Work:
    """Weighted progress for the ETA: total work, work done, and the time spent on it (since `set_work`)."""

    def __init__(self, total: float, clock=time.monotonic):
        self.total, self.done, self.clock, self.t0 = float(total), 0.0, clock, clock()

    def eta(self) -> float | None:
        spent = self.clock() - self.t0
        if self.done <= 0 or spent <= 0:
            return None
        return max(0.0, self.total - self.done) * spent / self.done


def numbers_text(done: float, total: float, elapsed: float, unit: str, work: Work | None = None) -> str:
    """`done/total pct% rate unit/s ETA h:mm:ss` (the numbers a user reads); the ETA from `work` if given."""
    pct = 100.0 * done / total if total else 100.0
    rate = done / elapsed if elapsed > 0 and done > 0 else None
    eta = (total - done) / rate if rate else None
    if work is not None:
        eta = work.eta()
    rate_text = f"{rate:.2f} {unit}/s" if rate else f"- {unit}/s"
    return f"{_count(done)}/{_count(total)} {pct:3.0f}% {rate_text} ETA {_clock(eta)}"


class _Line(ProgressColumn):
    """The whole line as one column: the numbers first in priority, the bar in what width is left."""

    def __init__(self, unit: str, console: Console):
        super().__init__()
        self.unit, self.console = unit, console

    def render(self, task) -> Text:
        total = task.total or 0
        name = task.description
        numbers = numbers_text(task.completed, total, task.elapsed or 0.0, self.unit, task.fields.get("work"))
        room = self.console.width - len(name) - len(numbers) - 3
        if room < 6:
            return Text.assemble((name, "bold"), " ", numbers)
        width = min(40, room)
        filled = int(round(width * (task.completed / total if total else 1.0)))
        return Text.assemble((name, "bold"), " ", ("━" * filled, "magenta"), ("━" * (width - filled), "grey37"),
                             " ", numbers)


class _Handle:
    """What `progress` yields: `.advance(n, work=w)`, `.set_work(total)` and `.describe(text)`."""

    work: Work | None = None

    def set_work(self, total: float) -> None:
        """From now on the ETA follows `work=` given to advance (total: the work still to do)."""
        self.work = Work(total)

    def _add_work(self, fields) -> None:
        if self.work is not None and "work" in fields:
            self.work.done += float(fields["work"])

    def advance(self, n: float = 1, **fields) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class _RichHandle(_Handle):
    def __init__(self, bar: Progress, task):
        self._bar, self._task = bar, task

    def set_work(self, total: float) -> None:
        super().set_work(total)
        self._bar.update(self._task, work=self.work)

    def advance(self, n: float = 1, **fields) -> None:
        self._add_work(fields)
        self._bar.update(self._task, advance=n)

    def describe(self, text: str) -> None:
        self._bar.update(self._task, description=text)


class _PlainHandle(_Handle):
    def __init__(self, total: float, description: str, unit: str, stream):
        self.total, self.description, self.unit, self.stream = total, description, unit, stream
        self.done = 0.0
        self.t0 = self._last_t = time.monotonic()
        self._last_fraction = -1.0

    def _say(self) -> None:
        numbers = numbers_text(self.done, self.total, time.monotonic() - self.t0, self.unit, self.work)
        self.stream.write(f"{self.description} {numbers}\n")
        self.stream.flush()
        self._last_t = time.monotonic()
        self._last_fraction = self.done / self.total if self.total else 1.0

    def advance(self, n: float = 1, **fields) -> None:
        self._add_work(fields)
        self.done += n
        fraction = self.done / self.total if self.total else 1.0
        if fraction - self._last_fraction >= PLAIN_EVERY_FRACTION or time.monotonic() - self._last_t >= PLAIN_EVERY_S:
            self._say()

    def describe(self, text: str) -> None:
        self.description = text

    def finish(self) -> None:
        if self._last_fraction < (self.done / self.total if self.total else 1.0):
            self._say()


@contextlib.contextmanager
def progress(total: float, description: str, quiet: bool = False, unit: str = "it"):
    """Yield an object with `.advance(n)`; shows progress on stderr unless quiet."""
    if quiet:
        yield _Handle()
        return
    console = Console(file=sys.stderr)
    if not sys.stderr.isatty() and not console.is_jupyter:  # in Jupyter, rich draws a live bar in the cell
        handle = _PlainHandle(total, description, unit, sys.stderr)
        yield handle
        handle.finish()
        return
    with Progress(_Line(unit, console), console=console, transient=False) as bar:
        yield _RichHandle(bar, bar.add_task(description, total=total))
