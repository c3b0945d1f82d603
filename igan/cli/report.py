"""``igan report``: the command; the page itself is built by ``igan.report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from igan.report import HINT, MAX_SAMPLES, write_report

__all__ = ["report", "register"]


def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        metavar="RUN_DIR...",
        help="run directories (igan train or semisup output; a semisup --seeds base directory brings "
             "its seeds), or their checkpoints",
        show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        "-o", "--out",
        help="the HTML file (default: RUN_DIR/report.html for one run, report.html for several)",
        show_default=False)] = None,
    samples: Annotated[int, typer.Option(
        "--samples", min=2, help="sample grids per run, spread over the epochs (all of them when fewer)")]
        = MAX_SAMPLES,
) -> None:
    """Write one self-contained HTML page about one or more runs (plots and images embedded).

    Several runs overlay their curves. Prints the file's path.
    """
    from igan.checkpoint import run_dir_of

    print(write_report([run_dir_of(p) for p in run_dirs], out, samples))


def register(app: typer.Typer) -> None:
    hint = HINT.replace("[", "\\[")  # the epilog is rich markup: keep "[report]" from being read as a tag
    app.command("report", epilog=f"Example: igan report runs/fm runs/fm-ha -o ablation.html  (needs {hint})")(
        report)
