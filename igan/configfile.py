"""``--config FILE``: the settings of a run from a file, so a run can be re-run or written down once.

The file is a run's own ``config.json``, or a hand-written TOML (``.toml``, read with ``tomllib``) or
YAML (``.yaml``/``.yml``, when PyYAML is installed) file with the same keys: the core settings
(``dataset``, ``steps``, ``lr``, ...), the model switches (``wn``, ``noise``, ...), the plugins'
options (``fm``, ``mbd_kernels``, ...), at the top level or under ``model_kwargs`` / ``options`` as
config.json writes them, and the command's other settings (``seeds``, ``parallel``, ``baseline``).
Dashes in keys may stand for underscores. A flag given on the command line wins over the file.

``out`` and ``resume`` (where that run was written, what it continued), ``num_classes`` and
``dataset_info`` (derived from the dataset) are records, not settings: they are not read back. ``command`` must name the command
being run. Every other key must be a setting of the command: an unknown key is a usage error naming
it (except, in the ``options`` table, an option of a plugin not installed here that the file's run
did not set: config.json records every installed plugin's options, used or not). Values are checked as the command line checks them (types, bounds, choices).

What counts as given (``RunConfig.is_given``): the keys written in a hand-written file; for a
config.json, the settings its run was given (its ``given`` list), so the re-run validates as the
original did.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from igan.config import RunConfig
from igan.errors import UsageError, value_check_message

__all__ = ["read_config_file", "apply_config_file"]

RECORDS = ("out", "resume", "num_classes", "command", "given", "dataset_info")
NOT_SETTINGS = ("as_json", "disable_plugin", "config")  # output format and plugin blocking: per command


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's mapping: JSON, TOML or YAML by its suffix."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UsageError(f"config file not found: {path}",
                         hint="pass a run's config.json or a .toml / .yaml file")
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError(f"{path}: reading YAML needs PyYAML, which is not installed",
                                 hint="pip install pyyaml, or write the file as TOML (.toml) or JSON") from None
            data = yaml.safe_load(text)
        else:
            raise UsageError(f"{path}: unknown config format {suffix or '(no suffix)'!r}",
                             hint="use a .json (a run's config.json), .toml or .yaml file")
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parsers' own errors (JSONDecodeError, TOMLDecodeError, YAMLError)
        raise UsageError(f"{path} is not valid {suffix.lstrip('.').upper()}: {str(exc).splitlines()[0]}",
                         hint="fix the file (the message gives the line)") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of settings, not {type(data).__name__}",
                         hint="write one `key = value` (TOML) or `key: value` (YAML) per setting")
    return data


def _flatten(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], set[str]]:
    """(every setting at one level, the names that came from the ``options`` table)."""
    flat: dict[str, Any] = {}
    nested: set[str] = set()
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in ("model_kwargs", "options"):
            if not isinstance(value, dict):
                raise UsageError(f"{path}: {key} must be a mapping", hint=f"write {key} as a table of settings")
            names = {str(k).replace("-", "_"): v for k, v in value.items()}
            flat.update(names)
            if key == "options":
                nested.update(names)
        else:
            flat[key] = value
    return flat, nested


def apply_config_file(path: Path, command: str, values: dict[str, Any], given: list[str], ctx
                      ) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Overlay the file on the command's parsed ``values`` where the command line gave nothing.

    Returns (values, given, extra): ``extra`` holds RunConfig settings that have no flag (``beta1``,
    ``beta2``), to set on the configuration."""
    data = read_config_file(path)
    recorded_given = data.get("given") if isinstance(data.get("given"), list) else None
    flat, nested = _flatten(data, path)
    if flat.get("command", command) != command:
        raise UsageError(f"{path} is the configuration of an `igan {flat['command']}` run",
                         hint=f"use it with igan {flat['command']} --config {path}")
    params = {p.name: p for p in ctx.command.params}
    flagless = {f.name for f in fields(RunConfig)} - set(params) - set(RECORDS) - {"model_kwargs", "options"}
    known = sorted((set(params) | flagless) - set(NOT_SETTINGS))
    values, extra, applied = dict(values), {}, []
    for key, value in flat.items():
        if key in RECORDS:
            continue
        if key not in known and key in nested and (key not in recorded_given if recorded_given is not None
                                                   else value in (None, False)):
            continue  # a config.json records every installed plugin's options: this one was not set
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise UsageError(f"{path}: unknown key {key!r}",
                             hint=f"did you mean {close[0]!r}?" if close else
                             f"keys are the command's settings, as in a run's config.json "
                             f"(`igan {command} --help`)")
        if key in given:
            continue  # the command line wins
        if key in flagless:
            default = next(f.default for f in fields(RunConfig) if f.name == key)
            if value != default:
                try:
                    extra[key] = type(default)(value) if default is not None else value
                except (TypeError, ValueError):
                    raise UsageError(f"{path}: {key} = {value!r} is not a {type(default).__name__}",
                                     hint=f"e.g. {key} = {default!r}") from None
            continue
        param = params[key]
        if value is None:
            if param.default is not None:
                raise UsageError(f"{path}: {key} may not be null",
                                 hint=f"remove it for the default ({param.default!r})")
            values[key] = None
        else:
            try:
                values[key] = param.process_value(ctx, value)
            except Exception as exc:  # noqa: BLE001 - the same checks (and messages) as on the command line
                message = value_check_message(getattr(exc, "message", None) or str(exc))
                raise UsageError(f"{path}: {key} = {value!r}: {message}",
                                 hint=f"the value must be what {key.replace('_', '-')} accepts on the command "
                                      f"line (`igan {command} --help`)") from None
        applied.append(key)
    from_file = [k for k in applied if recorded_given is None or k in recorded_given]
    return values, sorted(set(given) | set(from_file)), extra
