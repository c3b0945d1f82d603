"""``igan train``: train a GAN (one run, or ``--seeds K`` runs); each technique is a flag."""

from __future__ import annotations

import json
from typing import Any

import typer

from igan.cli.runs import seed_configs, seeds_base, train_configs
from igan.cli.training import _training_command

__all__ = ["train_seeds", "register"]


def train_seeds(config, pms, seeds: int = 1, parallel: bool = False) -> dict[str, Any]:
    """``igan train``: one run, or ``--seeds K`` runs (summary: the runs and their folder)."""
    base = seeds_base(config, seeds)
    configs = seed_configs(config, seeds, base)
    summaries = train_configs(configs, pms, parallel)
    if seeds == 1:
        return summaries[0]
    from igan.fileio import write_text, writing

    result = {"run_dir": str(base), "runs": summaries}
    with writing(base / "seeds.json", "every seed's run and checkpoint is intact"):
        write_text(base / "seeds.json", json.dumps(result, indent=2) + "\n")
    return result


def register(app: typer.Typer, pms, parser) -> None:
    app.command("train", epilog="Example: igan train --dataset mnist --data-dir data/mnist --fm --mbd")(
        _training_command("train", pms, parser, "Train a GAN; each technique is a flag (see Techniques).",
                          train_seeds))
