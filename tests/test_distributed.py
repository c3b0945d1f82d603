"""Multi-process training on CPU with gloo, launched through torchrun (torch.distributed.run) on loopback."""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from igan.checkpoint import load_checkpoint

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IGAN_DIST_TIMEOUT": "180"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_gloo_processes_train_with_techniques_and_write_one_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(["-m", "igan", "train", "--steps", "3", "--batch-size", "20", "--fm", "--mbd", "--ha",
                      "--sync-bn", "--device", "cpu", "--out", str(out), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # one answer per job (rank 0's)
    summary = json.loads(lines[0])
    assert summary["steps"] == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.safetensors"]
    tensors, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["step"] == 3 and meta["config"]["options"]["mbd"] is True
    assert any(k.startswith("plugin.historical_averaging.run.") for k in tensors)
    # the resumed run can continue in a single process (state is saved unsharded)
    proc = subprocess.run([sys.executable, "-m", "igan", "train", "--resume", str(out / "checkpoints" / "last.safetensors"),
                           "--steps", "5", "--batch-size", "20", "--fm", "--mbd", "--ha", "--device", "cpu", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps"] == 5


@pytest.mark.parametrize("mode", ["grads", "r1", "identical", "syncbn"])
def test_ddp_worker(mode, tmp_path):
    """grads: DDP gradients (2 half batches) equal one process's on the whole batch;
    r1: the same with an input-gradient penalty (needs_input_grad) in D's loss;
    identical: historical averages and the evaluation EMA stay bit-identical across ranks;
    syncbn: with --sync-bn, G's batch norm over 2 half batches equals one process's on the whole batch."""
    flag = tmp_path / "ok"
    proc = _torchrun([str(HERE / "_ddp_worker.py"), mode, str(flag), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert flag.read_text() == "ok"


def test_a_crashing_rank_ends_the_job_with_an_error_naming_it(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import os, sys\n"
        "from igan.cli import main\n"
        "if os.environ['RANK'] == '1':\n"
        "    raise SystemExit(3)\n"
        "main(['train', '--steps', '50', '--batch-size', '20', '--device', 'cpu', '--out', sys.argv[1]])\n")
    proc = _torchrun([str(script), str(tmp_path / "run")], tmp_path, timeout=240)
    assert proc.returncode != 0
    assert re.search(r"rank\s*:\s*1\b", proc.stderr), proc.stderr[-2000:]  # torchrun names the failed rank
