"""The GPU path in one command: CUDA tests, step speed, vectorised seeds, Inception throughput, the CLI.

Made for one short call on a GPU machine (an H100/H200 lent for minutes; see docs/performance.md,
"Running the device check"). It runs five parts, each as subprocesses under its own time budget (a
part that overruns is stopped and reported, a part whose turn comes after the overall deadline is
skipped with a note), so the call always returns results:

a. ``tests``: the suite's CUDA-marked tests (``pytest -m cuda``);
b. ``step_speed``: ``benchmarks/step_speed.py`` on the MNIST (semisup) and CIFAR-10 pairs, igan against
   the hand-written step in the same process: eager, fast path (``torch.compile``, TF32) and whole-step
   capture (``igan.capture``; the hand-written step captured too);
c. ``parallel_seeds``: ``benchmarks/parallel_seeds.py`` for 1 and 10 seeds, batched, eager and captured;
d. ``inception``: ``benchmarks/eval_speed.py``, Inception Score network throughput (random weights);
e. ``cli``: ``igan train``, ``semisup``, ``sample``, ``evaluate``, ``report`` end to end on the device for a
   few steps each, and a resume.

Everything goes into the output folder: ``device_check.json`` (every part's status, timings and the
benchmarks' own JSON), ``device_check.log`` (all output) and ``summary.md`` (the table printed at the
end). ``--tiny`` runs the same parts on the CPU with tiny settings (tests/test_device_scripts.py), so
the script cannot rot; on a CPU the CUDA tests are skipped and the fast-path and capture rows are
skipped with a note.

    bash benchmarks/device_check.sh OUT              # on the GPU machine: at most 8 minutes
    python benchmarks/device_check.py OUT --tiny     # on a CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

# seconds per part on a GPU machine (8 minutes in all, a little kept for start-up and the summary)
BUDGETS = {"tests": 90, "step_speed": 195, "parallel_seeds": 65, "inception": 35, "cli": 80}
# --tiny checks that every part works, not how fast: budgets a busy, shared CPU still meets (an idle
# 2-core machine needs about half a minute for all five)
TINY_BUDGETS = {"tests": 300, "step_speed": 300, "parallel_seeds": 300, "inception": 300, "cli": 300}


class Check:
    def __init__(self, out: Path, tiny: bool, total: float, device: str) -> None:
        self.out, self.tiny, self.device = out, tiny, device
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + total
        self.log = open(out / "device_check.log", "a", encoding="utf-8")
        self.tmp = Path(tempfile.mkdtemp(prefix="igan-device-check-"))
        self.parts: dict[str, dict[str, Any]] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def say(self, text: str) -> None:
        stamp = f"[{time.perf_counter() - self.t0:6.1f}s] "
        print(stamp + text, file=sys.stderr, flush=True)
        self.log.write(stamp + text + "\n")
        self.log.flush()

    def run(self, name: str, cmd: list[str], budget: float, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> dict[str, Any]:
        """Run one command within ``budget`` seconds (and the overall deadline); all output to the log."""
        limit = min(budget, self.left())
        if limit < 5:
            self.say(f"{name}: skipped, the time budget is spent")
            return {"command": _shown(cmd), "status": "skipped", "note": "time budget spent"}
        self.say(f"{name}: {_shown(cmd)} (limit {limit:.0f} s)")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **(env or {})}
        if self.tiny:  # on a CPU compiling is slower and not what --tiny checks
            full_env["IGAN_COMPILE"] = "0"
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=limit)
            output, code, status = proc.stdout, proc.returncode, "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
            code, status = None, "timeout"
        seconds = round(time.perf_counter() - t, 1)
        self.log.write(output or "")
        self.log.write(f"\n--- {name}: {status} (exit {code}) in {seconds} s\n")
        self.log.flush()
        self.say(f"{name}: {status} in {seconds} s")
        result = {"command": _shown(cmd), "status": status, "exit": code, "seconds": seconds,
                  "output_tail": (output or "")[-1500:], "output_tail_full": output or ""}
        if env:
            result["env"] = env
        return result

    def part(self, name: str, fn: Callable[[float], dict[str, Any]]) -> None:
        budget = (TINY_BUDGETS if self.tiny else BUDGETS)[name]
        t = time.perf_counter()
        if self.left() < 5:
            self.parts[name] = {"status": "skipped", "note": "the overall time budget was spent before this part"}
            self.say(f"part {name}: skipped (overall budget spent)")
            return
        try:
            result = fn(min(budget, self.left()))
        except Exception as exc:  # noqa: BLE001 - a broken part must not lose the others' results
            result = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
        result.setdefault("seconds", round(time.perf_counter() - t, 1))
        _drop_full_output(result)
        result["budget_s"] = budget
        self.parts[name] = result
        self.save()

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def save(self) -> None:
        data = {"benchmark": "device_check", "date": dt.datetime.now().isoformat(timespec="seconds"),
                "command": _shown([sys.executable, *sys.argv]), "tiny": self.tiny, "device": self.device,
                **environment(), "seconds": round(time.perf_counter() - self.t0, 1), "parts": self.parts}
        (self.out / "device_check.json").write_text(json.dumps(data, indent=2) + "\n")


def _drop_full_output(obj: Any) -> None:
    """The whole output is in the log; the JSON keeps only tails."""
    if isinstance(obj, dict):
        obj.pop("output_tail_full", None)
        for v in obj.values():
            _drop_full_output(v)


def _shown(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def environment() -> dict[str, Any]:
    try:
        import torch

        cuda = torch.cuda.is_available()
        return {"torch": torch.__version__, "cuda_available": cuda, "cuda_version": torch.version.cuda,
                "gpu": torch.cuda.get_device_name(0) if cuda else None, "python": platform.python_version(),
                "platform": platform.platform(), "cpus": os.cpu_count()}
    except Exception as exc:  # noqa: BLE001
        return {"torch": None, "error": str(exc)}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# the parts


def part_tests(c: Check, budget: float) -> dict[str, Any]:
    xml = c.tmp / "cuda_tests.xml"
    target = "tests/test_cuda.py" if c.tiny else "tests"
    # --continue-on-collection-errors: a test module that cannot be imported there (a missing optional
    # package) must not stop the CUDA tests of the others
    r = c.run("tests", c.python("-m", "pytest", target, "-m", "cuda", "-q", "-p", "no:cacheprovider",
                                "--continue-on-collection-errors", f"--junitxml={xml}"), budget)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    if xml.is_file():
        root = ET.parse(xml).getroot()
        for suite in root.iter("testsuite"):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
        for case in root.iter("testcase"):
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                               "message": (bad.get("message") or "")[:300]})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if r["status"] == "failed" and r["exit"] == 5:  # pytest: no test collected
        r["status"] = "ok"
    return {**r, "counts": counts, "failed": failed}


def part_step_speed(c: Check, budget: float) -> dict[str, Any]:
    """Eager (both pairs in one process), then the fast path and the captured step, each pair in its own
    process: compiling can be slow, and what finished must come back even if the rest runs out of time.
    Each run gets the time left divided by the runs still to come."""
    cuda = c.device == "cuda"
    common = ["--device", c.device, "--threads", "0" if cuda else "1"]
    if c.tiny:
        common += ["--batch-size", "10", "--steps", "1", "--rounds", "1", "--warmup", "1", "--max-seconds", "0"]
        pairs = ["semisup"]
    else:
        common += ["--steps", "20", "--rounds", "8", "--warmup", "5", "--max-seconds", "20"]
        pairs = ["semisup", "cifar"]
    eager = ["--fast-path", "off", "--capture", "off", "--check-steps", "0" if c.tiny else "2"]
    fast = ["--fast-path", "on", "--capture", "off", "--check-steps", "0"]
    captured = ["--fast-path", "on", "--capture", "on", "--hand-capture", "--check-steps", "0"]
    plan = [("eager", ",".join(pairs), eager)]
    plan += [(f"{mode} {w}", w, flags) for w in pairs for mode, flags in (("fast_path", fast), ("captured", captured))]
    runs = {}
    end = time.perf_counter() + budget
    for i, (label, workloads, flags) in enumerate(plan):
        if not cuda and label != "eager":
            runs[label] = {"status": "skipped", "note": "needs CUDA (on a CPU the fast path measured slower and "
                                                        "nothing can be captured)"}
            continue
        out = c.tmp / f"step_speed_{i}.json"
        share = (end - time.perf_counter()) / (len(plan) - i)
        r = c.run(f"step_speed {label}", c.python(str(BENCH / "step_speed.py"), *common, "--workloads", workloads,
                                                  *flags, "--out", str(out)), share)
        r["result"] = _load(out)
        runs[label] = r
    return {"status": _worst(runs), "modes": runs}


def part_parallel_seeds(c: Check, budget: float) -> dict[str, Any]:
    cuda = c.device == "cuda"
    common = ["--device", c.device, "--threads", "0" if cuda else "1", "--mode", "batched"]
    common += (["--seeds", "1,2", "--batch-size", "10", "--steps", "1", "--rounds", "1", "--warmup", "1"] if c.tiny
               else ["--seeds", "1,10", "--steps", "10", "--rounds", "6"])
    runs = {}
    end = time.perf_counter() + budget
    for mode, flags, env in (("eager", ["--fast-path", "off", "--capture", "off"], None),
                             # captured without torch.compile: the batched step does not use the compiled
                             # modules, and compiling the 10 sequential runs' models would take minutes
                             ("captured", ["--fast-path", "on", "--capture", "on"], {"IGAN_COMPILE": "0"})):
        if not cuda and mode == "captured":
            runs[mode] = {"status": "skipped", "note": "needs CUDA"}
            continue
        out = c.tmp / f"parallel_seeds_{mode}.json"
        r = c.run(f"parallel_seeds {mode}", c.python(str(BENCH / "parallel_seeds.py"), *common, *flags, "--out",
                                                     str(out)),
                  budget * 0.4 if mode == "eager" and cuda else end - time.perf_counter(), env=env)
        r["result"] = _load(out)
        runs[mode] = r
    return {"status": _worst(runs), "modes": runs}


def part_inception(c: Check, budget: float) -> dict[str, Any]:
    out = c.tmp / "eval_speed.json"
    args = (["--device", "cpu", "--n", "2", "--batch-sizes", "2", "--classifier-n", "100", "--classifier-batch-sizes",
             "50"] if c.tiny else ["--device", c.device, "--n", "2000", "--batch-sizes", "100,250,500",
                                   "--classifier-n", "10000"])
    r = c.run("inception", c.python(str(BENCH / "eval_speed.py"), *args, "--out", str(out)), budget)
    r["result"] = _load(out)
    r["note"] = ("random-weight Inception (no download); torch-fidelity is not installed on the device machine, so "
                 "its throughput on the same device is not measured here")
    return r


def part_cli(c: Check, budget: float) -> dict[str, Any]:
    """Every command end to end on the device, a few steps each, in one process (benchmarks/_cli_batch.py:
    torch starts once); ``igan train`` and the resume with the defaults (on CUDA: fast path and capture),
    the others without compiling (saves the compile time)."""
    runs = c.tmp / "runs"
    dev = ["--device", c.device]
    small = ["--batch-size", "10"] if c.tiny else []
    steps = 2 if c.tiny else 8
    no_compile = {"IGAN_COMPILE": "0"}
    train, semi = runs / "train", runs / "semisup"
    ckpt = str(train / "checkpoints" / "last.safetensors")
    commands = [
        ("train", ["train", "--dataset", "digits", "--steps", str(steps), "--log-every", "2", *small, *dev, "--out",
                   str(train), "--json"], {}),
        ("semisup", ["semisup", "--dataset", "digits", "--steps", str(steps), "--log-every", "2", *small, *dev,
                     "--no-baseline", "--out", str(semi), "--json"], no_compile),
        ("sample", ["sample", ckpt, "-n", "64", *dev, "-o", str(runs / "samples.png")], no_compile),
        ("evaluate", ["evaluate", str(semi / "checkpoints" / "last.safetensors"), "--metric", "error", *dev,
                      "--json"], no_compile),
        ("report", ["report", str(train), str(semi), "-o", str(runs / "report.html")], no_compile),
        ("resume", ["train", "--dataset", "digits", "--steps", str(steps + 4), "--log-every", "2", *small, *dev,
                    "--resume", ckpt, "--json"], {}),
    ]
    spec = c.tmp / "cli_commands.json"
    spec.write_text(json.dumps([{"name": n, "args": a, "env": e} for n, a, e in commands]))
    r = c.run("cli", c.python(str(BENCH / "_cli_batch.py"), str(spec)), budget)
    results: dict[str, Any] = {}
    for line in (r.get("output_tail_full") or "").splitlines():
        if line.startswith('{"name"'):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            item["status"] = "ok" if item["exit"] == 0 else "failed"
            results[item.pop("name")] = item
    for name, args, _ in commands:
        if name not in results:
            results[name] = {"status": "not run" if r["status"] == "ok" else r["status"],
                             "note": f"the batch process ended ({r['status']}) before this command finished"}
        results[name]["command"] = "igan " + _shown(args)
    r.pop("output_tail_full", None)
    summary = _load(train / "summary.json") or {}
    return {"status": _worst(results), "seconds": r.get("seconds"), "commands": results, "train_summary": summary}


def _worst(runs: dict[str, dict[str, Any]]) -> str:
    states = [r.get("status") for r in runs.values()]
    for s in ("failed", "timeout"):
        if s in states:
            return s
    return "ok" if "ok" in states else "skipped"


# ----------------------------------------------------------------------------------------------
# the summary


def summary(c: Check) -> str:
    env = environment()
    lines = [f"# igan device check{' (--tiny)' if c.tiny else ''}", "",
             f"{env.get('gpu') or platform.processor() or 'CPU'}, torch {env.get('torch')}, CUDA "
             f"{env.get('cuda_version')}, Python {env.get('python')}, {dt.date.today().isoformat()}, "
             f"{time.perf_counter() - c.t0:.0f} s", "", "| part | status | seconds | result |", "|---|---|---:|---|"]
    for name, p in c.parts.items():
        lines.append(f"| {name} | {p.get('status')} | {p.get('seconds', '')} | {_headline(name, p)} |")
    lines += ["", "## Step speed (ms per step, median over rounds)", "",
              "| mode | workload | igan | hand-written | paired igan/hand | igan captured | hand captured |",
              "|---|---|---:|---:|---:|---|---|"]
    for mode, r in (c.parts.get("step_speed", {}).get("modes") or {}).items():
        rows = ((r.get("result") or {}).get("results")) or []
        if not rows:
            lines.append(f"| {mode} | - | {r.get('status')}: {r.get('note', '')} | | | | |")
        for row in rows:
            lines.append(f"| {mode} | {row['workload']} ({row.get('model')}) | {row['igan_ms_per_step']:.2f} | "
                         f"{row['hand_ms_per_step']:.2f} | {row['paired_ratio']:.3f} | {row.get('igan_captured')} | "
                         f"{row.get('hand_captured')} |")
    lines += ["", "## Vectorised seeds (ms per step of all K seeds)", "",
              "| mode | K | sequential | parallel (batched) | parallel / one seed | parallel captured |",
              "|---|---:|---:|---:|---:|---|"]
    for mode, r in (c.parts.get("parallel_seeds", {}).get("modes") or {}).items():
        rows = ((r.get("result") or {}).get("results")) or []
        if not rows:
            lines.append(f"| {mode} | - | {r.get('status')}: {r.get('note', '')} | | | |")
        for row in rows:
            vs = row.get("parallel_vs_one_seed")
            lines.append(f"| {mode} | {row['seeds']} | {row['sequential_ms']:.2f} | {row['parallel_ms']:.2f} | "
                         f"{'' if vs is None else f'{vs:.2f}x'} | {row.get('parallel_captured')} |")
    rows = ((c.parts.get("inception", {}).get("result") or {}).get("rows")) or []
    if rows:
        lines += ["", "## Evaluation networks (images per second)", "", "| network | batch | images/s |",
                  "|---|---:|---:|"]
        lines += [f"| {r['what']} | {r['batch_size']} | {r['images_per_s']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _headline(name: str, p: dict[str, Any]) -> str:
    if p.get("note") and p.get("status") == "skipped":
        return p["note"]
    if name == "tests":
        k = p.get("counts", {})
        text = f"{k.get('passed', 0)} passed, {k.get('failures', 0) + k.get('errors', 0)} failed, " \
               f"{k.get('skipped', 0)} skipped"
        return text + "".join(f"; FAILED {f['test']}" for f in p.get("failed", [])[:3])
    if name == "cli":
        return ", ".join(f"{k} {v.get('status')}" + (" (warned)" if v.get("warnings") else "")
                         for k, v in p.get("commands", {}).items())
    if name == "inception":
        rows = [r for r in ((p.get("result") or {}).get("rows") or []) if r["what"] == "inception"]
        return (f"best {max(r['images_per_s'] for r in rows):.0f} images/s" if rows else p.get("note", "")[:80])
    modes = p.get("modes") or {}
    return ", ".join(f"{m} {r.get('status')}" for m, r in modes.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder (device_check.json, device_check.log, summary.md)")
    ap.add_argument("--tiny", action="store_true", help="tiny settings on the CPU (the test of this script)")
    ap.add_argument("--budget", type=float, default=None,
                    help="overall seconds (default 465 on a GPU: the call's 8 minutes less start-up; 1500 --tiny)")
    ap.add_argument("--parts", default="tests,step_speed,parallel_seeds,inception,cli",
                    help="comma-separated subset of the parts")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.tiny:
        print("device_check: no CUDA device here; running the --tiny CPU version", file=sys.stderr)
        args.tiny = True
    c = Check(args.out, args.tiny, args.budget or (1500.0 if args.tiny else 465.0), device)
    c.say(f"device check on {device}: {environment()}")
    parts = {"tests": part_tests, "step_speed": part_step_speed, "parallel_seeds": part_parallel_seeds,
             "inception": part_inception, "cli": part_cli}
    for name in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if name not in parts:
            ap.error(f"unknown part {name!r} (choose from {', '.join(parts)})")
        c.part(name, lambda budget, fn=parts[name]: fn(c, budget))
    text = summary(c)
    (args.out / "summary.md").write_text(text)
    c.save()
    print(text)
    return 0 if all(p.get("status") in ("ok", "skipped") for p in c.parts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
