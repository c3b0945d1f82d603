"""``igan semisup``: semi-supervised training runs, several seeds, and the supervised-only baseline.

``--seeds K`` trains K runs one after the other (or, with ``--parallel``, at once: ``igan.parallel``),
varying both the model seed and the labelled split (``--seed + i``, ``--label-seed + i``), as the
paper's 10-seed protocol, and prints a table like its Table 1 (test errors, mean ± std). On the
embedded digits set the supervised-only baseline runs too (``--baseline``), so the gain from
unlabelled data is visible in one command.
"""

from __future__ import annotations

import copy
import inspect
import json
import statistics
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from igan.cli.runs import seed_configs, seeds_base, train_configs
from igan.cli.training import _training_command

__all__ = ["register", "run_semisup"]

PANEL = "Semi-supervised"


def _summarise(summary: dict[str, Any], config) -> dict[str, Any]:
    m = summary.get("metrics", {})
    return {"test_error": m.get("test_error"), "test_errors": m.get("test_errors"), "test_size": m.get("test_size"),
            "seed": config.seed,
            "label_seed": config.opt("label_seed"), "run_dir": summary["run_dir"], "epochs": summary["epochs"],
            "seconds": summary["seconds"]}


def run_semisup(config, pms, seeds: int = 1, baseline: bool | None = None, parallel: bool = False) -> dict[str, Any]:
    from igan.console import stderr
    from igan.techniques.semisup import labels_for

    from igan.config import SEED_MAX
    from igan.errors import UsageError
    from igan.fileio import write_text, writing

    if config.opt("label_seed", 1) + seeds - 1 > SEED_MAX:
        raise UsageError(f"--label-seed {config.opt('label_seed', 1)} with --seeds {seeds} goes past the largest "
                         f"seed, {SEED_MAX}", hint=f"use --label-seed {SEED_MAX - seeds + 1} or lower")
    base_dir = seeds_base(config, seeds)
    configs = seed_configs(config, seeds, base_dir)
    for i, cfg in enumerate(configs):  # the labelled split varies with the seed, as the paper's protocol
        cfg.options["label_seed"] = config.opt("label_seed", 1) + i
    runs = [_summarise(s, cfg) for s, cfg in zip(train_configs(configs, pms, parallel), configs)]
    errors = [r["test_errors"] for r in runs]
    n_test = runs[0]["test_size"]
    result: dict[str, Any] = {**runs[0], "labels": labels_for(configs[0]), "dataset": config.dataset,
                              "supervised_only": bool(config.opt("supervised_only")), "run_dir": str(base_dir)}
    if seeds > 1:
        mean = statistics.fmean(errors)
        std = statistics.stdev(errors)
        result.update(test_errors=mean, test_error=statistics.fmean(r["test_error"] for r in runs),
                      mean=mean, std=std, runs=runs, seed=config.seed)
    if baseline is None:
        baseline = config.dataset == "digits" and not config.opt("supervised_only")
    if baseline:
        cfg = copy.deepcopy(config)
        cfg.options["supervised_only"] = True
        cfg.out = str(base_dir / "supervised-only")
        if config.resume:  # the baseline continues its own run, or starts if it never did
            own = Path(cfg.out) if seeds > 1 else Path(cfg.out) / "checkpoints" / "last.safetensors"
            cfg.resume = str(own) if own.exists() else None
        result["baseline"] = run_semisup(cfg, pms, seeds, baseline=False, parallel=parallel)
    if not config.opt("supervised_only"):
        _print_table(result, n_test, stderr)
    with writing(base_dir / "semisup.json", "every run and its checkpoint is intact"):
        write_text(base_dir / "semisup.json", json.dumps(result, indent=2) + "\n")
    return result


def _print_table(result: dict[str, Any], n_test: int | None, console) -> None:
    from rich.table import Table

    def cell(r: dict[str, Any]) -> str:
        if "std" in r:
            return f"{r['mean']:.1f} ± {r['std']:.1f}"
        return f"{r['test_errors']}"

    table = Table(title=f"{result['dataset']}: test errors (of {n_test}) with {result['labels']} labels")
    table.add_column("model")
    table.add_column("test errors")
    table.add_column("error %")
    table.add_row("semi-supervised GAN (K+1, FM)", cell(result), f"{100 * result['test_error']:.2f}")
    if "baseline" in result:
        b = result["baseline"]
        table.add_row("supervised only", cell(b), f"{100 * b['test_error']:.2f}")
    console.print(table)


def register(app: typer.Typer, pms, parser) -> None:
    P = inspect.Parameter
    extra = [
        P("baseline", P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[bool], typer.Option(
            "--baseline/--no-baseline", rich_help_panel=PANEL,
            help="also train the supervised-only baseline (default: on for digits)")]),
    ]
    semisup = _training_command(
        "semisup", pms, parser, "Semi-supervised learning with the K+1 discriminator (paper §5); prints the test error.",
        lambda config, p, seeds=1, parallel=False, baseline=None: run_semisup(config, p, seeds, baseline, parallel),
        extra)
    app.command("semisup", epilog="Example: igan semisup --dataset mnist --data-dir data/mnist --labels 100 "
                "--seeds 10 --parallel")(semisup)
