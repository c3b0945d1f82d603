"""``--resume``: continue a run from its checkpoint alone.

The checkpoint holds the run's whole configuration (``config``) and who owns each piece of plugin
state (``igan.ownership``), so ``igan train --resume RUN`` (a run directory or a checkpoint file)
restores both. A setting given explicitly on the command line must agree with the checkpoint's,
compared as resolved values (``--wn`` agrees with a run that used the default weight norm), or the
resume is refused, with one exception: the settings in ``RESUMABLE`` and the run-only plugin options
(loggers) may change. Nothing is written before these checks pass.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

from igan.checkpoint import checkpoint_metadata, resolve_checkpoint
from igan.config import RunConfig
from igan.errors import UsageError

__all__ = ["RESUMABLE", "template_checkpoint", "resume_config"]

# What may change on resume: how long (a new total; not below the checkpoint's step), how often it logs
# and checkpoints, where it runs and reads its data, and the learning rate (the recovery from a
# non-finite loss: resume the last good checkpoint with a lower --lr). Also: --out, --json, and run-only
# plugin options.
RESUMABLE = ("steps", "epochs", "log_every", "checkpoint_every", "device", "fast_path", "data_dir", "download",
             "lr")
_MODEL_FLAGS = {"wn": "--wn/--no-wn", "noise": "--d-noise/--no-d-noise", "dropout": "--dropout/--no-dropout",
                "g_out_data_init": "--g-out-data-init/--no-g-out-data-init"}


def template_checkpoint(config: RunConfig, seeds: int = 1) -> Path:
    """The checkpoint whose configuration a ``--resume`` continues: the file, the run directory's last
    checkpoint, or (``--seeds K``) the lowest seed's in the experiment's folder."""
    if seeds == 1:
        return resolve_checkpoint(config.resume)
    folder = Path(config.resume)
    seeds_found = [p for p in (folder.iterdir() if folder.is_dir() else ())
                   if p.name[:4] == "seed" and p.name[4:].isdigit()]
    found = sorted((int(p.name[4:]), p / "checkpoints" / "last.safetensors") for p in seeds_found
                   if (p / "checkpoints" / "last.safetensors").is_file())
    if not found:
        raise UsageError(f"with --seeds {seeds}, --resume takes the experiment's folder (holding "
                         f"seed<S>/checkpoints/last.safetensors); {folder} holds none",
                         hint="e.g. --resume runs/mnist-seeds, the folder the first command printed")
    return found[0][1]


def _model_defaults(pm, model: str | None) -> dict[str, Any]:
    """The architecture switches a model pair uses when none is given: its registry kwargs over its
    builder's defaults."""
    from igan.train import model_registry

    model_def = model_registry(pm).get(model)
    if model_def is None:
        return {}
    builder = {k: p.default for k, p in inspect.signature(model_def.builder).parameters.items()
               if p.default is not inspect.Parameter.empty}
    return {**builder, **model_def.kwargs}


def _shown(name: str, value: Any, parser) -> str:
    """A setting as it is typed: ``--fm`` / ``--no-fm`` for switches, ``--lr 0.01`` for values."""
    spec = parser.options.get(name)
    flag = _MODEL_FLAGS.get(name) or (spec.cli_flag if spec is not None else "--" + name.replace("_", "-"))
    if isinstance(value, bool) or value is None and "/" in flag:
        on, _, off = flag.partition("/")
        return on if value else (off or f"no {on}")
    return f"{flag} {value}"


def resume_config(config: RunConfig, path: Path, parser, pm, seeds: int = 1) -> RunConfig:
    """The configuration a ``--resume`` trains with: the checkpoint's, with the settings the command
    line may change. Refuses (before anything is written) a checkpoint of another command, one whose
    plugins are missing, and explicit flags that disagree with it."""
    from igan.ownership import check_resume

    meta, keys = checkpoint_metadata(path)
    saved = RunConfig.from_dict(meta["config"])
    if saved.command != config.command:
        raise UsageError(f"{path} is a checkpoint of `igan {saved.command}`",
                         hint=f"resume it with igan {saved.command} --resume")
    check_resume(path, meta, keys, pm, parser)
    free = set(RESUMABLE) | {o.name for o in parser.options.values() if o.run_only} | {"out", "resume"}
    if seeds > 1:
        free.add("seed")  # the experiment's base seed (the checkpoint is its lowest seed's)
    defaults = _model_defaults(pm, saved.model)

    def value(cfg: RunConfig, name: str) -> Any:
        if name in _MODEL_FLAGS:
            return cfg.model_kwargs.get(name, defaults.get(name))
        if name in parser.options:  # an option the checkpoint predates had its default
            return cfg.options.get(name, parser.options[name].default)
        return getattr(cfg, name, None)

    differ = [(n, value(config, n), value(saved, n)) for n in config.given
              if n not in free and value(config, n) != value(saved, n)]
    if differ:
        shown = ", ".join(f"{_shown(n, now, parser)} (the checkpoint: {_shown(n, then, parser)})"
                          for n, now, then in differ)
        raise UsageError(f"{path} restores its own configuration, and these flags differ from it: {shown}",
                         hint="drop them to continue the run as it was (only --steps, --epochs, --log-every, "
                              "--checkpoint-every, --device, --fast-path, --data-dir, --download, --lr and "
                              "logging options may change on resume), or start a new run with --out")
    merged = copy.deepcopy(saved)
    for name in config.given:
        if name in free and name not in ("out", "resume"):
            if name in parser.options:
                merged.options[name] = config.options.get(name)
            else:
                setattr(merged, name, getattr(config, name))
    if config.is_given("epochs") and not config.is_given("steps"):
        merged.steps = None  # a new length in epochs replaces the checkpoint's --steps
    merged.out = config.out
    merged.resume = config.resume if seeds > 1 else str(path)
    # Options: the checkpoint's, except those of plugins that are gone and played no part (checked above);
    # options declared now that the checkpoint predates take their defaults.
    merged.options = {k: merged.options.get(k, v) for k, v in config.options.items()}
    merged.given = sorted(set(saved.given) | set(config.given))
    return merged
