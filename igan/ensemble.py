"""The paper's "Ensemble of 10 of our models" (Table 1, second row): the test error of the average of the
class probabilities of the K semi-supervised runs of one ``igan semisup --seeds K`` folder.

``igan evaluate FOLDER --metric error`` on such a folder (it holds ``seed<S>/checkpoints/last.safetensors``)
reports every seed's own test errors, their mean ± std (the first row of Table 1), and the ensemble's
errors. Each model is evaluated as ``--metric error`` evaluates one checkpoint: the moving average of D
(when the run kept one), D's noise off, batches of 100 test images (a minibatch layer makes predictions
depend on the batch); the ensemble averages the K softmax distributions over the K classes and takes
the argmax.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import torch

from igan.errors import IganError, UsageError

__all__ = ["seed_checkpoints", "is_seeds_folder", "ensemble_test_error", "ensemble_errors"]

_SEED_DIR = re.compile(r"^seed(\d+)$")


def seed_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(seed, last checkpoint) of every ``seed<S>`` run in ``folder``, by seed."""
    found = []
    for child in folder.iterdir() if folder.is_dir() else []:
        m = _SEED_DIR.match(child.name)
        ckpt = child / "checkpoints" / "last.safetensors"
        if m and child.is_dir() and ckpt.is_file():
            found.append((int(m.group(1)), ckpt))
    return sorted(found)


def is_seeds_folder(path: Path) -> bool:
    return path.is_dir() and bool(seed_checkpoints(path))


@torch.no_grad()
def test_probabilities(discriminator, x: torch.Tensor, to_float, batch_size: int = 100) -> torch.Tensor:
    """softmax of D's K class logits on x, in batches of ``batch_size`` (float32 [N, K] on the CPU)."""
    discriminator.eval()
    out = [torch.softmax(discriminator(to_float(x[i:i + batch_size])).logits.float(), dim=1).cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def ensemble_errors(probabilities: list[torch.Tensor], y: torch.Tensor) -> tuple[list[int], int]:
    """Each model's misclassified count and the count of the mean of their probabilities (pure)."""
    y = y.cpu()
    each = [int((p.argmax(1) != y).sum()) for p in probabilities]
    mean = torch.stack(probabilities).mean(0)
    return each, int((mean.argmax(1) != y).sum())


def ensemble_test_error(folder: Path, data_dir: str | None = None, download: bool = False, n: int | None = None,
                        device: str = "auto", pm=None) -> dict[str, Any]:
    """The per-seed and ensemble test errors of the semi-supervised runs in ``folder``."""
    from igan.datasets import load_dataset
    from igan.restore import evaluation_discriminator, restore_models

    runs = seed_checkpoints(folder)
    if not runs:
        raise UsageError(f"{folder} holds no seed<S>/checkpoints/last.safetensors",
                         hint="pass the folder an `igan semisup --seeds K` command printed")
    probabilities, used_ema, dataset, x, y, to_float = [], [], None, None, None, None
    for seed, ckpt in runs:
        restored = restore_models(ckpt, device, _pm())  # a fresh plugin manager per run: per-run plugin state
        config = restored.config
        if config.command != "semisup":
            raise UsageError(f"{ckpt} is of an `igan {config.command}` run: an ensemble test error needs "
                             "semi-supervised runs", hint="pass the folder of an `igan semisup --seeds K` command")
        if dataset is None:
            dataset = config.dataset
            ds, _ = load_dataset(pm or _pm(), dataset, data_dir or config.data_dir, download)
            if ds.x_test is None:
                raise IganError(f"dataset {dataset!r} has no test split", hint="use a dataset with a test split")
            x, y, to_float = ds.x_test, ds.y_test, ds.to_float
            if n is not None:
                x, y = x[:n], y[:n]
        elif config.dataset != dataset:
            raise UsageError(f"{folder} mixes datasets ({dataset} and {config.dataset})",
                             hint="an ensemble is scored on one test set")
        d, ema = evaluation_discriminator(restored)
        used_ema.append(ema)
        probabilities.append(test_probabilities(d, x.to(restored.device), to_float))
    each, together = ensemble_errors(probabilities, y)
    total = int(y.shape[0])
    return {"seeds": [s for s, _ in runs], "test_errors_per_seed": each,
            "mean_test_errors": statistics.fmean(each),
            "std_test_errors": statistics.stdev(each) if len(each) > 1 else 0.0,
            "ensemble_test_errors": together, "ensemble_test_error": together / total,
            "test_errors": together, "test_error": together / total, "n": total, "models": len(runs),
            "ema": all(used_ema), "dataset": dataset}


def _pm():
    from igan.plugins import get_plugin_manager

    return get_plugin_manager()
