"""The ``igan`` app: builds the typer app from the plugins and runs it, mapping errors to exit codes.

The plugin manager is built first, then the typer app from it, so plugin options become real typer
options (help panels included) before any command parses its arguments. Each command lives in its own
module of ``igan.cli`` (``train``, ``semisup``, ``sample``, ``evaluate``, ``report``, ``plugins``) with a
``register(app, ...)`` function; plugins add theirs through ``igan_register_commands``. stdout carries
only data (a run directory, a path, or JSON with ``--json``); everything for people goes to stderr.
Exit codes: 0 success, 1 runtime error, 2 usage error, 130 Ctrl-C, 143 SIGTERM (both after saving a
checkpoint).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperCommand

from igan import __version__
from igan.cli.common import Command, Group, PluginManagers
from igan.cli.training import core_owned
from igan.errors import IganError, Terminated, UsageError, value_check_message

__all__ = ["main", "build_app"]


def build_app(pms: PluginManagers | None = None) -> typer.Typer:
    from igan.cli import evaluate, plugins, report, sample, semisup, train
    from igan.options import collect_options

    pms = pms or PluginManagers([], core_owned)
    pm = pms.new(strict=False)  # the app (help, `igan plugins`) is built even with a broken plugin
    parser = collect_options(pm)
    about = f"igan {__version__}: Improved Techniques for Training GANs, as plugins."
    app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, rich_markup_mode="rich", help=about,
                      context_settings={"help_option_names": ["-h", "--help"]})

    @app.callback(help=about)
    def igan(version: Annotated[bool, typer.Option(
            "--version", "-V", is_eager=True, callback=_print_version,
            help="print igan's version and exit")] = False) -> None:
        """The group itself does nothing: each command does the work."""

    train.register(app, pms, parser)
    semisup.register(app, pms, parser)
    sample.register(app)
    evaluate.register(app, pms)
    report.register(app)
    plugins.register(app)
    for impl in pm.hook.igan_register_commands.get_hookimpls():
        try:
            impl.function(register=lambda name, fn: app.command(name)(fn))
        except Exception as exc:  # noqa: BLE001 - the other commands must keep working
            from igan.console import warn

            why = exc.message if isinstance(exc, IganError) else f"{type(exc).__name__}: {exc}"
            warn(f"plugin {impl.plugin_name!r} failed in igan_register_commands and its commands are left out: {why}",
                 hint=f"report it to the plugin's authors, or set IGAN_DISABLE_PLUGINS={impl.plugin_name}")
    for info in app.registered_commands:  # every command, plugins' too, renders its help the same way
        if info.cls in (None, TyperCommand):
            info.cls = Command
    return app


def _print_version(value: bool) -> None:
    if value:
        print(f"igan {__version__}")
        raise typer.Exit()


def _early_disable(argv: list[str]) -> list[str]:
    """``--disable-plugin`` must act before the app exists (plugins add options to it)."""
    names = []
    for i, arg in enumerate(argv):
        if arg == "--disable-plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith("--disable-plugin="):
            names.append(arg.split("=", 1)[1])
    return names


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv) or ["--help"]  # bare `igan`: the help, exit 0
    debug = os.environ.get("IGAN_DEBUG") == "1"
    from igan import interrupts

    previous_sigint = interrupts.install()  # count Ctrl-Cs: a plugin's own KeyboardInterrupt is not one
    code = 0
    disabled = _early_disable(argv)
    try:
        app = build_app(PluginManagers(disabled, core_owned))
        result = app(args=argv, prog_name="igan", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # click's usage errors (unknown flag, bad value): exit 2
        if debug:
            raise
        blocked = _option_of_a_disabled_plugin(exc, disabled)
        if blocked is not None:
            _report(blocked.message, blocked.hint)
        elif exc.format_message():  # typer's "no arguments: show help" carries no message
            # typer's value checks go through pydantic, which puts "Value error, " before their text
            _report(value_check_message(exc.format_message()), _usage_hint(exc))
        code = getattr(exc, "exit_code", 2)
    except IganError as exc:
        if debug:
            raise
        _report(exc.message, exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted", "the last checkpoint was saved; continue with --resume")
        code = 130
    except Terminated:
        _report("terminated (SIGTERM)", "the last checkpoint was saved; continue with --resume")
        code = 143
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless debugging
        if debug:
            raise
        code = _report_unexpected(exc)
    finally:
        interrupts.restore(previous_sigint)
    sys.exit(code)


def _report(message: str, hint: str | None = None) -> None:
    """``error: ...`` + ``hint: ...`` on stderr. Never raises: it is the last thing between an error and
    the user (a broken console falls back to a plain print)."""
    try:
        from igan.console import error

        error(message, hint)
    except Exception:  # noqa: BLE001
        try:
            print(f"error: {message}", file=sys.stderr)
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - stderr itself is gone: the exit code still tells
            pass


def _report_unexpected(exc: BaseException) -> int:
    """The last-resort handler: one line naming the plugin whose hook raised, or saying it is a bug. It
    cannot itself fail: anything going wrong while describing the error falls back to its type name."""
    try:
        message, hint = _failure_message(exc)
    except Exception:  # noqa: BLE001 - an exception whose str() raises, a plugin registry in pieces, ...
        message, hint = type(exc).__name__, ("this looks like a bug in igan; rerun with IGAN_DEBUG=1 for the "
                                             "traceback and report it")
    _report(message, hint)
    return 1


def _failure_message(exc: BaseException) -> tuple[str, str]:
    """An unexpected exception in one line: the plugin whose hook raised it when a hook was running
    (pluggy knows the implementation), else a bug in igan. ``igan.plugins`` is loaded already (the app
    is built from it), so this imports nothing new."""
    from igan.plugins import hook_failure

    what = f"{type(exc).__name__}: {exc}"
    failure = hook_failure(exc)
    if failure is None or failure.plugin == "core":
        return what, "this looks like a bug in igan; rerun with IGAN_DEBUG=1 for the traceback and report it"
    info = failure.info
    if info is not None and info.builtin:
        return (f"built-in plugin {failure.plugin} failed in {failure.hook}: {what}",
                f"this looks like a bug in igan's {failure.plugin} plugin; rerun with IGAN_DEBUG=1 for the "
                f"traceback and report it, or run without it (--disable-plugin {failure.plugin})")
    package = f"package {info.package} {info.version}" if info is not None else "its package"
    return (f"plugin {failure.plugin} failed in {failure.hook}: {what}",
            f"the error is in the plugin ({package}), not in igan: report it to the plugin's authors, or run "
            f"without it (--disable-plugin {failure.plugin}); IGAN_DEBUG=1 shows the traceback")


def _option_of_a_disabled_plugin(exc: Exception, disable: list[str]) -> UsageError | None:
    """For ``No such option: --fm`` while plugins are disabled (``--disable-plugin``,
    ``IGAN_DISABLE_PLUGINS``): an error that says so. igan's own plugins are looked up to name the one
    that declares the option; third-party ones are not imported (disabling a plugin keeps its code from
    running), so the hint names them all."""
    option = getattr(exc, "option_name", None)
    if not option:
        return None
    from igan.options import OptionParser
    from igan.plugins import _blocked_names, _entry_points

    blocked = _blocked_names(disable)

    def how(name: str) -> str:
        return f"--disable-plugin {name}" if name in disable else "IGAN_DISABLE_PLUGINS"

    others = []
    for ep in _entry_points():
        if ep.name not in blocked:
            continue
        if ep.dist is None or ep.dist.name != "igan":
            others.append(ep.name)
            continue
        try:
            addoption = getattr(ep.load(), "igan_addoption", None)
            parser = OptionParser()
            if addoption is not None:
                addoption(parser=parser)
        except Exception:  # noqa: BLE001 - cannot tell: the plain usage error stands
            continue
        for spec in parser.options.values():
            if option in (flag.strip() for flag in spec.cli_flag.split("/")):
                return UsageError(f"{option} is an option of plugin {ep.name}, which is disabled ({how(ep.name)})",
                                  hint=f"drop {option}, or stop disabling {ep.name}")
    if others:
        return UsageError(f"No such option: {option}",
                          hint=f"plugin{'s' if len(others) > 1 else ''} {', '.join(others)} "
                               f"{'are' if len(others) > 1 else 'is'} disabled ({', '.join(map(how, others))}); "
                               f"if {option} is one of theirs, stop disabling it")
    return None


def _usage_hint(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "igan"
    return f"run `{path} --help` for the options"
