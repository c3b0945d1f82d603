"""The prepared GPU-machine calls, run on the CPU so that they cannot rot: ``benchmarks/device_check.py
--tiny`` (every part, tiny settings) and ``benchmarks/device_protocol.py`` (the 10-seed MNIST protocol,
here on digits with 2 seeds: both recipes, then resumed from its own checkpoints)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def _returned_files_ok(out: Path) -> None:
    """What a device call can bring back: at most 8 files, plain names, at most 2 folders down."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel


def test_device_check_tiny_runs_every_part(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(BENCH / "device_check.py"), str(out), "--tiny"], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    data = json.loads((out / "device_check.json").read_text())
    parts = data["parts"]
    assert list(parts) == ["tests", "step_speed", "parallel_seeds", "inception", "cli"]
    assert all(p["status"] == "ok" for p in parts.values()), {k: p["status"] for k, p in parts.items()}
    # (a) the CUDA tests were collected and skipped (no GPU here), none failed
    counts = parts["tests"]["counts"]
    assert counts["tests"] > 0 and counts["skipped"] == counts["tests"] and not parts["tests"]["failed"]
    # (b) step speed: the eager row measured igan and the hand-written step; fast path and capture need CUDA
    modes = parts["step_speed"]["modes"]
    row = modes["eager"]["result"]["results"][0]
    assert row["workload"] == "semisup" and row["igan_ms_per_step"] > 0 and row["hand_ms_per_step"] > 0
    assert modes["fast_path semisup"]["status"] == modes["captured semisup"]["status"] == "skipped"
    # (c) vectorised seeds for K = 1 and 2, batched
    rows = parts["parallel_seeds"]["modes"]["eager"]["result"]["results"]
    assert [r["seeds"] for r in rows] == [1, 2] and all(r["parallel_ms"] > 0 for r in rows)
    # (d) Inception throughput
    assert any(r["what"] == "inception" and r["images_per_s"] > 0 for r in parts["inception"]["result"]["rows"])
    # (e) every command end to end, and the resume continued the trained run
    commands = parts["cli"]["commands"]
    assert list(commands) == ["train", "semisup", "sample", "evaluate", "report", "resume"]
    assert all(c["status"] == "ok" for c in commands.values()), commands
    assert json.loads(commands["resume"]["stdout"])["steps"] == 6
    assert json.loads(commands["evaluate"]["stdout"])
    summary = (out / "summary.md").read_text()
    assert "| cli | ok |" in summary and "## Step speed" in summary and summary in proc.stdout
    _returned_files_ok(out)


def _protocol(out, state, *flags):
    proc = subprocess.run([sys.executable, str(BENCH / "device_protocol.py"), str(out), "--dataset", "digits",
                           "--labels", "50", "--seeds", "2", "--device", "cpu", "--state", str(state), *flags],
                          cwd=ROOT, env={**ENV, "IGAN_PARALLEL": "batched"}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return json.loads((out / "protocol.json").read_text())["recipes"]


def test_device_protocol_trains_both_recipes_and_resumes(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    first = _protocol(out, state, "--epochs", "1")
    assert list(first) == ["reference", "paper-v1"]
    for r in first.values():
        assert r["finished"] and r["epochs_done"] == 1 and len(r["seeds"]) == 2
        assert {s["seed"] for s in r["seeds"]} == {0, 1} and {s["label_seed"] for s in r["seeds"]} == {1, 2}
        assert all(list(c) == ["1"] for c in r["curves"].values())
    # a second call continues the same runs (all seeds together) from their checkpoints
    second = _protocol(out, state, "--epochs", "2", "--recipes", "reference")
    ref = second["reference"]
    assert ref["finished"] and ref["epochs_done"] == 2 and ref["epochs_this_call"] == 1
    for seed, c in ref["curves"].items():
        assert list(c) == ["1", "2"]
        assert c["1"] == first["reference"]["curves"][seed]["1"]  # epoch 1 is the first call's, not retrained
    assert "(resuming)" in (out / "protocol.log").read_text()
    _returned_files_ok(out)


def test_device_protocol_runs_the_bad_gan_combination(tmp_path):
    """badgan-ld: the reference recipe plus --low-density, in its own folder of the state."""
    out, state = tmp_path / "out", tmp_path / "state"
    result = _protocol(out, state, "--epochs", "1", "--recipes", "badgan-ld")
    assert list(result) == ["badgan-ld"] and result["badgan-ld"]["finished"]
    config = json.loads((state / "badgan-ld" / "labels50" / "seed1" / "config.json").read_text())
    assert config["options"]["low_density"] is True and config["recipe"] == "reference"
    proc = subprocess.run([sys.executable, str(BENCH / "device_protocol.py"), str(out), "--dataset", "digits",
                           "--recipes", "nope"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "badgan-ld" in proc.stderr


def test_device_protocol_wants_mnist_in_the_checkout(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "device_protocol.py"), str(tmp_path / "out"), "--data-dir",
                           str(tmp_path / "nothing")], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte.gz" in proc.stderr and "cp /work/shared/data/mnist/*.gz data/mnist/" in proc.stderr


def _reproduce_module():
    spec = importlib.util.spec_from_file_location("reproduce_mnist", BENCH / "reproduce_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_stops_a_run_at_its_deadline(monkeypatch):
    """--max-seconds: at the deadline the training process gets SIGTERM (igan saves its checkpoints and
    exits 143); that is a stop to continue later, not an error. Any other failure still is one."""
    rm = _reproduce_module()
    monkeypatch.setattr(rm, "DEADLINE", [time.monotonic() + 1.0])
    child = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
             "print('ready', flush=True); time.sleep(60)")
    t = time.monotonic()
    rm._run([sys.executable, "-c", child])
    assert time.monotonic() - t < 30
    monkeypatch.setattr(rm, "DEADLINE", [])
    with pytest.raises(SystemExit, match="exited with 1"):
        rm._run([sys.executable, "-c", "import sys; sys.exit(1)"])
