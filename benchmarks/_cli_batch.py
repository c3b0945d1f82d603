"""Run several ``igan`` commands in one Python process (benchmarks/device_check.py's CLI part): one
start-up of torch instead of one per command. Reads a JSON list of ``{"name", "args", "env"}`` from the
file given as the argument; prints one JSON line per command on stdout (exit code, seconds, the
command's own stdout, the igan warnings it raised); the commands' messages go to stderr."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings


def run_one(args: list[str], env: dict[str, str]) -> dict:
    from igan.cli import main

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out = io.StringIO()
    t = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"exit": code, "seconds": round(time.perf_counter() - t, 2), "stdout": out.getvalue()[-2000:],
            "warnings": [str(w.message)[:300] for w in caught if str(w.message).startswith("igan:")]}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        commands = json.load(f)
    for cmd in commands:
        print(f"=== igan {' '.join(cmd['args'])}", file=sys.stderr, flush=True)
        result = run_one(cmd["args"], cmd.get("env") or {})
        print(json.dumps({"name": cmd["name"], **result}), flush=True)


if __name__ == "__main__":
    main()
