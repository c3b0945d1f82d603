"""Command-line options contributed by plugins through ``igan_addoption``.

A plugin declares an option once (name, type, default, help); the CLI turns every declaration into a
typer option on the commands it applies to, grouped in help panels: built-in plugins in "Techniques"
(or the panel they name), each third-party plugin in a panel titled with its name. Only typer's public
API is used (``typer.Option`` inside ``Annotated`` and a synthesised ``__signature__``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import typer

__all__ = ["OptionSpec", "OptionParser"]

TECHNIQUES_PANEL = "Techniques"


@dataclass
class OptionSpec:
    """One option. ``name`` is the key in ``config.options``; ``flag`` defaults to ``--name`` with
    underscores as dashes; a bool option may give ``--x/--no-x``."""

    name: str
    type: Any
    default: Any
    help: str
    flag: str | None = None
    panel: str | None = None
    commands: tuple[str, ...] = ("train", "semisup")
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    run_only: bool = False  # logging-style option: does not change what is trained or saved
    plugin: str = ""  # filled in by the parser: who declared it
    builtin: bool = True
    help_for: dict[str, str] = field(default_factory=dict)  # the help of one command, where it differs

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def resolved_panel(self) -> str:
        if self.panel:
            return self.panel
        return TECHNIQUES_PANEL if self.builtin else f"Plugin: {self.plugin}"

    def typer_parameter(self, command: str | None = None) -> inspect.Parameter:
        """The typer option of ``command`` (its own help text when ``help_for`` has one)."""
        from rich.markup import escape  # help is shown through rich: keep "[...]" literal

        kwargs: dict[str, Any] = {"help": escape(self.help_for.get(command, self.help)),
                                  "rich_help_panel": self.resolved_panel(),
                                  "show_default": self.default is not None and self.type is not bool}
        if self.min is not None:
            kwargs["min"] = self.min
        if self.max is not None:
            kwargs["max"] = self.max
        # choices: typer lists them in the help (<l2|l1>) and refuses others with a usage error
        value_type: Any = Literal[self.choices] if self.choices else self.type
        annotation: Any = value_type if self.default is not None else value_type | None
        opt = typer.Option(self.cli_flag, **kwargs)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default,
                                 annotation=Annotated[annotation, opt])


@dataclass
class OptionParser:
    """What ``igan_addoption`` receives. Call ``parser.add(...)`` to declare an option."""

    options: dict[str, OptionSpec] = field(default_factory=dict)
    _plugin: str = ""
    _builtin: bool = True

    def add(self, name: str, type: Any = bool, default: Any = None, *, help: str, flag: str | None = None,
            panel: str | None = None, commands: tuple[str, ...] = ("train", "semisup"),
            min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] | None = None, run_only: bool = False,
            help_for: dict[str, str] | None = None) -> None:
        """Declare an option. ``type`` is bool (a bare flag), int, float, str or a path type.

        ``run_only=True`` marks an option that does not affect the models or the trained state (e.g. a
        logger): it may differ when resuming, and it is reset to its default when a checkpoint is loaded
        for ``sample``/``evaluate``. ``help_for`` gives the help of one command where it differs
        (``{"semisup": "..."}``), so no command's help speaks of another."""
        if name in self.options:
            other = self.options[name].plugin
            raise ValueError(f"option {name!r} of plugin {self._plugin!r} is already declared by {other!r}")
        if type is bool and default is None and not (flag and "/" in flag):
            default = False  # a plain flag is off by default; "--x/--no-x" keeps None as "not given"
        self.options[name] = OptionSpec(name, type, default, help, flag, panel, tuple(commands),
                                        min, max, tuple(choices) if choices else None, run_only, self._plugin,
                                        self._builtin, dict(help_for or {}))

    def for_command(self, command: str) -> list[OptionSpec]:
        return [o for o in self.options.values() if command in o.commands]

    def defaults(self, command: str | None = None) -> dict[str, Any]:
        return {o.name: o.default for o in self.options.values() if command is None or command in o.commands}

    def validate_choices(self, values: dict[str, Any]) -> None:
        from igan.errors import UsageError

        for o in self.options.values():
            v = values.get(o.name)
            if o.choices and v is not None and v not in o.choices:
                raise UsageError(f"{o.cli_flag} must be one of {', '.join(o.choices)}, got {v!r}",
                                 hint=f"for example {o.cli_flag} {o.choices[0]}")


def collect_options(pm) -> OptionParser:
    """Ask every plugin for its options, remembering which plugin declared each one."""
    parser = OptionParser()
    infos = getattr(pm, "igan_infos", {})
    for impl in reversed(pm.hook.igan_addoption.get_hookimpls()):  # registration order
        info = infos.get(impl.plugin_name)
        parser._plugin = impl.plugin_name
        parser._builtin = info is None or info.builtin
        impl.function(parser=parser)
    return parser
