"""The schema of a checkpoint's metadata, checked before anything is built from it.

A checkpoint's metadata is JSON that igan wrote; a file can still arrive edited, damaged in a way the
digest cannot see (checkpoints written before igan stored one), or written by something else. Each
entry is checked for the shape igan writes, and sizes are bounded, before a model is allocated from it:
a flipped key, ``config`` that is not an object, a missing ``data`` entry, an architecture switch that
is not one (``g_hidden [1e7, 1e7]`` would allocate 400 TB), an image shape with a zero, a zero scale or
a NaN are each a one-line error naming the file and the entry.

Entries (``igan.checkpoint``): ``config`` (a RunConfig, ``igan.config.config_problems``), ``data``
(``name``, ``image_shape`` [C, H, W], ``scale``, ``shift``, ``max_value``, ``num_classes``), ``step`` and
``epoch`` (whole numbers >= 0), ``opt_groups`` (``G`` and ``D``: lists of parameter groups), ``plugins``
(name -> version), ``model`` (``name``, ``kwargs``), ``igan_version``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from igan.config import MAX_CLASSES, config_problems
from igan.errors import IganError

__all__ = ["check_metadata", "MAX_CHANNELS", "MAX_SIDE", "MAX_PIXELS"]

MAX_CHANNELS = 4
MAX_SIDE = 4096  # pixels of an image side
MAX_PIXELS = 2**24  # C * H * W of one image (a 2048 x 2048 RGB image is 12.6 M)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _data_problems(data: Any) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        return [("data", f"must be an object, got {type(data).__name__}")]
    problems = [(f"data.{key}", "is missing") for key in ("name", "image_shape", "scale", "shift", "max_value",
                                                         "num_classes") if key not in data]
    if "name" in data and not isinstance(data["name"], str):
        problems.append(("data.name", f"must be a string, got {data['name']!r}"))
    shape = data.get("image_shape")
    if "image_shape" in data:
        if not (isinstance(shape, list) and len(shape) == 3 and all(_whole(v, 1) for v in shape)):
            problems.append(("data.image_shape", f"must be [C, H, W] of whole numbers >= 1, got {shape!r}"))
        elif shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_SIDE or math.prod(shape) > MAX_PIXELS:
            problems.append(("data.image_shape", f"{shape} is larger than igan builds models for (at most "
                                                 f"{MAX_CHANNELS} channels, {MAX_SIDE} pixels a side)"))
    for key in ("scale", "max_value"):
        if key in data and not (_number(data[key]) and data[key] > 0):
            problems.append((f"data.{key}", f"must be a finite number > 0, got {data[key]!r}"))
    if "shift" in data and not _number(data["shift"]):
        problems.append(("data.shift", f"must be a finite number, got {data['shift']!r}"))
    if "num_classes" in data and not (_whole(data["num_classes"], 1) and data["num_classes"] <= MAX_CLASSES):
        problems.append(("data.num_classes", f"must be in 1..{MAX_CLASSES}, got {data['num_classes']!r}"))
    return problems


def _opt_groups_problems(groups: Any) -> list[tuple[str, str]]:
    if not isinstance(groups, dict):
        return [("opt_groups", f"must be an object, got {type(groups).__name__}")]
    problems = []
    for net in ("G", "D"):
        entry = groups.get(net)
        if not isinstance(entry, list) or not all(
                isinstance(g, dict) and isinstance(g.get("params"), list) and all(_whole(i) for i in g["params"])
                for g in entry):
            problems.append((f"opt_groups.{net}", "must be a list of parameter groups (objects with 'params')"))
    return problems


def _problems(meta: dict[str, Any], require: tuple[str, ...]) -> list[tuple[str, str]]:
    problems = [(key, "is missing") for key in require if key not in meta]
    config = meta.get("config")
    if not isinstance(config, dict):
        problems.append(("config", f"must be an object, got {type(config).__name__}"))
    else:
        problems += [(f"config.{k}", why) for k, why in config_problems(config)]
    if "data" in meta:
        problems += _data_problems(meta["data"])
    for key in ("step", "epoch"):
        if key in meta and not _whole(meta[key]):
            problems.append((key, f"must be a whole number >= 0, got {meta[key]!r}"))
    if "opt_groups" in meta:
        problems += _opt_groups_problems(meta["opt_groups"])
    if "plugins" in meta and not (isinstance(meta["plugins"], dict)
                                  and all(isinstance(v, str) for v in meta["plugins"].values())):
        problems.append(("plugins", "must be an object of plugin name -> version"))
    if "model" in meta and not (isinstance(meta["model"], dict) and isinstance(meta["model"].get("kwargs", {}),
                                                                                dict)):
        problems.append(("model", "must be an object with 'name' and 'kwargs'"))
    return problems


def check_metadata(meta: dict[str, Any], path: str | Path, require: tuple[str, ...] = ()) -> None:
    """Raise an ``IganError`` naming ``path`` and the first bad entry of ``meta``; ``require``: entries
    that must be present."""
    problems = _problems(meta, require)
    if problems:
        key, why = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise IganError(f"{path}: checkpoint metadata {key} {why}{more}",
                        hint="the metadata was edited or damaged, or the file was not written by igan; use "
                             "checkpoints/last.safetensors of a run (or another copy of it)")
