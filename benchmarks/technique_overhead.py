"""What each technique adds to the cost of one training step (``igan.train.train_step``).

The paper's MNIST pair (model ``mnist_mlp``: G 100-500-500-784, D 784-1000-500-250-250-250-1, weight
norm, Gaussian noise in D) at batch 100, trained on synthetic MNIST-shaped data (random uint8
[6000, 1, 28, 28] registered as dataset ``bench_mnist`` by a small extra plugin), so no files are needed.

Method: one Run per configuration (plain GAN, then each technique alone), all built in this process
with ``igan.train.build_run``. A warm-up round runs every configuration first; then, in each of
``--rounds`` rounds, every configuration runs ``--steps`` consecutive steps (the order rotates from
round to round, so slow phases of a shared machine hit every configuration alike) and its mean
ms/step for the round is recorded. The table gives the median over the rounds, its ratio to the plain
GAN's median (the targets apply to this ratio) and the "paired" ratio, the median over rounds of the
ratio to the plain GAN's time in the same round, which a busy shared machine disturbs less.
``torch.set_num_threads`` is left at PyTorch's default unless ``--threads`` is given.

    python benchmarks/technique_overhead.py                       # default: --steps 5 --rounds 12
    python benchmarks/technique_overhead.py --semisup             # the Bad-GAN terms on the K+1 model
    python benchmarks/technique_overhead.py --device cuda --out benchmarks/results/gpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from igan.config import RunConfig
from igan.options import collect_options
from igan.plugins import get_plugin_manager
from _synthetic import BenchData  # noqa: E402  (benchmarks/ is on sys.path)
from igan.train import Run, build_run, train_step

# (name, options switched on, target ratio vs plain, or {device type: target}). Targets: VBN costs one
# extra G forward of the reference batch (the paper says it is expensive, §3.5); everything else should
# be nearly free. Minibatch discrimination on the CPU: a perfect pairwise kernel would still cost ≈ 15 %
# of the MNIST D's matrix products (docs/performance.md), so ≈ 1.1× is its arithmetic floor there and
# 1.4× the target; on a GPU, where the step is launch-bound, 1.1×.
CONFIGS: list[tuple[str, dict, float | dict | None]] = [
    ("plain", {}, None),
    ("fm", {"fm": True}, 1.1),
    ("mbd", {"mbd": True}, {"cpu": 1.4, "cuda": 1.1}),
    ("ha", {"ha": True}, 1.1),
    ("ls", {"ls": True}, 1.1),
    ("vbn", {"vbn": True}, 1.3),
]
# --semisup: the semi-supervised K+1 model (feature matching, 100 labels) and the Bad-GAN terms on it
# (igan.techniques.pull_away / cond_entropy / low_density); "plain" is that model without them.
SEMISUP_CONFIGS: list[tuple[str, dict, float | dict | None]] = [
    ("plain", {}, None),
    ("pt", {"pull_away": True}, 1.1),
    ("ent", {"cond_entropy": True}, 1.1),
    ("ld", {"low_density": True}, 1.1),
    ("pt+ent+ld", {"pull_away": True, "cond_entropy": True, "low_density": True}, 1.2),
]
N_IMAGES = 6000


def make_run(options: dict, args: argparse.Namespace, data: BenchData, run_dir: Path) -> Run:
    pm = get_plugin_manager(extra=[("bench_data", data)])
    command = "semisup" if args.semisup else "train"
    values = {**collect_options(pm).defaults(command), **options}
    config = RunConfig(command=command, dataset="bench_mnist", model="mnist_mlp", batch_size=args.batch_size,
                       steps=10**9, device=args.device, seed=0, options=values)
    return build_run(config, pm, run_dir)


def time_steps(run: Run, steps: int) -> float:
    """Mean seconds per step over ``steps`` consecutive steps."""
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(run)
        run.step += 1
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="steps per configuration per round (default 5)")
    p.add_argument("--rounds", type=int, default=12, help="timed rounds after the warm-up round (default 12)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (default 100, the paper's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) first (default: leave PyTorch's default). On a busy shared "
                        "machine, 1 thread is far less disturbed by other processes than the default")
    p.add_argument("--semisup", action="store_true",
                   help="the semi-supervised K+1 model (100 labels) and the Bad-GAN terms, instead of a plain GAN")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/technique_overhead.json"),
                   help="JSON results file (default benchmarks/results/technique_overhead.json)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    configs = SEMISUP_CONFIGS if args.semisup else CONFIGS
    data = BenchData(N_IMAGES)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: make_run(opts, args, data, Path(tmp) / name) for name, opts, _ in configs}
        for run in runs.values():
            run.pm.hook.igan_train_start(run=run)  # HA records its initial parameters here
        names = list(runs)
        for name in names:  # warm-up (allocator, first-call overheads)
            time_steps(runs[name], max(2, args.steps // 4))
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                samples[name].append(1000.0 * time_steps(runs[name], args.steps))
            print(f"round {r + 1}/{args.rounds}: " + " ".join(f"{n}={samples[n][-1]:.1f}" for n in names),
                  file=sys.stderr, flush=True)

    base = statistics.median(samples["plain"])
    rows = []
    device_type = torch.device(args.device).type
    for name, _, target in configs:
        if isinstance(target, dict):
            target = target.get(device_type)
        med = statistics.median(samples[name])
        ratio = med / base
        paired = statistics.median(v / p for v, p in zip(samples[name], samples["plain"]))
        rows.append({"technique": name, "ms_per_step": round(med, 3), "ratio": round(ratio, 3),
                     "paired_ratio": round(paired, 3), "target": target,
                     "meets_target": None if target is None else ratio <= target,
                     "ms_per_step_rounds": [round(v, 3) for v in samples[name]]})

    header = f"{'technique':<10} {'ms/step':>8} {'ratio':>6} {'target':>7}  {'ok':<3}  {'paired':>6}"
    lines = [header, "-" * len(header)]
    for row in rows:
        target = f"<={row['target']:.1f}x" if row["target"] else "-"
        ok = "" if row["meets_target"] is None else ("yes" if row["meets_target"] else "NO")
        lines.append(f"{row['technique']:<10} {row['ms_per_step']:>8.2f} {row['ratio']:>5.2f}x {target:>7}  "
                     f"{ok:<3}  {row['paired_ratio']:>5.2f}x")
    print("\n".join(lines))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after", file=sys.stderr)

    result = {
        "benchmark": "technique_overhead",
        "command": " ".join(["python benchmarks/technique_overhead.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "model": "mnist_mlp", "run_command": "semisup" if args.semisup else "train", "dataset": f"synthetic uint8 [{N_IMAGES}, 1, 28, 28]",
        "batch_size": args.batch_size, "steps_per_round": args.steps, "rounds": args.rounds,
        "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
        "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
