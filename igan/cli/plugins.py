"""``igan plugins``: the installed plugins, their versions, sources and hooks."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

__all__ = ["plugins", "register"]


def plugins(as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False) -> None:
    """List plugins: name, version, source, hooks implemented (and broken ones with their error).

    The table goes to stderr; stdout gets the names, one per line, when it is not a terminal.
    """
    from rich.table import Table

    from igan.console import stderr
    from igan.plugins import get_plugin_manager, plugin_infos

    from igan.cli.training import core_owned

    rows = plugin_infos(get_plugin_manager(reserved=core_owned(), strict=False))  # broken ones are listed
    if as_json:
        print(json.dumps([{"name": r.name, "version": r.version, "source": r.source, "module": r.module,
                           "hooks": r.hooks, "run_hooks": {cls: hooks for cls, hooks in r.run_hooks},
                           "affects_inference": r.affects_inference, "error": r.error} for r in rows], indent=2))
        return
    table = Table("name", "version", "source", "hooks")

    def short(hooks: list[str]) -> str:
        return ", ".join(h.removeprefix("igan_") for h in hooks)

    for r in rows:
        if r.error:
            table.add_row(r.name, r.version, r.source, f"[red]broken: {r.error}[/]")
            continue
        # the hooks of the objects the plugin registers per run (igan_configure) fire during the run
        per_run = "".join(f"\nper run ({cls}): {short(hooks)}" for cls, hooks in r.run_hooks)
        table.add_row(r.name, r.version, r.source, short(r.hooks) + per_run)
    stderr.print(table)
    if not _is_terminal(sys.stdout):  # the names are for a pipe; a terminal has just shown them in the table
        print("\n".join(r.name for r in rows))


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
