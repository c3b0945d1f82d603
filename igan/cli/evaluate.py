"""``igan evaluate``: the command; what it computes is ``igan.evaluate`` (``run_evaluate``).

(No ``from __future__ import annotations`` here: the command's option annotations use the metric
names computed in ``register``, which typer could not resolve from strings.)

The result is printed as a table on stderr (the model's numbers beside the real data's) and as the
mean, or one JSON object with ``--json``, on stdout.
"""

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from igan.config import SEED_MAX
from igan.errors import IganError
from igan.evaluate import ERROR_METRIC, metric_registry, run_evaluate

__all__ = ["print_table", "register"]


def _pm(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def print_table(result: dict[str, Any], console=None) -> None:
    """The result as a rich table on stderr (the model's numbers beside the real data's)."""
    from rich.markup import escape
    from rich.table import Table

    from igan.console import stderr

    console = console or stderr
    metric = result["metric"]
    ref = result.get("reference") if isinstance(result.get("reference"), dict) else None
    splits = "-" if result.get("splits") is None else str(result["splits"])
    table = Table(title=f"igan evaluate {escape(result['input'])}", title_justify="left", caption_justify="left")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("n", justify="right")
    table.add_column("splits", justify="right")
    if ref is not None:
        table.add_column("real data", justify="right")
    n = str(result["n"])
    if metric == ERROR_METRIC and result.get("input_kind") == "seeds":
        which = "EMA of D" if result.get("ema") else "D"
        table.add_row(f"test errors, mean ± std over {result['models']} seeds ({which})",
                      f"{result['mean_test_errors']:.1f} ± {result['std_test_errors']:.1f}", n, splits)
        table.add_row(f"ensemble of the {result['models']} models (mean probabilities)",
                      f"{100 * result['ensemble_test_error']:.2f}% ({result['ensemble_test_errors']} wrong)", n, splits)
        table.caption = "per seed: " + ", ".join(f"{s}: {e}" for s, e in zip(result["seeds"],
                                                                             result["test_errors_per_seed"]))
    elif metric == ERROR_METRIC:
        table.add_row(f"test error{' (EMA of D)' if result.get('ema') else ' (D)'}",
                      f"{100 * result['test_error']:.2f}% ({result['test_errors']} wrong)", n, splits)
    elif metric == "classifier-score":
        ref = ref or {}
        table.add_row("classifier score ↑", _pm(result["mean"], result["std"]), n, splits,
                      _pm(ref.get("mean"), ref.get("std")))
        table.add_row("FD to real test ↓", _pm(result.get("fd")), n, "-", _pm(ref.get("fd")))
        table.caption = (f"real data: {ref.get('n', '-')} test images (score; FD vs {ref.get('n_train', '-')} "
                         f"training images)")
    elif metric == "fid":
        ref = ref or {}
        table.add_row("FID ↓", _pm(result["mean"]), n, splits, _pm(ref.get("mean")))
        table.caption = (f"model: {n} images vs {result.get('n_real')} training images; real data: "
                         f"{ref.get('n', '-')} test images vs the same training statistics")
    else:
        row = [escape(metric), _pm(result["mean"], result["std"]), n, splits]
        if ref is not None:
            row.append(_pm(_maybe_float(ref.get("mean")), _maybe_float(ref.get("std"))))
        table.add_row(*row)
    console.print(table)
    clf = result.get("classifier")
    if isinstance(clf, dict) and clf.get("test_accuracy") is not None:
        console.print(f"classifier: test accuracy {100 * clf['test_accuracy']:.2f}%, {escape(str(clf['path']))}")


def _maybe_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _json_safe(value.item())
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _json_safe(value.item())  # numpy scalars from a plugin's metric
    return value


def _metric_help(pm) -> tuple[str, str]:
    """The --metric help and the command epilog (names and help of every registered metric)."""
    from rich.markup import escape

    try:
        registry = metric_registry(pm)
    except IganError:  # reported when `evaluate` runs; must not break the other commands
        registry = {}
    names = [escape(name) for name in (*registry, ERROR_METRIC)]
    lines = [f"{escape(m.name)}: {escape(m.help)}" for m in registry.values()]
    lines.append(f"{ERROR_METRIC}: test error of a semi-supervised checkpoint (EMA of D)")
    return ", ".join(names), "Metrics:\n\n" + "\n\n".join(lines)


def register(app: typer.Typer, pms) -> None:
    """Add ``igan evaluate`` to the app; the metric list in its help comes from the plugins."""
    names, epilog = _metric_help(pms.new(strict=False))  # the help must work with a broken plugin

    def evaluate(
        input: Annotated[Path, typer.Argument(
            metavar="INPUT", help="a checkpoint (.safetensors) or a run directory, an .npz with uint8 NHWC `images`, a "
                                 "folder of PNGs, or (--metric error) a semisup --seeds folder",
            show_default=False)],
        metric: Annotated[Optional[str], typer.Option(
            "--metric", metavar="NAME",
            help=f"one of: {names} (default: error for semisup checkpoints, classifier-score for digits and "
                 "mnist, else is)")] = None,
        n: Annotated[Optional[int], typer.Option(
            "-n", "--n", min=1, help="number of images (default: 50,000 for is/fid, 10,000 for classifier-score "
                                     "from a checkpoint; every image of a file)")] = None,
        splits: Annotated[int, typer.Option("--splits", min=1, help="splits of the IS formula")] = 10,
        dataset: Annotated[Optional[str], typer.Option(
            "--dataset", help="the real data (default: the checkpoint's; needed for fid/classifier-score of "
                              "files)")] = None,
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="folder holding the dataset's "
                                                                            "files")] = None,
        inception_weights: Annotated[Optional[Path], typer.Option(
            "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (else $IGAN_INCEPTION_WEIGHTS, "
                                        "then the torch hub cache)")] = None,
        download: Annotated[bool, typer.Option("--download", help="fetch missing dataset files / Inception "
                                                                  "weights (checksums verified)")] = False,
        retrain: Annotated[bool, typer.Option("--retrain", help="retrain the cached classifier of "
                                                                "classifier-score")] = False,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = "auto",
        seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX,
                                          help="noise seed of the samples of a checkpoint")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    ) -> None:
        """Score samples: Inception Score, FID, the offline classifier score, or a semi-supervised test error."""
        result = _json_safe(run_evaluate(input, metric, n, splits, dataset, data_dir, inception_weights, download,
                                         retrain, device, seed, pm=pms.new()))
        print_table(result)
        if as_json:
            print(json.dumps(result))
        else:
            print(result["mean"])

    app.command("evaluate", epilog=epilog + "\n\nExample: igan evaluate runs/x/checkpoints/last.safetensors "
                "--metric classifier-score")(evaluate)
