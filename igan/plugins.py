"""Build the plugin manager for one run: hook specs, the essential defaults, then every plugin that is
installed under the ``igan`` entry-point group (the built-in techniques included).

Built per call, never at import, so tests get a fresh manager and no reloads are needed. A plugin that
fails to import is recorded as broken and skipped with a warning (``igan plugins`` lists it); a plugin
whose ``igan_*`` function matches no hook spec is an error naming the plugin and the function.

Also here: what a plugin declares about itself (``affects_inference``, the hooks of the per-run classes
it registers, shown by ``igan plugins``), ``call_impl`` for the places that call one implementation at
a time, and ``hook_failure``, which finds the plugin whose hook raised an exception (for the CLI's
message).
A plugin cannot end the process: ``SystemExit``, ``KeyboardInterrupt`` (when no Ctrl-C arrived, see
``igan.interrupts``) or any other ``BaseException`` raised by its import makes it a broken plugin, and
raised by one of its hooks becomes a ``PluginFault`` naming the plugin and the hook (exit code 1).
Option names and flags are owned (``igan.options``): a plugin declaring one that another owns is broken,
and a run refuses to start with it (``strict``), while ``igan plugins`` and ``--help`` still work.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

import pluggy

from igan import hookspecs, interrupts
from igan.errors import IganError

__all__ = ["PluginInfo", "PluginFault", "get_plugin_manager", "plugin_infos", "guard_hooks", "ENTRY_POINT_GROUP",
           "hookimpl", "call_impl", "hook_failure", "owner_of", "HookFailure"]

ENTRY_POINT_GROUP = "igan"
hookimpl = pluggy.HookimplMarker("igan")

# The host's own defaults (default losses, datasets, models, core options). Essential: never blocked.
ESSENTIAL = {"core": "igan.defaults"}


@dataclass
class PluginInfo:
    """What ``igan plugins`` reports about one plugin."""

    name: str
    version: str
    source: str  # "essential", "built-in" (shipped with igan) or "package:<distribution>"
    module: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # set when the plugin failed to load, or its options clash with another's
    # The hooks of the classes whose objects the plugin registers per run: [(class name, [hooks])].
    run_hooks: list[tuple[str, list[str]]] = field(default_factory=list)
    # False when the plugin declares (module attribute ``affects_inference = False``) that it changes
    # nothing `igan sample` / `igan evaluate` rebuild: its checkpoints then load without it.
    affects_inference: bool = True

    @property
    def builtin(self) -> bool:
        return self.source in ("essential", "built-in")

    @property
    def package(self) -> str:
        """The distribution to install for this plugin (``igan`` for the built-ins)."""
        return self.source.removeprefix("package:") if self.source.startswith("package:") else "igan"


class PluginFault(IganError):
    """A plugin's hook tried to end the process (``SystemExit``, its own ``KeyboardInterrupt``, ...)."""


def _escaped(exc: BaseException, sigints_before: int) -> bool:
    """Whether ``exc`` (not an ``Exception``) is a plugin's own attempt to end the process, as opposed to
    the user's Ctrl-C arriving while plugin code ran."""
    return not (isinstance(exc, KeyboardInterrupt) and interrupts.count() != sigints_before)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}({', '.join(repr(a) for a in exc.args)})"


