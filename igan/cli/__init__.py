"""The ``igan`` command line. ``igan.cli:main`` is the console script (and ``python -m igan``).

One module per command, over shared helpers that import no command::

    app.py       build_app() and main(): the typer app, errors -> exit codes
    train.py     igan train          semisup.py   igan semisup
    sample.py    igan sample         evaluate.py  igan evaluate (what it computes: igan.evaluate)
    report.py    igan report (the page: igan.report)
    plugins.py   igan plugins
    training.py  the options and command function train and semisup share (make_config)
    runs.py      run directories, --seeds K, --parallel
    common.py    PluginManagers, Interrupted, TerminatedError, the help-rendering command classes
"""

from igan.cli.app import build_app, main

__all__ = ["main", "build_app"]
