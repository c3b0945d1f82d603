"""Shared fixtures: run the CLI in-process or as a subprocess, and tiny training runs.

Everything runs on the embedded ``digits`` set with a batch of 10 and a handful of steps, so a run
takes about a second on a CPU. Every run directory lives under ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Flags of a tiny CPU run; tests add --steps/--out and whatever they check.
TINY = ["--batch-size", "10", "--device", "cpu", "--log-every", "1"]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped without one (CI and the development machines
    have none; ``benchmarks/device_check.py`` runs them on a GPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_igan_env(monkeypatch):
    """The developer's own IGAN_DEBUG / IGAN_DISABLE_PLUGINS must not change what the tests see."""
    monkeypatch.delenv("IGAN_DEBUG", raising=False)
    monkeypatch.delenv("IGAN_DISABLE_PLUGINS", raising=False)
    # Eager kernels: compiling them for every tiny shape would dominate the suite's time. The compiled
    # forms are compared with the eager ones in tests/test_kernels.py.
    monkeypatch.setenv("IGAN_COMPILE", "0")


@pytest.fixture
def single_thread():
    """One torch thread while the test runs: on a small shared CPU, tiny models train several times
    faster without thread contention (the equality checks compare runs made under the same setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``run_cli(args, env=None) -> (exit_code, stdout, stderr)``: ``igan.cli.main(args)`` in-process.

    ``main`` always ends with ``sys.exit``; a return without it is a failure of its contract.
    Help output is rendered wide (COLUMNS=200) so panel titles and flags are not wrapped.
    """
    from igan.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")

    def run(args, env=None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()  # drop anything printed before
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            raise AssertionError("igan.cli.main returned without calling sys.exit")
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def train_cli(run_cli):
    """``train_cli(out_dir, *flags, steps=2) -> (code, stdout, stderr)``: a tiny ``igan train``."""

    def train(out_dir, *flags, steps=2):
        return run_cli(["train", "--steps", str(steps), *TINY, "--out", str(out_dir), *flags])

    return train


def igan_subprocess(args, *, env=None, cwd=None, **popen_kwargs) -> subprocess.Popen:
    """Start ``python -m igan ARGS`` with this interpreter (CI's virtualenv), SIGINT at its default.

    A background job of a non-interactive shell inherits SIGINT as ignored, and Python then keeps it
    ignored; resetting it in the child makes Ctrl-C tests independent of how pytest was started.
    """
    import signal

    full_env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("IGAN_DEBUG", None)
    full_env.pop("IGAN_DISABLE_PLUGINS", None)
    return subprocess.Popen([sys.executable, "-m", "igan", *[str(a) for a in args]], env=full_env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen_kwargs)


def run_on_terminal(args, stream: str = "stdout", columns: int | None = None,
                    env: dict | None = None) -> tuple[int, str, str]:
    """``python -m igan ARGS`` with ``stream`` (stdout or stderr) on a pseudo-terminal, ``columns`` wide if
    given, the other stream a pipe: (exit code, what the terminal received, the piped stream)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    on_tty = {"stdout": slave, "stderr": subprocess.PIPE} if stream == "stdout" else \
        {"stdout": subprocess.PIPE, "stderr": slave}
    proc = subprocess.Popen([sys.executable, "-m", "igan", *map(str, args)], stdin=subprocess.DEVNULL,
                            env=env if env is not None else {**os.environ, "OMP_NUM_THREADS": "1"}, **on_tty)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    piped = (proc.stderr if stream == "stdout" else proc.stdout).read().decode()
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace"), piped


def assert_clean_error(code: int, out: str, err: str, expected_code: int, *needles: str) -> None:
    """A user error: the exit code, nothing on stdout, one ``error:`` and a ``hint:`` on stderr, no traceback,
    and every ``needle`` (case-insensitive) in the error text."""
    assert code == expected_code, f"exit {code} != {expected_code}\nstderr:\n{err}"
    assert out == "", f"stdout must carry only data, got {out!r}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert any(line.startswith("hint: ") and len(line) > len("hint: ") for line in lines), err
    idx = lines.index(errors[0])
    text = "\n".join(lines[idx:idx + 2]).lower()
    for needle in needles:
        assert needle.lower() in text, f"{needle!r} not in {text!r}"


_PANEL_TOP = re.compile(r"^\s*[╭+]─+ (?P<title>.+?) ─+[╮+]\s*$")


def help_panels(text: str) -> dict[str, str]:
    """Split rich ``--help`` output into {panel title: panel body}."""
    panels: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _PANEL_TOP.match(line)
        if m:
            current = panels.setdefault(m.group("title").strip(), [])
        elif line.lstrip().startswith("╰"):
            current = None
        elif current is not None:
            current.append(line)
    return {title: "\n".join(body) for title, body in panels.items()}


def flags_in(body: str) -> set[str]:
    """The long flags of a panel body's option rows (``--x`` and both halves of ``--x/--no-x``)."""
    found = set()
    for line in body.splitlines():
        row = line.strip().lstrip("│|").strip()
        if row.startswith(("--", "* --")):
            found.update(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", row.split("<", 1)[0]))
    return found


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One finished 2-step plain run, shared by tests that only read it (sample, checkpoint layout)."""
    import torch

    from igan.cli import main

    out = tmp_path_factory.mktemp("shared") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_info:
            mp.delenv("IGAN_DEBUG", raising=False)
            mp.delenv("IGAN_DISABLE_PLUGINS", raising=False)
            main(["train", "--steps", "2", *TINY, "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    assert exit_info.value.code == 0
    return out
