"""The training progress line: phase, epoch, step, it/s and ETA always; as many values as fit the width.

The line is rendered for 80 and 120 columns directly (a rich console of that width), then end to end:
``igan semisup`` with its stderr on a pseudo-terminal of that size, whose redraws are read back.
"""

from __future__ import annotations

import io
import os
import re

import pytest

from igan.console import TrainProgress

from conftest import TINY

VALUES = {"test_error": 0.1481, "eval/classifier_fd": 12.5, "D": 0.3499, "G": 0.2291, "D/supervised": 0.01592,
          "D/unsupervised": 0.6931, "fm": 0.2291}


def _rendered(progress: TrainProgress, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), force_terminal=True, color_system=None, record=True)
    console.print(progress.render(width))
    return [line.rstrip() for line in console.export_text().splitlines() if line.strip()]


def _progress(description="semi-supervised") -> TrainProgress:
    bar = TrainProgress(total=1200, start=0, description=description, enabled=True, steps_per_epoch=30)
    bar.live = None  # rendered by hand here
    bar.step, bar.rate, bar.values = 151, 41.2, dict(VALUES)
    return bar


@pytest.mark.parametrize("width", [80, 120])
def test_the_fields_always_show_and_values_fill_what_is_left(width):
    [line] = _rendered(_progress(), width)  # one line, never wrapped
    assert len(line) <= width
    for field in ("semi-supervised", "epoch 6/40", "step 151/1200", "41.2 it/s", "eta 25s"):
        assert field in line, line
    shown = re.findall(r"(\S+)=(\S+)", line)
    assert all(f"{k}={v:.4g}" in line for k, v in VALUES.items() if k in dict(shown))  # whole values only
    assert "…" not in line


def test_a_wider_terminal_shows_more_values_in_their_order():
    narrow, wide = (re.findall(r"(\S+)=", _rendered(_progress(), w)[0]) for w in (80, 120))
    assert len(wide) > len(narrow)
    assert wide[:len(narrow)] == narrow == list(VALUES)[:len(narrow)]


def test_a_very_narrow_terminal_still_shows_epoch_step_rate_and_eta():
    [line] = _rendered(_progress("supervised-only baseline"), 56)
    assert len(line) <= 56
    for field in ("epoch 6/40", "step 151/1200", "41.2 it/s", "eta 25s"):
        assert field in line, line


def test_the_plain_line_has_every_value():
    line = _progress().line()
    assert line.startswith("semi-supervised epoch 6/40 step 151/1200 41.2 it/s eta 25s ")
    for key, value in VALUES.items():
        assert f"{key}={value:.4g}" in line


def _pty_stderr(args: list[str], columns: int) -> str:
    """``python -m igan ARGS`` with stderr on a pseudo-terminal ``columns`` wide; the text it drew
    (escape codes removed)."""
    from conftest import run_on_terminal

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "FORCE_COLOR")}
    env.update(TERM="xterm", OMP_NUM_THREADS="1")
    code, drawn, _ = run_on_terminal(args, "stderr", columns, env)
    assert code == 0, drawn[-2000:]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)


@pytest.mark.parametrize("columns", [80, 120])
def test_semisup_progress_on_a_terminal(tmp_path, columns):
    baseline = columns == 80  # both phases once; the wide terminal for the values
    args = ["semisup", "--steps", "3", *TINY, "--out", tmp_path / "ss", *([] if baseline else ["--no-baseline"])]
    lines = [ln for ln in re.split(r"[\r\n]+", _pty_stderr(args, columns)) if "it/s" in ln]
    assert lines
    assert all(len(ln.rstrip()) <= columns for ln in lines), [ln for ln in lines if len(ln.rstrip()) > columns]
    # each phase named for what it trains (not both "train")
    semi = [ln for ln in lines if ln.startswith("semi-supervised ")]
    base = [ln for ln in lines if ln.startswith("supervised-only baseline ")]
    assert semi and bool(base) == baseline, lines
    for ln in semi[-1:] + base[-1:]:
        assert "epoch 1/1" in ln and "step 3/3" in ln and " it/s " in ln and "eta " in ln, ln
    assert "test_error=" in semi[-1], semi[-1]  # the epoch's metric, first of the values
    if columns >= 120:
        assert "D=" in semi[-1] and "G=" in semi[-1], semi[-1]


def test_plain_lines_name_the_phase_and_the_seed(run_cli, tmp_path):
    code, out, err = run_cli(["train", "--steps", "2", *TINY, "--seeds", "2", "--out", tmp_path / "seeds"])
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if " it/s " in ln]
    assert [ln.split(" epoch ")[0] for ln in lines] == ["train seed 0 (1/2)"] * 2 + ["train seed 1 (2/2)"] * 2
    assert lines[-1].startswith("train seed 1 (2/2) epoch 1/1 step 2/2 ")
