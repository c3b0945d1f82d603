"""The MNIST Table-1 protocol in one bounded call of a GPU machine: 10 seeds with their own label splits,
trained together (``igan semisup --seeds 10 --parallel``), under each recipe in turn, resumable.

Runs ``benchmarks/reproduce_mnist.py --parallel`` for each recipe (``reference``, then ``paper-v1``) with
the time that is left (``--seconds``, default 510: a 9-minute command less start-up and the summary);
when the time is spent the training process saves its checkpoints and stops, and running the same
command again continues from them (all seeds together). State lives in ``--state`` (default
``benchmarks/results/device_protocol``, git-ignored, inside the checkout): on the device machine it
survives between calls while the machine stays warm (about 30 seconds after a call ends), so issue the
next call at once; a fresh machine starts the protocol again from zero.

Writes into the output folder: ``protocol.json`` (per recipe: finished or not, epochs done, every
seed's test errors and per-epoch test-error curve, mean ± std, this call's seconds per epoch and the
calls still needed at that pace), ``protocol.log`` (all output) and ``summary.md`` (the table).

MNIST must be in the checkout (``../shared`` does not travel to the device machine), in a git-ignored
folder sent along with the call (``carry``)::

    mkdir -p data/mnist && cp /work/shared/data/mnist/*.gz data/mnist/       # here, before the call
    bash benchmarks/device_protocol.sh OUT                                  # there (one call, <= 9 minutes)
    python benchmarks/device_protocol.py OUT --dataset digits --labels 50 --seeds 2 --epochs 2 --device cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The configurations the protocol can run, by name: (recipe, extra igan semisup flags). ``badgan-ld`` is
# the Bad-GAN MNIST combination (feature matching + the low-density term, igan.techniques.low_density).
CONFIGS = {"reference": ("reference", []), "paper-v1": ("paper-v1", []), "badgan-ld": ("reference", ["--low-density"])}
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")


def _table(state: Path, recipe: str, labels: int) -> dict | None:
    try:
        rows = json.loads((state / recipe / "table.json").read_text())
    except (OSError, ValueError):
        return None
    return next((r for r in rows if r["labels"] == labels), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder (protocol.json, protocol.log, summary.md)")
    ap.add_argument("--seconds", type=float, default=510.0, help="training time of this call, all recipes (510)")
    ap.add_argument("--recipes", default="reference,paper-v1",
                    help=f"configurations, in this order, as time allows (of: {', '.join(CONFIGS)})")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--dataset", default="mnist", help="mnist (default); digits for a quick CPU trial")
    ap.add_argument("--data-dir", default="data/mnist", help="folder in the checkout holding MNIST's four .gz files")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--state", type=Path, default=ROOT / "benchmarks" / "results" / "device_protocol",
                    help="where the runs and their checkpoints live between calls")
    ap.add_argument("extra", nargs="*", help="after --: more igan semisup flags (for every recipe)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = None
    if args.dataset == "mnist":
        data_dir = (ROOT / args.data_dir) if not Path(args.data_dir).is_absolute() else Path(args.data_dir)
        missing = [f for f in MNIST_FILES if not (data_dir / f).is_file()]
        if missing:
            print(f"error: {data_dir} lacks {', '.join(missing)}\nhint: before the device call, copy MNIST into the "
                  "checkout: mkdir -p data/mnist && cp /work/shared/data/mnist/*.gz data/mnist/ (git-ignored; name "
                  "data/mnist in the call's carry)", file=sys.stderr)
            return 2
    log = open(args.out / "protocol.log", "a", encoding="utf-8")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in CONFIGS]
    if unknown:
        print(f"error: unknown configuration {', '.join(unknown)}\nhint: --recipes takes {', '.join(CONFIGS)}",
              file=sys.stderr)
        return 2
    before = {r: (_table(args.state, r, args.labels) or {}).get("epochs_done", 0) for r in recipes}
    calls = {}
    for recipe in recipes:
        left = args.seconds - (time.monotonic() - t0)
        if left < 30:
            calls[recipe] = {"status": "not run", "note": "no time left in this call"}
            continue
        cmd = [sys.executable, str(ROOT / "benchmarks" / "reproduce_mnist.py"), "--dataset", args.dataset,
               "--labels", str(args.labels), "--seeds", str(args.seeds), "--epochs", str(args.epochs),
               "--device", args.device, "--parallel", "--recipe", CONFIGS[recipe][0], "--tag", recipe,
               "--out", str(args.state),
               "--max-seconds", str(round(left - 10)), *(["--data-dir", str(data_dir)] if data_dir else [])]
        extra = [*CONFIGS[recipe][1], *args.extra]
        if extra:
            cmd += ["--", *extra]
        log.write(f"\n=== {' '.join(cmd)}\n")
        log.flush()
        print(f"{recipe}: up to {left - 10:.0f} s of training", file=sys.stderr, flush=True)
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
        calls[recipe] = {"status": "ok" if proc.returncode == 0 else "failed", "exit": proc.returncode,
                         "seconds": round(time.monotonic() - t, 1)}
        print(f"{recipe}: exit {proc.returncode} after {calls[recipe]['seconds']} s", file=sys.stderr, flush=True)
    log.close()

    results = {}
    for recipe in recipes:
        row = _table(args.state, recipe, args.labels)
        call = calls[recipe]
        if row is None:
            results[recipe] = {"finished": False, "epochs_done": 0, "call": call}
            continue
        gained = row["epochs_done"] - before[recipe]
        per_epoch = call.get("seconds", 0) / gained if gained > 0 else None
        remaining = args.epochs - row["epochs_done"]
        results[recipe] = {
            "finished": row["finished"], "epochs_done": row["epochs_done"], "epochs": args.epochs,
            "seeds": [{"seed": r["seed"], "label_seed": r["label_seed"], "finished": r["finished"],
                       "epochs_done": r["epochs_done"], "test_errors": r["test_errors"]} for r in row["runs"]],
            "mean": row["mean"], "std": row["std"], "paper": row.get("paper"),
            "curves": row["curves"], "call": call, "epochs_this_call": gained,
            "seconds_per_epoch_this_call": round(per_epoch, 2) if per_epoch else None,
            "calls_still_needed_at_this_pace": (0 if remaining <= 0 else
                                                math.ceil(remaining * per_epoch / args.seconds) if per_epoch else None)}
    import torch

    data = {"benchmark": "device_protocol", "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "dataset": args.dataset, "labels": args.labels, "seeds": args.seeds,
            "seconds": round(time.monotonic() - t0, 1), "state": str(args.state), "recipes": results}
    (args.out / "protocol.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# MNIST protocol ({args.dataset}, {args.labels} labels, {args.seeds} seeds, --parallel)", "",
             f"{data['gpu'] or 'CPU'}, torch {data['torch']}, {dt.date.today().isoformat()}, {data['seconds']:.0f} s",
             "", "| recipe | epochs | test errors (mean ± std) | per seed | s/epoch this call | calls still needed |",
             "|---|---|---|---|---:|---:|"]
    for recipe, r in results.items():
        seeds = r.get("seeds") or []
        errs = [s["test_errors"] for s in seeds if s["test_errors"] is not None]
        cell = f"{statistics.fmean(errs):.1f} ± {statistics.stdev(errs) if len(errs) > 1 else 0.0:.1f}" if errs else "-"
        lines.append(f"| {recipe} | {r['epochs_done']} of {args.epochs}{' (finished)' if r['finished'] else ''} | "
                     f"{cell} | {', '.join(str(e) for e in errs)} | {r.get('seconds_per_epoch_this_call') or '-'} | "
                     f"{r.get('calls_still_needed_at_this_pace', '-')} |")
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0 if all(c.get("status") != "failed" for c in calls.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
