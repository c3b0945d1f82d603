"""What every command module shares: the plugin-manager factory and the Ctrl-C error.

Imports no command module (nothing in ``igan.cli`` below the app does).
"""

from __future__ import annotations

from igan.errors import IganError

__all__ = ["PluginManagers", "Interrupted"]


class Interrupted(IganError):
    """Ctrl-C during a command (the run saved a checkpoint first)."""

    exit_code = 130


class PluginManagers:
    """Makes a fresh plugin manager per run (``--seeds K`` trains K runs, each with its own state)."""

    def __init__(self, disable: list[str]) -> None:
        self.disable = disable

    def new(self):
        from igan.plugins import get_plugin_manager

        return get_plugin_manager(disable=self.disable)
