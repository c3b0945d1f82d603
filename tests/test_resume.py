"""Exact resume on the CPU, and Ctrl-C / SIGTERM saving a checkpoint before exiting 130 / 143.

"Exact" means bit for bit: an 8-step run and a 4-step run resumed to 8 steps end with equal tensors
(models, optimizer moments, data order, random state and plugin state) and log equal losses.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from igan.checkpoint import load_checkpoint

from conftest import TINY, igan_subprocess

pytestmark = pytest.mark.usefixtures("single_thread")

CKPT = ("checkpoints", "last.safetensors")
STATEFUL = ["--fm", "--mbd", "--ha", "--vbn"]


def _ckpt(run_dir):
    return run_dir.joinpath(*CKPT)


def _loss_records(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss/D" in r]


def _assert_same_tensors(a_path, b_path) -> None:
    a, meta_a = load_checkpoint(a_path)
    b, meta_b = load_checkpoint(b_path)
    assert meta_a["step"] == meta_b["step"]
    models = sorted(k for k in a if k.startswith(("G.", "D.")))
    assert models and models == sorted(k for k in b if k.startswith(("G.", "D.")))
    differ = [k for k in models if not torch.equal(a[k], b[k])]
    assert not differ, f"model tensors differ after resume: {differ[:5]}"
    # and everything else that makes the next step identical
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"state differs after resume: {differ[:5]}"


@pytest.mark.parametrize("techniques", [[], STATEFUL], ids=["plain", "fm-mbd-ha-vbn"])
def test_resume_is_exact(train_cli, run_cli, tmp_path, techniques):
    a, b = tmp_path / "a", tmp_path / "b"
    code, _, err = train_cli(a, *techniques, steps=8)
    assert code == 0, err
    code, _, err = train_cli(b, *techniques, steps=4)
    assert code == 0, err
    assert load_checkpoint(_ckpt(b))[1]["step"] == 4

    code, out, err = run_cli(["train", "--steps", "8", *TINY, "--resume", _ckpt(b), *techniques])
    assert code == 0, err
    assert out == f"{b}\n"  # resumed into the run the checkpoint belongs to
    _assert_same_tensors(_ckpt(a), _ckpt(b))
    assert _loss_records(b) == _loss_records(a)
    assert [r["step"] for r in _loss_records(b)] == list(range(1, 9))


def test_resume_from_a_periodic_checkpoint_is_exact(train_cli, run_cli, tmp_path):
    """A checkpoint written by --checkpoint-every mid-run (not at an epoch end) resumes exactly."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli(a, "--checkpoint-every", "3", steps=6)[0] == 0
    assert train_cli(b, "--checkpoint-every", "3", steps=3)[0] == 0
    code, _, err = run_cli(["train", "--steps", "6", *TINY, "--checkpoint-every", "3", "--resume", _ckpt(b)])
    assert code == 0, err
    _assert_same_tensors(_ckpt(a), _ckpt(b))


def test_ctrl_c_in_the_middle_of_a_step_resumes_exactly(train_cli, run_cli, tmp_path, monkeypatch):
    """Ctrl-C lands while a step is half done (D updated, G not yet): the saved checkpoint must be a
    consistent step boundary, so resuming it reproduces the uninterrupted run."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli(a, steps=8)[0] == 0

    from igan.optim import ReferenceAdam  # the default optimizer (--adam reference)

    real_step = ReferenceAdam.step
    calls = []

    def step_with_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 10:  # the G update of step 5 (D, G, D, G, ...)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ReferenceAdam, "step", step_with_ctrl_c)
    code, out, err = train_cli(b, steps=8)
    monkeypatch.undo()
    assert code == 130, err
    assert out == ""
    saved_step = load_checkpoint(_ckpt(b))[1]["step"]
    assert saved_step in (4, 5)

    code, _, err = run_cli(["train", "--steps", "8", *TINY, "--resume", _ckpt(b)])
    assert code == 0, err
    _assert_same_tensors(_ckpt(a), _ckpt(b))


def _wait_for_metrics(proc, run_dir, timeout=120.0) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"igan exited early with {proc.returncode}:\n{err}")
        if metrics.is_file() and metrics.read_text().count("\n") >= 1:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no metrics line within the timeout")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_exits(tmp_path, run_cli, sig, code, word):
    run = tmp_path / "run"
    proc = igan_subprocess(["train", "--steps", "100000", *TINY, "--out", run])
    try:
        _wait_for_metrics(proc, run)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert out == ""
    assert "Traceback" not in err
    assert f"error: {word}" in err and "--resume" in err

    _, meta = load_checkpoint(_ckpt(run))
    steps = meta["step"]
    assert 1 <= steps < 100000
    # the run continues from its checkpoint
    rc, out, err = run_cli(["train", "--steps", str(steps + 2), *TINY, "--resume", _ckpt(run)])
    assert rc == 0, err
    assert load_checkpoint(_ckpt(run))[1]["step"] == steps + 2


def test_resuming_a_finished_semisup_run_reports_its_final_numbers(run_cli, tmp_path):
    args = ["semisup", "--dataset", "digits", "--steps", "2", *TINY, "--no-baseline", "--json"]
    code, out, err = run_cli([*args, "--out", tmp_path / "r"])
    assert code == 0, err
    first = json.loads(out)
    code, out, err = run_cli([*args, "--resume", tmp_path / "r" / "checkpoints" / "last.safetensors"])
    assert code == 0, err  # nothing left to train: the summary keeps the numbers it finished with
    again = json.loads(out)
    assert again["test_errors"] == first["test_errors"] and again["test_errors"] is not None


def test_resuming_semisup_with_its_baseline_continues_both_runs(run_cli, tmp_path):
    args = ["semisup", "--dataset", "digits", *TINY, "--baseline"]
    code, _, err = run_cli([*args, "--steps", "2", "--out", tmp_path / "r"])
    assert code == 0, err
    code, out, err = run_cli([*args, "--steps", "3", "--json", "--resume",
                              tmp_path / "r" / "checkpoints" / "last.safetensors"])
    assert code == 0, err
    for run in (tmp_path / "r", tmp_path / "r" / "supervised-only"):
        assert json.loads((run / "summary.json").read_text())["steps"] == 3  # each continued its own run
