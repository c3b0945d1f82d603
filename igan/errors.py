"""The two errors igan reports to users: one line of what went wrong, one line of what to do.

``IganError`` is a runtime failure (exit code 1); ``UsageError`` is a bad command line or an
impossible combination of options (exit code 2). The CLI prints either as ``error: ...`` and
``hint: ...`` on stderr, with a traceback only when ``IGAN_DEBUG=1``.
"""

from __future__ import annotations

__all__ = ["IganError", "UsageError", "Terminated"]


class IganError(Exception):
    """A runtime error with a hint for the user (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(IganError):
    """A bad option value or an impossible combination of options (exit code 2)."""

    exit_code = 2


class Terminated(Exception):
    """SIGTERM arrived: the training loop saves a checkpoint and the CLI exits with 143. (Defined here, not
    in ``igan.train``, so the CLI's last-resort handler can recognise it without importing anything.)"""


def value_check_message(text: str) -> str:
    """A typer value check's message without the ``Value error, `` that pydantic puts before it
    (``'l3' is not one of 'l2', 'l1'``), for the command line and ``--config`` files alike."""
    import re

    return re.sub(r"(?i)\bvalue error, ", "", text)
