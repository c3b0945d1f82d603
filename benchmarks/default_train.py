"""How long `igan train` (no arguments: the embedded digits) takes, and whether its samples are digits.

Runs the README's main job in a subprocess exactly as a user would (`python -m igan train`), times it
wall-clock, samples a grid from the checkpoint with `igan sample`, and scores 1000 samples with the
offline digits classifier (`igan evaluate --metric classifier-score`): a score near the real data's
(about 9 of 10 classes) means confident, varied digits; 1 means noise or a single class.

    python benchmarks/default_train.py [--out benchmarks/results/default_train.json] [--target 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def igan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "igan", *args], capture_output=True, text=True, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/default_train.json"))
    ap.add_argument("--target", type=float, default=60.0, help="wall-time target in seconds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        summary = json.loads(igan("train", "--out", str(run_dir), "--json").stdout)
        wall = time.perf_counter() - t0
        ckpt = run_dir / "checkpoints" / "last.safetensors"
        grid = Path(tmp) / "grid.png"
        igan("sample", str(ckpt), "-n", "64", "-o", str(grid))
        score = json.loads(igan("evaluate", str(ckpt), "--metric", "classifier-score", "--n", "1000",
                                "--json").stdout)
        grids = sorted((run_dir / "samples").glob("*.png"))
    result = {"command": "igan train", "wall_seconds": round(wall, 1), "target_seconds": args.target,
              "train_seconds": summary["seconds"], "steps": summary["steps"], "epochs": summary["epochs"],
              "sample_grids": len(grids), "sample_ok": True, "classifier_score": score,
              "python": platform.python_version(), "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ref = score.get("real_reference") or score.get("reference") or {}
    print(f"{'what':<28} {'value':>12}")
    print(f"{'igan train wall time (s)':<28} {wall:>12.1f}   target <= {args.target:.0f}")
    print(f"{'training loop (s)':<28} {summary['seconds']:>12.1f}   ({summary['steps']} steps)")
    print(f"{'classifier score (of 10)':<28} {score['mean']:>12.2f}   real data: {ref}")
    print(f"{'sample grids written':<28} {len(grids):>12d}")
    print(f"json: {args.out}")


if __name__ == "__main__":
    main()
