"""What every command module shares: the plugin-manager factory, the Ctrl-C error and the command
classes that render help.

Imports no command module (nothing in ``igan.cli`` below the app does).
"""

from __future__ import annotations

from typing import Callable, Mapping

from typer.core import TyperArgument, TyperCommand, TyperGroup

from igan.errors import IganError

__all__ = ["PluginManagers", "Interrupted", "TerminatedError", "Command", "Group"]


class Interrupted(IganError):
    """Ctrl-C during a command (the run saved a checkpoint first)."""

    exit_code = 130


class TerminatedError(IganError):
    """SIGTERM during a training command (the run saved a checkpoint first)."""

    exit_code = 143


class PluginManagers:
    """Makes a fresh plugin manager per run (``--seeds K`` trains K runs, each with its own state).
    ``reserved()`` gives the option names and flags that are igan's own (``igan.cli.training.core_owned``),
    which no plugin may declare."""

    def __init__(self, disable: list[str], reserved: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.disable = disable
        self.reserved = reserved or dict

    def new(self, strict: bool = True):
        """A plugin manager for a run (``strict``: refuse plugins whose options clash) or, with
        ``strict=False``, for the help and for listing plugins, which must work with a broken one."""
        from igan.plugins import get_plugin_manager

        return get_plugin_manager(disable=self.disable, reserved=self.reserved(), strict=strict)


def _flags_take_no_value(params) -> None:
    """A flag (``--json``, ``-h``) takes no value, so its help row shows none: typer would print
    ``<bool>``, as if ``--json true`` were expected."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _usage_name(param) -> str:
    """An argument in the usage line as CLIs write it: ``CHECKPOINT``, ``[CHECKPOINT]`` when optional,
    ``RUN_DIR...`` for several (typer would write ``{checkpoint}``)."""
    name = param.metavar or param.name.upper()
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name if param.required else f"[{name}]"


class Command(TyperCommand):
    """Every igan command (plugins' too): typer's, with flags shown without a value and arguments
    named in capitals in the usage line."""

    def format_help(self, ctx, formatter) -> None:
        _flags_take_no_value(self.get_params(ctx))
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(_usage_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(TyperGroup):
    """The ``igan`` group: typer's, with flags shown without a value."""

    def format_help(self, ctx, formatter) -> None:
        _flags_take_no_value(self.get_params(ctx))
        super().format_help(ctx, formatter)
