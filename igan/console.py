"""Everything igan prints for people goes to stderr through here; stdout carries only data.

Progress is a rich bar (step/total, it/s, ETA, latest losses and metric) when stderr is a terminal,
and plain ``key=value`` log lines otherwise (CI, files), with no control characters. Messages follow
one shape: ``error: ...`` / ``warning: ...`` then ``hint: ...``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["stderr", "error", "warn", "info", "TrainProgress"]

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


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


class TrainProgress:
    """A rich progress bar on a terminal; otherwise one plain line per logging point with no control
    characters (no colours, no ``\\r`` redraws), e.g.
    ``step 100/1500 41.2 it/s eta 34s D=1.21 G=0.83 test_error=0.052``."""

    def __init__(self, total: int, start: int = 0, description: str = "train", enabled: bool = True) -> None:
        self.total, self.start_step, self.enabled = total, start, enabled
        self.t0 = time.perf_counter()
        self.rich = None if not _live() or not enabled else Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=stderr, transient=False)
        if self.rich is not None:
            self.task = self.rich.add_task(description, total=total, completed=start, rate="", stats="")

    def __enter__(self) -> "TrainProgress":
        if self.rich is not None:
            self.rich.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.rich is not None:
            self.rich.__exit__(*exc)

    def update(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (step - self.start_step) / elapsed
        if self.rich is not None:
            self.rich.update(self.task, completed=step, rate=f"{rate:.1f} it/s", stats=_fmt(values))
        else:
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            info(_printable(f"step {step}/{self.total} {rate:.1f} it/s eta {eta:.0f}s {_fmt(values)}"))
