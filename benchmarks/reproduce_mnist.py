"""The paper's Table 1 protocol on MNIST: semi-supervised test errors (of 10,000), mean ± std over seeds.

Each seed varies both the model seed and the labelled split (``--seed + i``, ``--label-seed + i``), as the
paper's 10 runs. Writes the table as JSON and markdown, next to the paper's numbers.

``--recipe`` picks the version of the reference script to follow (``reference``: today's, the default;
``paper-v1``: the one of 9 June 2016, ``igan.recipes``), and anything after ``--`` is passed on to
``igan semisup`` (techniques beyond the paper, say); ``--tag`` names the experiment's folder (default:
the recipe's name, plus the extra flags).

The protocol is long on a CPU (about 2.5-3.5 hours per 300-epoch seed on 2 cores), so it can be stopped
and continued: every seed trains in its own folder ``OUT/<tag>/labels<L>/seed<S>``; running the same command
again skips the seeds whose ``summary.json`` shows they finished, resumes the others from their last
checkpoint (``igan semisup --resume``, exact), and starts the missing ones. Ctrl-C stops the seed in
training after saving its checkpoint.

With ``--parallel`` (for a GPU: the whole 10-seed protocol as one batched computation, ``igan semisup
--seeds K --parallel``) the seeds of a label count train together in one process, into the same
folders; when all of them have checkpoints, running the command again resumes them together
(``--seeds K --parallel --resume``); when only some were started, those are finished one by one as
above instead.

``--max-seconds S`` bounds the command's training time (benchmarks/device_protocol.sh: one call of a
GPU machine): when it is spent, the training process gets SIGTERM, saves its checkpoints and stops;
the table then records how far each seed got (``"finished": false``, the epochs done, the test errors
at the last epoch end) and the same command continues later.

    python benchmarks/reproduce_mnist.py --data-dir ../shared/data/mnist --labels 100 --seeds 10 --epochs 300
    python benchmarks/reproduce_mnist.py --data-dir ../shared/data/mnist --labels 100 --seeds 1 --recipe paper-v1
    python benchmarks/reproduce_mnist.py --data-dir ../shared/data/mnist --labels 100 --seeds 1 -- --pull-away
    python benchmarks/reproduce_mnist.py --data-dir data/mnist --labels 100 --seeds 10 --device cuda --parallel
    python benchmarks/reproduce_mnist.py --data-dir ../shared/data/mnist --labels 20 50 100 200 --seeds 3 --epochs 10
    python benchmarks/reproduce_mnist.py --dataset digits --labels 50 --seeds 2 --epochs 2   # a quick trial
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PAPER = {20: "1677 ± 452", 50: "221 ± 136", 100: "93 ± 6.5", 200: "90 ± 4.2"}  # Table 1, "Our model"


def finished(run_dir: Path, epochs: int) -> dict | None:
    """The run's summary if it trained for at least ``epochs`` epochs, else None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    done = summary.get("epochs", 0) >= epochs and "test_errors" in summary.get("metrics", {})
    return summary if done else None


def curve(run_dir: Path) -> dict[int, int]:
    """Test errors at each epoch end, from the run's metrics.jsonl."""
    points = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if "test_errors" in record:
            points[round(record["epoch"])] = record["test_errors"]
    return points


def _igan(args, labels: int, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "igan", "semisup", "--dataset", args.dataset, "--labels", str(labels),
           "--epochs", str(args.epochs), "--device", args.device, "--no-baseline", "--json", "--recipe", args.recipe,
           *args.extra, *extra]
    return cmd + (["--data-dir", args.data_dir] if args.data_dir else [])


DEADLINE: list[float] = []  # time.monotonic() at which training stops (--max-seconds)


def _late() -> bool:
    return bool(DEADLINE) and time.monotonic() > DEADLINE[0] - 5


