"""Telling the user's Ctrl-C from a ``KeyboardInterrupt`` that code raised by itself.

igan's SIGINT handlers (``igan.cli.main``'s and the training loop's) count each signal here. A
``KeyboardInterrupt`` that escapes a plugin's import or hook while no SIGINT arrived was raised by the
plugin, and igan reports it as a broken plugin instead of as an interrupt (which would exit quietly or
claim that a checkpoint was saved).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["count", "note", "install", "restore"]

_count = 0


def count() -> int:
    """SIGINTs received so far by igan's handlers."""
    return _count


def note() -> None:
    global _count
    _count += 1


def _raise_interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001
    note()
    raise KeyboardInterrupt


def install() -> Any:
    """Count SIGINTs, otherwise behaving as Python's default handler; returns the previous handler
    (None outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    return previous


def restore(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous)
