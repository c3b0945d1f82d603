"""The resolved configuration of one run: core settings plus every plugin's options.

Stored as JSON in ``config.json`` and in each checkpoint's metadata, so ``sample``, ``evaluate`` and
``--resume`` rebuild exactly the same models and techniques.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

__all__ = ["RunConfig", "config_problems", "MODEL_SWITCHES", "SEED_MAX", "MAX_CLASSES"]

MODEL_SWITCHES = ("wn", "noise", "dropout", "g_out_data_init")  # what ``model_kwargs`` may hold (all bools)
SEED_MAX = 2**32 - 1  # numpy's RandomState (the labelled split) takes seeds below 2**32; torch's more
MAX_CLASSES = 10_000  # bounds D's head when a configuration comes from a file


@dataclass
class RunConfig:
    """Core settings. ``None`` means "the default of the chosen model/dataset" until resolved."""

    command: str = "train"  # "train" (unsupervised GAN) or "semisup" (K+1 classifier)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str | None = None
    epochs: int | None = None
    steps: int | None = None  # total optimisation steps; overrides epochs
    batch_size: int | None = None
    lr: float | None = None
    lr_decay_from: int | None = None  # epoch from which lr falls to 0 at the last epoch (0: never)
    lr_schedule: str = "linear"  # the shape of that decay: linear or cosine (igan.schedules)
    lr_warmup: int = 0  # epochs of linear warm-up at the start (0: none)
    recipe: str | None = None  # a named set of defaults (igan.recipes); None: the model's own
    beta1: float = 0.5  # Adam beta1 of every reference script (paper-notes §1.10)
    beta2: float = 0.999
    adam: str = "reference"  # "reference": eps inside the sqrt as the paper's code; "torch": torch.optim.Adam
    seed: int = 0
    device: str = "auto"
    fast_path: bool | None = None  # torch.compile of G and D, TF32 matmuls; None: on for CUDA devices
    out: str | None = None
    resume: str | None = None
    g_steps: int = 1  # generator updates per discriminator update (reference MBD scripts use 3)
    g_loss: str = "ns"  # "ns" (non-saturating, -log D(G(z))) or "minimax" (log(1 - D(G(z))))
    log_every: int = 50
    checkpoint_every: int | None = None  # steps; default: once per epoch and at the end
    num_classes: int | None = None  # set from the dataset when the run is built
    dataset_info: dict[str, Any] = field(default_factory=dict)  # ImageDataset.info, set with num_classes
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture switches (wn, noise, ...)
    options: dict[str, Any] = field(default_factory=dict)  # plugin options, by option name
    # The settings typed on the command line (core names, model switches, plugin option names), so a
    # recipe or a plugin can tell a value the user chose from a default (``is_given``).
    given: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def is_given(self, name: str) -> bool:
        """Whether the user set ``name`` explicitly (a core setting, a model switch or a plugin option:
        on the command line, through an environment variable or in a ``--config`` file), as opposed to
        it holding its default. A resumed run keeps what its first run was given. Checkpoints written
        before igan recorded this say False."""
        return name in self.given

    def opt(self, name: str, default: Any = None) -> Any:
        """A plugin option's value (``default`` when the plugin that declares it is not installed)."""
        return self.options.get(name, default)

    @property
    def role(self) -> str:
        """What this run is: ``"gan"`` (`igan train`, and `igan semisup`'s K+1 GAN) or ``"baseline"``
        (`igan semisup`'s supervised-only baseline: G is never trained, D learns from labels alone, so a
        GAN-only technique should do nothing)."""
        return "baseline" if self.command == "semisup" and self.options.get("supervised_only") else "gan"

# ranges of numeric settings: (low, high, high excluded); None: unbounded
_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "seed": (0, SEED_MAX, False), "epochs": (1, None, False), "steps": (1, None, False),
    "batch_size": (1, None, False), "lr": (0.0, None, False), "lr_decay_from": (0, None, False),
    "lr_warmup": (0, None, False), "beta1": (0.0, 1.0, True), "beta2": (0.0, 1.0, True),
    "g_steps": (0, None, False),  # 0: the supervised-only baseline of semisup, which trains no G
    "log_every": (1, None, False), "checkpoint_every": (1, None, False),
    "num_classes": (1, MAX_CLASSES, False)}
CHOICES = {"command": ("train", "semisup"), "adam": ("reference", "torch"), "g_loss": ("ns", "minimax"),
            "lr_schedule": ("linear", "cosine")}
_OPTION_TYPES = (bool, int, float, str, type(None))


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    return True  # Any


def _type_name(hint: Any) -> str:
    names = {bool: "true/false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(names.get(a, "an object" if typing.get_origin(a) is dict else "a list") for a in args)


def config_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(setting, what is wrong)`` for each value of ``data`` (a RunConfig as a dict) that igan cannot run
    with: a wrong type, a non-finite number, a value out of range or not among the choices, a model switch
    that is not one, a plugin option that is not a plain value. Unknown keys are ignored (settings of a
    newer igan). The CLI reports these as usage errors, checkpoint loading as damaged metadata."""
    hints = typing.get_type_hints(RunConfig)
    problems: list[tuple[str, str]] = []
    for name, value in data.items():
        hint = hints.get(name)
        if hint is None:
            continue
        if not _type_ok(value, hint):
            problems.append((name, f"must be {_type_name(hint)}, got {value!r}"))
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((name, f"must be a finite number, got {value!r}"))
        elif name in _RANGES and value is not None:
            low, high, open_high = _RANGES[name]
            if value < low or (high is not None and (value >= high if open_high else value > high)):
                span = f"in [{low}, {high})" if open_high else (f"in {low}..{high}" if high is not None
                                                                  else f">= {low}")
                problems.append((name, f"must be {span}, got {value!r}"))
        elif name in CHOICES and value not in CHOICES[name]:
            problems.append((name, f"must be one of {', '.join(CHOICES[name])}, got {value!r}"))
    for key, value in (data.get("model_kwargs") or {}).items() if isinstance(data.get("model_kwargs"), dict) else ():
        if key not in MODEL_SWITCHES:
            problems.append((f"model_kwargs.{key}", f"is not a model switch (those are {', '.join(MODEL_SWITCHES)})"))
        elif value is not None and not isinstance(value, bool):
            problems.append((f"model_kwargs.{key}", f"must be true or false, got {value!r}"))
    for key, value in (data.get("options") or {}).items() if isinstance(data.get("options"), dict) else ():
        if not isinstance(value, _OPTION_TYPES):
            problems.append((f"options.{key}", f"must be a plain value (true/false, a number or a string), "
                                               f"got {value!r}"))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((f"options.{key}", f"must be a finite number, got {value!r}"))
    return problems
