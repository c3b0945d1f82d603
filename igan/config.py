"""The resolved configuration of one run: core settings plus every plugin's options.

Stored as JSON in ``config.json`` and in each checkpoint's metadata, so ``sample``, ``evaluate`` and
``--resume`` rebuild exactly the same models and techniques.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["RunConfig"]


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
