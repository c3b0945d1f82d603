"""Which plugin owns each option and each checkpoint tensor: recorded in every checkpoint, checked
whenever one is loaded, so a technique is never dropped silently.

A checkpoint's metadata holds ``plugin_records``: for every plugin of the run, its version and package,
whether it affects inference, the options it declared (with their defaults, and whether they are
run-only) and the names of the objects it registered per run (whose tensors are ``plugin.<name>.*``).

A plugin was **in use** in a run when one of its options that is not run-only differs from its
default, when the checkpoint holds tensors of its objects, or when it registered a per-run object
(unless all its options are run-only: a logger). Loading a checkpoint whose in-use plugin is not
there now (not installed, or disabled with ``--disable-plugin`` / ``IGAN_DISABLE_PLUGINS``):

- ``--resume`` refuses (``check_resume``), naming the plugin and the package to install, before
  anything is written;
- ``igan sample`` / ``igan evaluate`` (``inference_options``) load it without the plugin when the
  plugin declared ``affects_inference = False`` (a loss term, a logger), and refuse otherwise.

Options of a plugin that is missing but was not in use are dropped (they played no part). Checkpoints
written before these records existed are judged by their values: an option that is not None/False,
or a ``plugin.<name>.*`` tensor, whose owner is missing refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from igan.errors import IganError
from igan.plugins import owner_of

__all__ = ["RECORDS_KEY", "plugin_records", "check_resume", "inference_options", "tensor_objects",
           "check_tensor_owners"]

RECORDS_KEY = "plugin_records"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def tensor_objects(keys: Iterable[str], names: Iterable[str]) -> dict[str, str | None]:
    """For each ``plugin.<name>.<key>`` tensor, the longest of ``names`` (registered names or plugin
    names; names contain dots) that ``<name>.<key>`` starts with, or None: {tensor key: name}."""
    names = sorted(set(names), key=len, reverse=True)
    found = {}
    for key in keys:
        if key.startswith("plugin."):
            rest = key[len("plugin."):]
            found[key] = next((n for n in names if rest.startswith(n + ".")), None)
    return found


def plugin_records(pm: pluggy.PluginManager, parser, config) -> dict[str, dict[str, Any]]:
    """The ``plugin_records`` of a run's checkpoints (see the module docstring)."""
    infos = getattr(pm, "igan_infos", {})
    plugins = [name for name, info in infos.items() if info.error is None and pm.get_plugin(name) is not None]
    objects: dict[str, list[str]] = {}
    for name, plugin in pm.list_name_plugin():
        owner = owner_of(name, plugins) if plugin is not None else None
        if owner is not None and name != owner:
            objects.setdefault(owner, []).append(name)
    model = _provider(pm, "igan_register_models", config.model)
    dataset = _provider(pm, "igan_register_datasets", config.dataset)
    records = {}
    for name in plugins:
        info = infos[name]
        options = {o.name: {"default": _jsonable(o.default), "run_only": o.run_only}
                   for o in parser.options.values() if o.plugin == name and o.name in config.options}
        records[name] = {"version": info.version, "package": info.package,
                         "affects_inference": info.affects_inference, "options": options,
                         "objects": sorted(objects.get(name, []))}
        if name == model:
            records[name]["provides_model"] = config.model
        if name == dataset:
            records[name]["provides_dataset"] = config.dataset
    return records


def _provider(pm: pluggy.PluginManager, hook: str, wanted: str | None) -> str | None:
    """The plugin whose ``igan_register_models`` / ``igan_register_datasets`` registers ``wanted``."""
    from igan.plugins import call_impl

    for impl in getattr(pm.hook, hook).get_hookimpls():
        names: list[str] = []
        call_impl(impl, hook, register=lambda entry: names.append(entry.name))
        if wanted in names:
            return impl.plugin_name
    return None


@dataclass
class _Missing:
    """A plugin a checkpoint needs that is not here now (``plugin`` None: an owner no record names)."""

    plugin: str | None
    record: dict[str, Any]
    options: dict[str, Any]  # the values it was used with (non-default)
    tensors: list[str]  # its tensors' prefixes, plugin.<object>


def _in_use(record: dict[str, Any], used: dict[str, Any], has_tensors: bool) -> bool:
    options = record.get("options", {})
    if used or has_tensors or record.get("provides_model") or record.get("provides_dataset"):
        return True
    return bool(record.get("objects")) and not (options and all(o.get("run_only") for o in options.values()))