def _guard(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    """``function`` with a ``BaseException`` that would end the process turned into a ``PluginFault``."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        before = interrupts.count()
        try:
            return function(*args, **kwargs)
        except Exception:
            raise
        except BaseException as exc:
            if not _escaped(exc, before):
                raise
            raise PluginFault(f"plugin {plugin} raised {_describe(exc)} in {hook}",
                              hint=f"a plugin cannot end igan; report it to the plugin's authors, or block it with "
                                   f"IGAN_DISABLE_PLUGINS={plugin} (names: `igan plugins`)") from exc

    guarded.igan_guarded = True  # type: ignore[attr-defined]
    return guarded


def guard_hooks(pm: pluggy.PluginManager) -> None:
    """Guard every hook implementation of every plugin but the essential core's (see ``_guard``); called
    when the manager is built and again after ``igan_configure``, which may register more plugins."""
    essential = {pm.get_plugin(name) for name in ESSENTIAL}
    for name, plugin in pm.list_name_plugin():
        if plugin in essential:
            continue
        for caller in pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                # generator functions (pluggy wrappers) run their body after the call returns: left as they are
                if (impl.plugin is plugin and not getattr(impl.function, "igan_guarded", False)
                        and not inspect.isgeneratorfunction(impl.function)):
                    impl.function = _guard(impl.function, name, caller.name)


def _blocked_names(disable: Iterable[str] = ()) -> set[str]:
    names = {n.strip() for n in os.environ.get("IGAN_DISABLE_PLUGINS", "").split(",") if n.strip()}
    return names | {n.strip() for n in disable if n.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    # Deduplicate (a package visible twice on sys.path must not register twice); keep a stable order.
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in eps:
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda ep: (ep.dist is None or ep.dist.name != "igan", ep.name))


def get_plugin_manager(*, disable: Iterable[str] = (), autoload: bool = True,
                       extra: Iterable[tuple[str, object]] = (), reserved: Mapping[str, str] | None = None,
                       strict: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with specs, essential plugins and (``autoload``) installed plugins.

    ``disable`` names plugins to block (added to ``IGAN_DISABLE_PLUGINS``); ``extra`` registers
    (name, plugin) pairs, as tests do with spy plugins. Plugin metadata for ``igan plugins`` is kept on
    ``pm.igan_infos``. ``reserved``: option names and flags igan itself owns (``igan.options``);
    ``strict``: refuse (``IganError``) a plugin whose options clash, instead of only marking it broken.
    """
    import importlib

    pm = pluggy.PluginManager("igan")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    blocked = _blocked_names(disable)
    from igan import __version__

    for name, modname in ESSENTIAL.items():
        pm.register(importlib.import_module(modname), name=name)
        infos[name] = PluginInfo(name, __version__, "essential", modname)
    if autoload:
        for ep in _entry_points():
            if ep.name in infos:
                raise IganError(f"plugin name {ep.name!r} is used twice",
                                hint=f"uninstall one of the packages providing the {ep.name!r} entry point")
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            source = "built-in" if dist == "igan" else f"package:{dist}"
            if ep.name in blocked:
                pm.set_blocked(ep.name)
                continue
            before = interrupts.count()
            try:
                plugin = ep.load()
            except BaseException as exc:  # a broken third-party package must not take igan down, nor end it
                if not isinstance(exc, Exception) and not _escaped(exc, before):
                    raise  # the user's Ctrl-C
                why = f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else f"raised {_describe(exc)}"
                infos[ep.name] = PluginInfo(ep.name, version, source, ep.value, error=why)
                _warn(f"plugin {ep.name!r} ({dist} {version}) failed to import and is skipped: {why}",
                      hint=f"reinstall or uninstall {dist}, or set IGAN_DISABLE_PLUGINS={ep.name}")
                continue
            try:
                pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                raise IganError(f"plugin {ep.name!r} ({dist} {version}) is invalid: {exc}",
                                hint=f"fix the plugin, or set IGAN_DISABLE_PLUGINS={ep.name}") from exc
            infos[ep.name] = PluginInfo(ep.name, version, source, ep.value)
    for name, plugin in extra:
        if name in blocked:
            continue
        pm.register(plugin, name=name)
        infos[name] = PluginInfo(name, "0", "extra", getattr(plugin, "__name__", type(plugin).__name__))
    check_hookimpls(pm)
    for info in infos.values():
        plugin = pm.get_plugin(info.name)
        if plugin is not None:
            info.hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
            info.run_hooks = run_object_hooks(plugin)
            info.affects_inference = bool(getattr(plugin, "affects_inference", True))
    guard_hooks(pm)
    pm.igan_infos = infos  # type: ignore[attr-defined]
    _LAST_INFOS.clear()
    _LAST_INFOS.update(infos)
    pm.igan_reserved = dict(reserved or {})  # type: ignore[attr-defined]
    _check_options(pm, infos, reserved, strict)
    return pm


def _check_options(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], reserved: Mapping[str, str] | None,
                   strict: bool) -> None:
    """Collect every plugin's options once, so a clash (or a failing ``igan_addoption``) is found at
    start-up: the plugin is marked broken, and a run refuses to start (``strict``)."""
    from igan.options import collect_options

    broken = collect_options(pm, reserved).broken
    for name, why in broken.items():
        info = infos.get(name)
        if info is not None:
            info.error = why
    if broken:
        name, why = next(iter(broken.items()))
        hint = (f"block it with IGAN_DISABLE_PLUGINS={name} (or --disable-plugin {name}), or uninstall it; "
                "`igan plugins` lists every plugin")
        if strict:
            raise IganError(why, hint=hint)
        _warn(f"{why}; its options are left out", hint=hint)