def _run(cmd: list[str]) -> None:
    """Run igan to its end, or until the deadline (SIGTERM: it saves its checkpoints and exits 143)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)  # progress and errors stay on stderr
    try:
        proc.wait(timeout=max(1.0, DEADLINE[0] - time.monotonic()) if DEADLINE else None)
    except subprocess.TimeoutExpired:
        print("time budget spent: stopping the run (it saves its checkpoints first)", file=sys.stderr)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        if proc.returncode in (0, 143):
            return
    if proc.returncode != 0:
        hint = "; run the same command again to continue" if proc.returncode in (130, 143) else ""
        sys.exit(f"error: {' '.join(cmd[1:])} exited with {proc.returncode}{hint}")


def progress(run_dir: Path, epochs: int) -> dict:
    """How far a seed got: finished or not, epochs done, test errors at the end (or the last epoch end)."""
    points = curve(run_dir)
    done = finished(run_dir, epochs)
    last = max(points) if points else 0
    return {"finished": done is not None, "epochs_done": epochs if done else last,
            "test_errors": done["metrics"]["test_errors"] if done else points.get(last)}


def train_together(args, labels: int, base: Path, resume: bool = False) -> list[dict]:
    """All seeds of one label count at once (``--seeds K --parallel``), into base/seed<S>; ``resume``:
    continue them together from their checkpoints."""
    print(f"labels {labels}: {args.seeds} seeds in parallel{' (resuming)' if resume else ''} -> {base}",
          file=sys.stderr)
    t0 = time.perf_counter()
    _run(_igan(args, labels, "--seeds", str(args.seeds), "--seed", str(args.seed), "--label-seed",
               str(args.label_seed), "--parallel", "--out", str(base), *(["--resume", str(base)] if resume else [])))
    seconds = round(time.perf_counter() - t0, 1)
    return [{"seed": args.seed + i, "label_seed": args.label_seed + i,
             **progress(base / f"seed{args.seed + i}", args.epochs),
             "seconds": seconds, "resumed": resume, "skipped": False, "parallel": True} for i in range(args.seeds)]


def train_seed(args, labels: int, seed: int, label_seed: int, run_dir: Path) -> dict:
    """One seed: skipped when finished, resumed from its checkpoint when started, else trained."""
    done = finished(run_dir, args.epochs)
    if done is not None:
        print(f"labels {labels} seed {seed}: finished earlier ({done['metrics']['test_errors']} errors)",
              file=sys.stderr)
        return {"seed": seed, "label_seed": label_seed, **progress(run_dir, args.epochs),
                "seconds": done.get("seconds"), "resumed": False, "skipped": True}
    if _late():
        return {"seed": seed, "label_seed": label_seed, **progress(run_dir, args.epochs), "seconds": 0,
                "resumed": False, "skipped": True}
    ckpt = run_dir / "checkpoints" / "last.safetensors"
    cmd = _igan(args, labels, "--seed", str(seed), "--label-seed", str(label_seed), "--out", str(run_dir))
    if ckpt.is_file():
        cmd += ["--resume", str(ckpt)]
    print(f"labels {labels} seed {seed}: {'resuming' if ckpt.is_file() else 'training'} -> {run_dir}",
          file=sys.stderr)
    t0 = time.perf_counter()
    resumed = ckpt.is_file()
    _run(cmd)
    return {"seed": seed, "label_seed": label_seed, **progress(run_dir, args.epochs),
            "seconds": round(time.perf_counter() - t0, 1), "resumed": resumed, "skipped": False}


def _epochs_cell(row: dict) -> str:
    return str(row["epochs"]) if row["finished"] else f"{row['epochs_done']} of {row['epochs']}"


def _errors_cell(row: dict) -> str:
    return "-" if row["mean"] is None else f"{row['mean']:.1f} ± {row['std']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="folder with the MNIST files (else igan's default for the dataset)")
    ap.add_argument("--dataset", default="mnist", help="mnist (default); digits for a quick trial")
    ap.add_argument("--labels", type=int, nargs="+", default=[100])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="first model seed (default 0)")
    ap.add_argument("--label-seed", type=int, default=1,
                    help="first labelled-split seed (default 1, the reference's)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--parallel", action="store_true",
                    help="train a label count's seeds at once (igan semisup --seeds K --parallel), unless some of "
                         "them were started already")
    ap.add_argument("--recipe", default="reference", help="reference (default) or paper-v1 (igan.recipes)")
    ap.add_argument("--tag", help="the experiment's folder under --out (default: recipe and extra flags)")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop training after this many seconds (checkpoints saved; run again to continue)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reproduce_mnist"))
    ap.add_argument("extra", nargs="*", help="after --: more igan semisup flags")
    args = ap.parse_args()
    if args.max_seconds is not None:
        DEADLINE.append(time.monotonic() + args.max_seconds)
    tag = args.tag or "_".join([args.recipe, *(a.lstrip("-") for a in args.extra)])
    out = args.out / tag
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for labels in args.labels:
        base = out / f"labels{labels}"
        dirs = [base / f"seed{args.seed + i}" for i in range(args.seeds)]
        started = [(d / "checkpoints" / "last.safetensors").is_file() for d in dirs]
        done = [finished(d, args.epochs) is not None for d in dirs]
        if _late() and not all(done):  # no time left for this label count: report how far it got
            runs = [{"seed": args.seed + i, "label_seed": args.label_seed + i, **progress(d, args.epochs),
                     "seconds": 0, "resumed": False, "skipped": True} for i, d in enumerate(dirs)]
        elif args.parallel and args.seeds > 1 and not any(d.exists() for d in dirs):
            runs = train_together(args, labels, base)
        elif args.parallel and args.seeds > 1 and all(started) and not all(done):
            runs = train_together(args, labels, base, resume=True)
        else:
            runs = [train_seed(args, labels, args.seed + i, args.label_seed + i, d) for i, d in enumerate(dirs)]
        errors = [r["test_errors"] for r in runs if r["test_errors"] is not None]
        rows.append({"labels": labels, "seeds": args.seeds, "epochs": args.epochs, "dataset": args.dataset,
                     "finished": all(r["finished"] for r in runs),
                     "epochs_done": min((r["epochs_done"] for r in runs), default=0),
                     "recipe": args.recipe, "extra": args.extra, "curves": {r["seed"]: curve(base / f"seed{r['seed']}")
                                                                             for r in runs},
                     "test_errors": errors, "mean": statistics.fmean(errors) if errors else None,
                     "std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
                     "paper": PAPER.get(labels, "") if args.dataset == "mnist" else "", "runs": runs})
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| labels | seeds | epochs | igan test errors | per seed | paper (of 10,000) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['labels']} | {r['seeds']} | {_epochs_cell(r)} | {_errors_cell(r)} | "
              f"{', '.join(str(e) for e in r['test_errors'])} | {r['paper']} |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not all(r["finished"] for r in rows):
        print("not finished (time budget spent): run the same command again to continue", file=sys.stderr)


if __name__ == "__main__":
    main()
