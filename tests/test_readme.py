"""The README's first shell block: its test command prints pytest's pass/fail line, and CI runs it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _test_command() -> list[str]:
    """The pytest part of the README's second command (after its installs)."""
    line = _readme_commands()[1]
    command = line.split("&&")[-1].strip()
    assert command.startswith("python -m pytest"), line
    return shlex.split(command)


def test_readme_test_command_prints_the_summary_line():
    args = _test_command()[1:]  # "-m pytest -q", with this interpreter and the project's own configuration
    proc = subprocess.run([sys.executable, *args, "tests/test_cli_layout.py", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^\d+ passed in [\d.]+s", proc.stdout, re.M), proc.stdout  # e.g. "3 passed in 0.41s"


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert " ".join(_test_command()) in ci
