"""Everything igan prints for people goes to stderr through here; stdout carries only data.

Progress is one live line (phase, epoch, step, it/s, ETA, a bar and the latest values that fit) when
stderr is a terminal, and plain ``key=value`` log lines otherwise (CI, files), with no control characters. Messages follow
one shape: ``error: ...`` / ``warning: ...`` then ``hint: ...``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Mapping

from rich.console import Console

__all__ = ["stderr", "error", "warn", "info", "TrainProgress", "TaskBar"]

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def _plain() -> bool:
    return not stderr.is_terminal or bool(os.environ.get("NO_COLOR"))


def _live() -> bool:
    """Whether the live progress bar may draw. It redraws its line with ``\\r`` and cursor codes, so it
    needs stderr to be a real (not dumb) terminal: FORCE_COLOR or TTY_COMPATIBLE make rich treat a pipe as
    a terminal, which is fine for colours but would fill a log file with redraws."""
    if _plain():
        return False
    try:
        return bool(sys.stderr.isatty()) and not stderr.is_dumb_terminal
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _printable(text: str) -> str:
    """``text`` with control characters (escapes, carriage returns, newlines) replaced by spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def error(message: str, hint: str | None = None) -> None:
    from rich.markup import escape  # paths like runs/[exp] must print as they are

    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True) if not _plain() else print(
        f"error: {message}", file=sys.stderr)
    if hint:
        stderr.print(f"[cyan]hint:[/] {escape(hint)}", markup=True) if not _plain() else print(
            f"hint: {hint}", file=sys.stderr)


def warn(message: str, hint: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def info(message: str) -> None:
    print(message, file=sys.stderr)


class TaskBar:
    """A transient rich bar for work outside training (decoding a folder, Inception passes) when stderr
    is a live terminal; silent otherwise, where the caller's summary line says what was done. ``advance(n)``
    counts items done; calling it with ``(done, total)`` sets both (``total`` may be unknown at first)."""

    def __init__(self, description: str, total: int | None = None, enabled: bool = True) -> None:
        self.bar = None
        if enabled and _live():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=True)
            self.task = self.bar.add_task(description, total=total)

    def __enter__(self) -> "TaskBar":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(_item(k, v) for k, v in values.items())


def _item(key: str, value: float) -> str:
    return f"{key}={value:.4g}"


def _duration(seconds: float) -> str:
    """``34s``, ``12m05s``, ``3h07m``: short enough for a status line."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class TrainProgress:
    """Training progress on stderr.

    On a terminal, one live line that always shows the phase (what is being trained: ``train``,
    ``semi-supervised``, ``supervised-only baseline``), ``epoch e/E``, ``step s/S``, ``it/s`` and the
    ETA, then a bar and as many of the latest values (losses, epoch metrics) as fit the terminal's
    width; the values that do not fit are in ``metrics.jsonl`` (every one of them, at every logging
    point). Otherwise one plain line per logging point with every value and no control characters (no
    colours, no ``\\r`` redraws), e.g.
    ``train epoch 3/40 step 100/1200 41.2 it/s eta 26s D=1.21 G=0.83``."""

    def __init__(self, total: int, start: int = 0, description: str = "train", enabled: bool = True,
                 steps_per_epoch: int | None = None) -> None:
        self.total, self.start_step, self.enabled = total, start, enabled
        self.description = description
        self.steps_per_epoch = steps_per_epoch or total or 1
        self.step = start
        self.rate = 0.0
        self.values: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.live = None
        if _live() and enabled:
            from rich.live import Live

            self.live = Live(_Rendered(self), console=stderr, refresh_per_second=4, transient=False)

    def __enter__(self) -> "TrainProgress":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def fields(self) -> list[str]:
        """What is always shown: phase, epoch e/E, step s/S, it/s, ETA."""
        spe = self.steps_per_epoch
        epochs = max(1, math.ceil(self.total / spe))
        epoch = min(epochs, max(1, math.ceil(self.step / spe)))
        eta = (self.total - self.step) / self.rate if self.rate > 0 else float("nan")
        return [self.description, f"epoch {epoch}/{epochs}", f"step {self.step}/{self.total}",
                f"{self.rate:.1f} it/s", f"eta {_duration(eta)}"]

    def line(self) -> str:
        """The plain line: every field and every value."""
        return _printable(" ".join(self.fields() + ([_fmt(self.values)] if self.values else [])))

    def render(self, width: int):
        """The live line for a terminal ``width`` columns wide (a rich renderable of one line)."""
        from rich.cells import cell_len
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        fields = self.fields()
        phase, info_text = fields[0], " ".join(fields[1:])
        room = width - cell_len(info_text) - 1
        if cell_len(phase) > room:  # a very narrow terminal: the phase gives way first, then the rest
            phase = phase[:max(room - 1, 1)] + "…"
        room -= cell_len(phase)

        def fit(room: int) -> list[str]:  # whole values, in order, while they fit
            shown = []
            for key, value in self.values.items():
                item = _item(key, value)
                if cell_len(item) + 1 > room:
                    break
                shown.append(item)
                room -= cell_len(item) + 1
            return shown

        # the bar is the widest (20, 10 or none) that costs no value: numbers come before decoration
        most = len(fit(room))
        bar = next((w for w in (20, 10) if room >= w + 1 and len(fit(room - w - 1)) == most), 0)
        shown = fit(room - bar - 1 if bar else room)
        grid = Table.grid(padding=(0, 1))
        cells = [Text(phase, style="bold")]
        if bar:
            cells.append(ProgressBar(total=self.total, completed=self.step, width=bar))
        cells.append(Text(info_text))
        if shown:
            cells.append(Text(" ".join(shown)))
        for _ in cells:
            grid.add_column(no_wrap=True)
        grid.add_row(*cells)
        return grid

    def update(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.step = step
        self.rate = (step - self.start_step) / elapsed
        self.values = dict(values)
        if self.live is not None:
            self.live.refresh()
        else:
            info(self.line())


class _Rendered:
    """Renders the progress line for the console's current width (re-read at each refresh)."""

    def __init__(self, progress: TrainProgress) -> None:
        self.progress = progress

    def __rich_console__(self, console, options):
        yield self.progress.render(options.max_width)
