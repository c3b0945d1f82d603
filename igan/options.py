"""Command-line options contributed by plugins through ``igan_addoption``.

A plugin declares an option once (name, type, default, help); the CLI turns every declaration into a
typer option on the commands it applies to, grouped in help panels: built-in plugins in "Techniques"
(or the panel they name), each third-party plugin in a panel titled with its name. Only typer's public
API is used (``typer.Option`` inside ``Annotated`` and a synthesised ``__signature__``).

Option names and flags are owned: igan's own (``--steps``, ``--out``, ...; passed in as ``reserved``)
and then each plugin's, in registration order. A plugin that declares a name or a flag someone else owns
(a second ``fm``, or ``--steps``) gets none of its options: it is marked broken with a message naming
both owners (``igan plugins`` lists it; ``igan.plugins.get_plugin_manager`` refuses to start a run with
it). A plugin whose ``igan_addoption`` raises is marked broken the same way.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

import typer

__all__ = ["OptionSpec", "OptionParser", "OptionClash", "collect_options", "flags_of"]

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

    @property
    def flags(self) -> list[str]:
        """Every flag the option answers to (both halves of ``--x/--no-x``)."""
        return flags_of(self.cli_flag)

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


def flags_of(declaration: str) -> list[str]:
    """``"--x/--no-x"`` -> ``["--x", "--no-x"]``; ``"--x"`` -> ``["--x"]``."""
    return [part.strip() for part in declaration.split("/") if part.strip()]


class OptionClash(ValueError):
    """A plugin declared an option name or a flag that another plugin (or igan itself) owns."""


def _owner_text(owner: str) -> str:
    return "igan itself" if owner == "igan" else f"plugin {owner!r}"


@dataclass
class OptionParser:
    """What ``igan_addoption`` receives. Call ``parser.add(...)`` to declare an option."""

    options: dict[str, OptionSpec] = field(default_factory=dict)
    # option name or flag -> the plugin that owns it ("igan" for the core's own names and flags)
    owners: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # plugin -> why its options were refused
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
        if type is bool and default is None and not (flag and "/" in flag):
            default = False  # a plain flag is off by default; "--x/--no-x" keeps None as "not given"
        spec = OptionSpec(name, type, default, help, flag, panel, tuple(commands),
                          min, max, tuple(choices) if choices else None, run_only, self._plugin, self._builtin,
                          dict(help_for or {}))
        owner = self.owners.get(name)
        if owner is not None:
            raise OptionClash(f"plugin {self._plugin!r} declares the option {name!r}, which belongs to "
                              f"{_owner_text(owner)}")
        for f in spec.flags:
            owner = self.owners.get(f)
            if owner is not None:
                raise OptionClash(f"plugin {self._plugin!r} declares the flag {f}, which belongs to "
                                  f"{_owner_text(owner)}")
        self.options[name] = spec
        self.owners[name] = self._plugin
        self.owners.update({f: self._plugin for f in spec.flags})

    def for_command(self, command: str) -> list[OptionSpec]:
        return [o for o in self.options.values() if command in o.commands]

    def defaults(self, command: str | None = None) -> dict[str, Any]:
        return {o.name: o.default for o in self.options.values() if command is None or command in o.commands}

    def validate_choices(self, values: dict[str, Any]) -> None:
        """Usage errors for command-line values typer does not check: choices and finite numbers."""
        from igan.errors import UsageError

        for o in self.options.values():
            problem = o_problem(o, values.get(o.name))
            if problem:
                raise UsageError(f"{o.cli_flag} {problem}",
                                 hint=f"for example {o.cli_flag} {o.choices[0]}" if o.choices else
                                 f"give {o.cli_flag} a finite number ({o.help})")

    def value_problems(self, values: dict[str, Any]) -> list[tuple[str, str]]:
        """``(name, what is wrong)`` for values that do not fit their option's declaration (type, choices,
        range, finite): what a configuration read from a file is checked against."""
        problems = []
        for name, value in values.items():
            spec = self.options.get(name)
            if spec is None or value is None:
                continue
            kind = spec.type if spec.type in (bool, int, float, str) else str  # paths are stored as strings
            ok = (isinstance(value, bool) if kind is bool else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                  isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, str))
            if not ok:
                problems.append((name, f"must be of type {kind.__name__}, got {value!r}"))
                continue
            problem = o_problem(spec, value)
            if problem is None and kind in (int, float):
                if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                    low = spec.min if spec.min is not None else "-inf"
                    high = spec.max if spec.max is not None else "inf"
                    problem = f"must be in [{low}, {high}], got {value!r}"
            if problem:
                problems.append((name, problem))
        return problems


def o_problem(o: OptionSpec, value: Any) -> str | None:
    """What is wrong with ``value`` for option ``o`` beyond its type: not a choice, not finite."""
    if value is None:
        return None
    if o.choices and value not in o.choices:
        return f"must be one of {', '.join(o.choices)}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return None


def collect_options(pm, reserved: Mapping[str, str] | None = None) -> OptionParser:
    """Ask every plugin for its options, remembering which plugin declared each one. ``reserved``: names
    and flags that are already owned (the CLI passes its own, owner "igan"). A plugin whose declarations
    clash, or whose ``igan_addoption`` fails, keeps none of them and is listed in ``parser.broken``."""
    from igan.errors import IganError

    if reserved is None:  # the names the plugin manager was built with (igan.plugins.get_plugin_manager)
        reserved = getattr(pm, "igan_reserved", None)
    parser = OptionParser(owners=dict(reserved or {}))
    infos = getattr(pm, "igan_infos", {})
    impls = pm.hook.igan_addoption.get_hookimpls()  # registration order: the first to declare a name owns it
    for impl in impls:
        info = infos.get(impl.plugin_name)
        parser._plugin = impl.plugin_name
        parser._builtin = info is None or info.builtin
        options, owners = dict(parser.options), dict(parser.owners)
        try:
            impl.function(parser=parser)
        except OptionClash as exc:
            parser.broken[impl.plugin_name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one plugin's failure must not hide the others
            parser.broken[impl.plugin_name] = (exc.message if isinstance(exc, IganError) else
                                               f"plugin {impl.plugin_name!r} failed in igan_addoption: "
                                               f"{type(exc).__name__}: {exc}")
        else:
            continue
        parser.options, parser.owners = options, owners  # none of the broken plugin's options
    # shown (help panels, signatures) in call order, the last registered plugin's options first
    rank = {impl.plugin_name: i for i, impl in enumerate(reversed(impls))}
    parser.options = dict(sorted(parser.options.items(), key=lambda kv: rank.get(kv[1].plugin, -1)))
    return parser
