"""Vectorised seeds: how much does one batched step of K seeds (``--parallel``) cost against K separate steps?

The workload is the paper's semi-supervised MNIST step (the MLP pair, batch 100, K+1 loss, feature
matching, EMA of D; as ``benchmarks/step_speed.py``) on synthetic MNIST-shaped data. For each K:

- ``sequential``: K runs built as ``igan semisup --seeds K`` builds them, each advanced by
  ``igan.train.train_step`` in turn (what the sequential protocol costs per step of all K seeds);
- ``parallel``: the same K seeds in one ``igan.parallel.ParallelRuns``, one ``step()`` for all K
  (``--mode batched``, default: one vmapped step; ``--mode interleaved``: each run's step in turn).

Rounds alternate the two sides in the same process; the table gives the median ms per step of all K
seeds, the ratio parallel/sequential (target on CPU: <= 1, "no slower per seed than sequential runs")
and parallel K vs one seed's step (target on an H100: 10 seeds <= 1.5x one seed). JSON goes to --out.

    python benchmarks/parallel_seeds.py                          # CPU, 1 thread, K = 1, 2, 4
    python benchmarks/parallel_seeds.py --threads 2 --seeds 2,4
    python benchmarks/parallel_seeds.py --device cuda --threads 0 --seeds 1,10
    python benchmarks/parallel_seeds.py --device cuda --threads 0 --seeds 1,10 --fast-path on --capture on

``--fast-path on`` with ``--capture on`` captures both sides' steps as CUDA graphs (``igan.capture``: each
sequential run's step, and the batched step of all K).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _synthetic import BenchData  # noqa: E402  (benchmarks/ is on sys.path)
from igan.config import RunConfig
from igan.options import collect_options
from igan.parallel import build_parallel
from igan.plugins import get_plugin_manager
from igan.train import OneRun

N_TRAIN, N_TEST = 6000, 1000


FAST_PATH = {"auto": None, "on": True, "off": False}


def _config(pm, device: str, seed: int, fast_path: bool | None = False, batch_size: int = 100) -> RunConfig:
    options = collect_options(pm).defaults("semisup")
    options["label_seed"] = 1 + seed
    return RunConfig(command="semisup", dataset="bench_mnist", model="mnist_mlp", batch_size=batch_size,
                     steps=10**9, device=device, seed=seed, lr=0.003, fast_path=fast_path, options=options)


def _pm():
    return get_plugin_manager(extra=[("bench_data", BenchData(N_TRAIN, N_TEST))])


def sides(k: int, device: str, tmp: Path, mode: str = "batched", fast_path: bool | None = False,
          batch_size: int = 100):
    """(sequential step, parallel step) over K seeds, each on runs set up as fit() sets them up."""
    from igan.train import build_run

    seq_runs = []
    for s in range(k):
        pm = _pm()
        run = build_run(_config(pm, device, s, fast_path, batch_size), pm, tmp / f"seq{k}_{s}")
        pm.hook.igan_train_start(run=run)
        seq_runs.append(OneRun(run))  # the loop's driver: the step captured where igan.capture selects it
    pms = [_pm() for _ in range(k)]
    par = build_parallel([_config(pm, device, s, fast_path, batch_size) for s, pm in enumerate(pms)], pms,
                         [tmp / f"par{k}_{s}" for s in range(k)], mode=mode)
    for i, run in enumerate(par.runs):
        with par.active(i):
            run.pm.hook.igan_train_start(run=run)

    def sequential():
        for trainer in seq_runs:
            trainer.step()
            trainer.runs[0].step += 1

    def parallel():
        par.step()
        for run in par.runs:
            run.step += 1
    sequential.trainers, parallel.trainer = seq_runs, par
    return sequential, parallel


def _captured(step) -> bool:
    from igan.capture import CapturedStep

    return isinstance(step, CapturedStep) and not step.eager and step.graph is not None


def timed(fn, steps: int, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,2,4", help="comma-separated K values (default 1,2,4)")
    p.add_argument("--steps", type=int, default=5, help="steps per side per round (default 5)")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per K (default 8)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=("batched", "interleaved"), default="batched",
                   help="the parallel side: one vmapped step (default; the GPU default of --parallel) or each "
                        "run's own step in turn (the CPU default)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads(N) (0: PyTorch's default)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (default 100, the paper's)")
    p.add_argument("--fast-path", choices=tuple(FAST_PATH), default="off",
                   help="igan's --fast-path for both sides (default off: eager steps; auto: on for CUDA)")
    p.add_argument("--capture", choices=("auto", "on", "off"), default="auto",
                   help="IGAN_CAPTURE: capture the steps as CUDA graphs (needs CUDA and the fast path)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/parallel_seeds.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["IGAN_CAPTURE"] = {"auto": "auto", "on": "1", "off": "0"}[args.capture]
    from igan.capture import WARMUP

    warmup = max(args.warmup, WARMUP + 2) if args.fast_path != "off" else args.warmup
    ks = [int(v) for v in args.seeds.split(",") if v.strip()]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        for k in ks:
            seq, par = sides(k, args.device, Path(tmp_name), args.mode, FAST_PATH[args.fast_path], args.batch_size)
            for fn in (seq, par):
                timed(fn, warmup, sync)
            ms: dict[str, list[float]] = {"sequential": [], "parallel": []}
            for r in range(args.rounds):
                for name in (("sequential", "parallel") if r % 2 == 0 else ("parallel", "sequential")):
                    ms[name].append(1000 * timed(seq if name == "sequential" else par, args.steps, sync))
                print(f"  K={k} round {r + 1}: sequential {ms['sequential'][-1]:.1f} ms, parallel "
                      f"{ms['parallel'][-1]:.1f} ms", file=sys.stderr, flush=True)
            rows.append({"seeds": k, "sequential_ms": round(statistics.median(ms["sequential"]), 2),
                         "parallel_ms": round(statistics.median(ms["parallel"]), 2),
                         "paired_ratio": round(statistics.median(a / b for a, b in zip(ms["parallel"],
                                                                                       ms["sequential"])), 3),
                         "sequential_captured": all(_captured(t._step) for t in seq.trainers),
                         "parallel_captured": _captured(par.trainer._captured),
                         "sequential_rounds": [round(v, 2) for v in ms["sequential"]],
                         "parallel_rounds": [round(v, 2) for v in ms["parallel"]]})
    one = next((r["sequential_ms"] for r in rows if r["seeds"] == 1), None)
    header = f"{'K':>3} {'sequential ms':>14} {'parallel ms':>12} {'par/seq':>8} {'par/one seed':>13}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        r["parallel_vs_one_seed"] = round(r["parallel_ms"] / one, 3) if one else None
        vs_one = f"{r['parallel_vs_one_seed']:.2f}x" if one else "-"
        print(f"{r['seeds']:>3} {r['sequential_ms']:>14.1f} {r['parallel_ms']:>12.1f} {r['paired_ratio']:>7.3f}x "
              f"{vs_one:>13}")
    cpu = not args.device.startswith("cuda")
    result = {"benchmark": "parallel_seeds",
              "command": " ".join(["python benchmarks/parallel_seeds.py",
                                   *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
              "date": dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "device": args.device,
              "device_name": platform.processor() if cpu else torch.cuda.get_device_name(torch.device(args.device)),
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "workload": f"semisup mnist_mlp, batch {args.batch_size}",
              "mode": args.mode, "fast_path": args.fast_path, "capture": args.capture,
              "steps_per_round": args.steps, "rounds": args.rounds,
              "seconds": round(time.perf_counter() - t_start, 1), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