def _missing(meta: dict[str, Any], keys: Iterable[str], pm: pluggy.PluginManager, declared: set[str]
             ) -> tuple[list[_Missing], set[str]]:
    """(the in-use plugins of a checkpoint that are missing now, the options of missing plugins that
    played no part in the run)."""
    records = meta.get(RECORDS_KEY) if isinstance(meta.get(RECORDS_KEY), dict) else {}
    values = dict(meta.get("config", {}).get("options", {}))
    present = {name for name, plugin in pm.list_name_plugin() if plugin is not None}  # blocked: None
    objects = {o: name for name, r in records.items() for o in r.get("objects", [])}
    owners = tensor_objects(keys, [*objects, *present])
    missing, unused = [], set()
    for name, record in records.items():
        if name in present:
            continue
        options = record.get("options", {})
        used = {k: values[k] for k, o in options.items()
                if k in values and not o.get("run_only") and values[k] != o.get("default")}
        tensors = sorted({f"plugin.{o}" for o in owners.values() if objects.get(o) == name})
        if _in_use(record, used, bool(tensors)):
            missing.append(_Missing(name, record, used, tensors))
        else:
            unused.update(options)
    # What no record explains (checkpoints written before the records): judged by value and prefix.
    recorded = {k for r in records.values() for k in r.get("options", {})}
    stray = {k: v for k, v in values.items() if k not in declared and k not in recorded}
    unused.update(k for k, v in stray.items() if v in (None, False))
    stray = {k: v for k, v in stray.items() if v not in (None, False)}
    orphans = sorted({f"plugin.{key[len('plugin.'):].split('.')[0]}" for key, o in owners.items() if o is None})
    if stray or orphans:
        missing.append(_Missing(None, {}, stray, orphans))
    return missing, unused


def _describe(path, missing: list[_Missing], pm: pluggy.PluginManager, doing: str,
              what: str = "") -> IganError:
    parts, hints = [], []
    for m in missing:
        used = ", ".join(f"{k}={v!r}" for k, v in m.options.items())
        tensors = ", ".join(f"{t}.*" for t in m.tensors)
        detail = "; ".join(x for x in (used and f"its options {used}", tensors and f"its tensors {tensors}")
                           if x)
        if m.plugin is None:
            parts.append(f"{detail}, which no installed plugin provides")
            hints.append("install (or stop disabling) the plugins that provide them")
            continue
        package, version = m.record.get("package", "?"), m.record.get("version", "?")
        provides = "; ".join(f"its {kind} {m.record[key]!r}" for kind, key in
                             (("model", "provides_model"), ("dataset", "provides_dataset")) if m.record.get(key))
        detail = "; ".join(x for x in (provides, detail) if x)
        parts.append(f"plugin {m.plugin!r} ({package} {version}), which is "
                     f"{'disabled here' if pm.is_blocked(m.plugin) else 'not installed here'}"
                     + (f" (the run used {detail})" if detail else ""))
        if pm.is_blocked(m.plugin):
            hints.append(f"stop disabling {m.plugin} (--disable-plugin, IGAN_DISABLE_PLUGINS)")
        elif package == "igan":
            hints.append(f"reinstall igan (its built-in plugin {m.plugin} is missing)")
        else:
            hints.append(f"pip install {package} (version {version} wrote it)")
    return IganError(f"{path} was made with {what}{'; and '.join(parts)}",
                     hint=f"{'; '.join(hints)} to {doing}; nothing was written")


def check_resume(path, meta: dict[str, Any], keys: Iterable[str], pm: pluggy.PluginManager, parser) -> None:
    """Refuse to resume a checkpoint whose in-use plugins (options or tensors) have no owner now."""
    missing, _ = _missing(meta, keys, pm, set(parser.options))
    if missing:
        raise _describe(path, missing, pm, "resume it")


def check_tensor_owners(path, keys: Iterable[str], pm: pluggy.PluginManager) -> None:
    """After ``igan_configure``: every ``plugin.<name>.*`` tensor of the checkpoint belongs to an object
    registered now (a plugin that is installed but did not register the object would lose its state)."""
    owners = tensor_objects(keys, [name for name, plugin in pm.list_name_plugin() if plugin is not None])
    orphans = sorted({key.rsplit(".", 1)[0] for key, owner in owners.items() if owner is None})
    if orphans:
        raise IganError(f"{path} holds plugin state ({', '.join(orphans)}) that no object registered for "
                        "this run owns",
                        hint="resume with the plugin versions that wrote the checkpoint (`igan plugins` lists "
                             "them); nothing was written")


def inference_options(path, meta: dict[str, Any], keys: Iterable[str], pm: pluggy.PluginManager, parser
                      ) -> set[str]:
    """For ``sample``/``evaluate``: the options to drop (of missing plugins that played no part, or that
    declared ``affects_inference = False``); refuses when a missing plugin may change the model."""
    missing, unused = _missing(meta, keys, pm, set(parser.options))
    blocking = [m for m in missing if m.plugin is None or m.record.get("affects_inference", True)
                or m.record.get("provides_model")]
    if blocking:
        raise _describe(path, blocking, pm, "load it", what="what changes the model: ")
    for m in missing:
        unused.update(m.record.get("options", {}))
    return unused
