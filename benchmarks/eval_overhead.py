"""What ``--eval-every`` costs: its share of a training run's time, and the cost of one evaluation.

Trains the same run (same seed) without evaluation and with ``--eval-every N`` for each N asked for, in
subprocesses exactly as a user would (``python -m igan train ... --json``), and compares the training
loop's seconds (``summary.json``'s ``seconds``: steps, epoch ends and checkpoints, evaluations included).
Each evaluation's own cost is read from the line it prints (``eval epoch E: ... (X s for N samples)``).
The offline classifier is trained (and cached) by a warm-up evaluation first, so the numbers are those
of every run after a user's first.

    python benchmarks/eval_overhead.py                                  # digits, its 40 epochs, N = 1, 5
    python benchmarks/eval_overhead.py --dataset mnist --data-dir /path/to/mnist --epochs 3 --every 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVAL_LINE = re.compile(r"^eval epoch \d+: .* \(([\d.]+) s for (\d+) samples")


def train(tmp: Path, name: str, common: list[str], extra: list[str]) -> tuple[dict, list[float]]:
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "igan", "train", *common, *extra, "--out", str(tmp / name),
                           "--json"], capture_output=True, text=True, env=env, check=True)
    costs = [float(m.group(1)) for line in proc.stderr.splitlines() if (m := EVAL_LINE.match(line))]
    return json.loads(proc.stdout), costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="default: the model's (40 for digits)")
    ap.add_argument("--every", type=int, nargs="+", default=[1, 5], help="the --eval-every values to time")
    ap.add_argument("--eval-n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting (the median is reported)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_overhead.json"))
    args = ap.parse_args()
    base_args = ["--dataset", args.dataset, "--device", "cpu", "--log-every", "1000000", "--eval-n", str(args.eval_n)]
    if args.data_dir:
        base_args += ["--data-dir", args.data_dir]
    common = base_args + (["--epochs", str(args.epochs)] if args.epochs else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # warm-up: trains and caches the offline classifier (and the dataset's page cache)
        train(tmp_path, "warmup", base_args + ["--steps", "1"], ["--eval-every", "1"])
        settings = [("no evaluation", [])] + [(f"--eval-every {n}", ["--eval-every", str(n)]) for n in args.every]
        for label, extra in settings:
            seconds, costs, epochs = [], [], None
            for r in range(args.repeats):
                summary, c = train(tmp_path, f"{label.replace(' ', '_')}-{r}", common, extra)
                seconds.append(summary["seconds"])
                costs += c
                epochs = summary["epochs"]
            rows.append({"setting": label, "seconds": statistics.median(seconds), "evaluations": len(costs) // args.repeats,
                         "seconds_per_evaluation": round(statistics.median(costs), 3) if costs else None,
                         "epochs": epochs})
    base = rows[0]["seconds"]
    for row in rows[1:]:
        row["share_of_run"] = round((row["seconds"] - base) / row["seconds"], 3)
        row["share_from_eval_lines"] = round(row["evaluations"] * row["seconds_per_evaluation"] / row["seconds"], 3)
    result = {"dataset": args.dataset, "eval_n": args.eval_n, "rows": rows, "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'setting':<18} {'loop s':>8} {'evals':>6} {'s/eval':>8} {'share':>7} {'share (eval lines)':>19}")
    for row in rows:
        share = f"{100 * row['share_of_run']:.1f}%" if "share_of_run" in row else "-"
        lines = f"{100 * row['share_from_eval_lines']:.1f}%" if "share_from_eval_lines" in row else "-"
        per = f"{row['seconds_per_evaluation']:.2f}" if row["seconds_per_evaluation"] else "-"
        print(f"{row['setting']:<18} {row['seconds']:>8.1f} {row['evaluations']:>6} {per:>8} {share:>7} {lines:>19}")
    print(f"json: {args.out}")


if __name__ == "__main__":
    main()