# The infos of the last plugin manager built, so the CLI's last-resort handler can name a failing
# plugin's package without building another manager.
_LAST_INFOS: dict[str, PluginInfo] = {}


def run_object_hooks(plugin: object) -> list[tuple[str, list[str]]]:
    """The hooks of the per-run classes a plugin module defines: every class among the module's
    attributes, defined in that module (or a submodule of its package), with ``@hookimpl`` methods.
    Their objects are registered only during ``igan_configure``, so ``igan plugins`` finds them here."""
    import inspect

    name = getattr(plugin, "__name__", None)
    if not inspect.ismodule(plugin) or name is None:
        return []
    found = []
    for attr in vars(plugin).values():
        if not inspect.isclass(attr):
            continue
        module = getattr(attr, "__module__", "") or ""
        if module != name and not module.startswith(name + "."):
            continue
        hooks = sorted({member for member, fn in inspect.getmembers(attr)
                        if member.startswith("igan_") and hasattr(fn, "igan_impl")})
        if hooks:
            found.append((attr.__name__, hooks))
    return sorted(found)


def owner_of(registered: str, plugins: Iterable[str]) -> str | None:
    """The plugin behind a registered name: itself, or the longest plugin name it extends with a dot
    (``historical_averaging.run`` belongs to ``historical_averaging``, as igan_configure names it)."""
    best = None
    for name in plugins:
        if (registered == name or registered.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return best


def call_impl(impl: pluggy.HookImpl, hook: str, **available):
    """Call one hook implementation with the arguments it asks for (igan does this where each plugin gets
    its own data, e.g. its checkpoint tensors). ``hook_failure`` recognises this frame."""
    return impl.function(**{k: v for k, v in available.items() if k in impl.argnames})


@dataclass
class HookFailure:
    """Where an exception came from: the registered name whose hook raised, the hook, and the plugin
    (entry point) that owns it, with its info when known."""

    registered: str
    hook: str
    plugin: str
    info: PluginInfo | None


def hook_failure(exc: BaseException) -> HookFailure | None:
    """The innermost hook implementation on the traceback of ``exc``: pluggy's ``_multicall`` frame holds
    the ``hook_impl`` it was calling (and ``hook_name``); ``call_impl``'s frame holds ``impl``. None when
    no hook was running (an error of igan itself)."""
    import traceback

    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code, local = frame.f_code, frame.f_locals
        if code.co_name == "_multicall" and frame.f_globals.get("__name__", "").startswith("pluggy"):
            impl, hook = local.get("hook_impl"), local.get("hook_name")
        elif code is call_impl.__code__:
            impl, hook = local.get("impl"), local.get("hook")
        else:
            continue
        if impl is not None:
            found = (impl.plugin_name, str(hook))
    if found is None:
        return None
    owner = owner_of(found[0], _LAST_INFOS) or found[0]
    return HookFailure(found[0], found[1], owner, _LAST_INFOS.get(owner))


def check_hookimpls(pm: pluggy.PluginManager) -> None:
    """Refuse ``igan_*`` functions that match no hook spec (a misspelt hook would silently never fire)."""
    for name, plugin in pm.list_name_plugin():
        for caller in pm.get_hookcallers(plugin) or []:
            if caller.spec is None:
                raise IganError(f"plugin {name!r} implements {caller.name!r}, which is not an igan hook",
                                hint="check the spelling against docs/hooks.md (`igan plugins` lists the hooks)")


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    return list(getattr(pm, "igan_infos", {}).values())



_warned: set[str] = set()


def _warn(message: str, hint: str) -> None:
    """Warn once per process (the CLI builds more than one plugin manager)."""
    from igan.console import warn

    if message not in _warned:
        _warned.add(message)
        warn(message, hint)
