"""Run the installed ``igan`` command in-process, as its console script does (``sys.argv`` + ``main()``).

The command is found through the packaging metadata (the ``igan`` console-script entry point), so the
tests drive igan's public command line and import nothing from igan's internals. In-process runs
avoid one interpreter start (about 5 s with torch) per command.
"""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

# Flags of a tiny CPU run on igan's embedded digits set (about a second).
TINY = ["--batch-size", "10", "--device", "cpu", "--log-every", "1"]


def _igan_main():
    eps = metadata.entry_points(group="console_scripts", name="igan")
    if not eps:
        pytest.skip("the igan command is not installed")
    return next(iter(eps)).load()


@pytest.fixture
def igan_cli(monkeypatch, capsys):
    """``igan_cli(*args) -> (exit code, stdout, stderr)``."""
    main = _igan_main()
    monkeypatch.setenv("COLUMNS", "200")  # help panels unwrapped
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("IGAN_DEBUG", raising=False)
    monkeypatch.delenv("IGAN_DISABLE_PLUGINS", raising=False)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["igan", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        code = exc.value.code
        return (code if isinstance(code, int) else int(code is not None)), out, err

    return run
