"""The paper's techniques as built-in plugins, one module each, registered through the ``igan``
entry-point group exactly like third-party plugins (see pyproject.toml); beside them, two built-in
plugins that only watch a run: ``tensorboard`` (``--tensorboard``) and ``evaluation`` (``--eval-every``)."""

from __future__ import annotations

from typing import Any

from igan.config import RunConfig
from igan.errors import UsageError


def require_enabled(config: RunConfig, technique: str, flag: str, **defaults: Any) -> None:
    """Refuse options of a technique that is not switched on (a usage error naming both flags): those
    typed explicitly (``config.is_given``), even at their default value, and those that differ from it."""
    if config.opt(technique):
        return
    given = [name for name, default in defaults.items()
             if config.is_given(name) or config.opt(name, default) != default]
    if given:
        shown = ", ".join("--" + g.replace("_", "-") for g in given)
        raise UsageError(f"{shown} given without {flag}", hint=f"add {flag}, or drop {shown}")
