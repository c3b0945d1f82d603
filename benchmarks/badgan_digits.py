"""What each Bad-GAN term buys on the embedded digits: test errors, mean ± std over seeds, per configuration.

Every configuration is one ``igan semisup --seeds K --no-baseline`` call (model seed and labelled split
both vary with the seed, as the paper's protocol), so the numbers are paired: seed i of every row saw
the same labelled examples. Prints a markdown table and writes JSON.

    python benchmarks/badgan_digits.py --seeds 5
    python benchmarks/badgan_digits.py --seeds 5 --only fm pt+ent --epochs 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "fm": [],
    "fm+pt": ["--pull-away"],
    "fm+ent": ["--cond-entropy"],
    "fm+ld": ["--low-density"],
    "fm+pt+ent": ["--pull-away", "--cond-entropy"],
    "fm+ld+ent": ["--low-density", "--cond-entropy"],
    "fm+pt+ld+ent": ["--pull-away", "--low-density", "--cond-entropy"],
}


def run(name: str, flags: list[str], args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "igan", "semisup", "--dataset", args.dataset, "--seeds", str(args.seeds),
           "--no-baseline", "--json", "--device", "cpu", "--out", str(out / name), *flags, *args.extra]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[3:])} exited with {proc.returncode}")
    result = json.loads(proc.stdout)
    errors = [r["test_errors"] for r in result.get("runs", [result])]
    return {"name": name, "flags": flags, "test_errors": errors, "mean": statistics.fmean(errors),
            "std": statistics.stdev(errors) if len(errors) > 1 else 0.0, "test_size": result.get("test_size"),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, help="default: the model's (40 on digits)")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="configurations to run (default: all)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/badgan_digits"))
    ap.add_argument("extra", nargs="*", help="after --: flags for every configuration (e.g. --ld-weight 1e-3)")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} is not empty (each configuration writes its seed folders there); use another --out")
    rows = []
    for name in args.only or CONFIGS:
        rows.append(run(name, CONFIGS[name], args, args.out))
        r = rows[-1]
        print(f"{name}: {r['mean']:.1f} ± {r['std']:.1f}  ({', '.join(map(str, r['test_errors']))})  {r['seconds']} s",
              file=sys.stderr)
    base = rows[0]["test_errors"] if rows and rows[0]["name"] == "fm" else None
    lines = [f"| configuration | test errors (of {rows[0]['test_size']}), mean ± std over {args.seeds} seeds | "
             "per seed | paired change vs fm |", "|---|---|---|---|"]
    for r in rows:
        delta = ""
        if base is not None and r["name"] != "fm":
            diffs = [a - b for a, b in zip(r["test_errors"], base)]
            delta = f"{statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs) if len(diffs) > 1 else 0:.1f}"
        lines.append(f"| {r['name']} | {r['mean']:.1f} ± {r['std']:.1f} | {', '.join(map(str, r['test_errors']))} | "
                     f"{delta} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps({"extra": args.extra, "rows": rows}, indent=2) + "\n")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
