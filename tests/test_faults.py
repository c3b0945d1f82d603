"""The fault matrix (docs/reliability.md): crashes, divergence and failing plugins lose nothing."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from importlib import metadata

import pytest

from igan.checkpoint import load_checkpoint
from igan.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install a plugin module written in the test as if a package provided it (entry point group igan)."""

    def install(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        original = metadata.entry_points

        def entry_points(**kw):
            eps = list(original(**kw))
            if kw.get("group") == "igan":
                eps.append(metadata.EntryPoint(name=name, value=name, group="igan"))
            return eps

        monkeypatch.setattr(metadata, "entry_points", entry_points)

    return install


def test_sigkill_at_random_steps_loses_at_most_one_checkpoint_interval(tmp_path):
    rng = random.Random(1234)
    interval = 20
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        cmd = [sys.executable, "-m", "igan", "train", "--steps", "2000", "--batch-size", "10", "--log-every", "5",
               "--checkpoint-every", str(interval), "--device", "cpu", "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_after = rng.randint(25, 120)
        last_logged = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and last_logged < kill_after:
            time.sleep(0.05)
            metrics = out / "metrics.jsonl"
            if metrics.exists():
                lines = [ln for ln in metrics.read_text().splitlines() if ln.endswith("}")]
                if lines:
                    last_logged = json.loads(lines[-1])["step"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert last_logged >= kill_after, "training did not get far enough before the deadline"
        ckpt = out / "checkpoints" / "last.safetensors"
        _, meta = load_checkpoint(ckpt)  # never half written: it always loads
        saved = meta["step"]
        assert saved % interval == 0 and saved <= last_logged + interval
        assert last_logged - saved <= interval + 5  # lost at most one interval (plus the log granularity)
        resumed = subprocess.run([sys.executable, "-m", "igan", "train", "--steps", str(saved + 5), "--batch-size",
                                  "10", "--device", "cpu", "--resume", str(ckpt), "--json"],
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads(resumed.stdout)["steps"] == saved + 5


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, capsys, third_party):
    third_party("nan_plugin", """
        import torch
        from igan import hookimpl

        @hookimpl
        def igan_extra_loss(step, net):
            if net == "D" and step.it >= 4:  # steps 5, 6, ... diverge
                return {"boom": torch.tensor(float("nan"))}
    """)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--steps", "20", "--batch-size", "10", "--log-every", "1",
                            "--checkpoint-every", "2", "--out", str(out)], capsys)
    assert code == 1
    assert "error: non-finite loss at step 5" in err and "loss/D/boom=nan" in err and "hint:" in err
    assert "Traceback" not in err
    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["step"] == 4  # the last good one, not overwritten with NaN weights


def test_a_plugin_raising_in_a_hook_is_named_with_the_hook(tmp_path, capsys, third_party):
    third_party("faulty_plugin", """
        from igan import hookimpl

        @hookimpl
        def igan_train_start(run):
            raise ValueError("bad configuration of the faulty thing")
    """)
    code, _, err = run_cli(["train", "--steps", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert "plugin faulty_plugin failed in igan_train_start: ValueError: bad configuration" in err
    assert "hint:" in err and "Traceback" not in err


def test_plugin_that_fails_to_import_is_listed_as_broken_and_skipped(tmp_path, capsys, third_party):
    third_party("broken_plugin", "raise ImportError('needs a library that is not installed')\n")
    code, out, err = run_cli(["plugins", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert "needs a library" in rows["broken_plugin"]["error"]
    assert "warning: plugin 'broken_plugin'" in err and "IGAN_DISABLE_PLUGINS=broken_plugin" in err
    code, _, _ = run_cli(["train", "--steps", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 0


def test_disabled_plugins_are_not_loaded(tmp_path, capsys, third_party, monkeypatch):
    third_party("loud_plugin", "raise RuntimeError('must never be imported')\n")
    monkeypatch.setenv("IGAN_DISABLE_PLUGINS", "loud_plugin")
    code, out, err = run_cli(["plugins", "--json"], capsys)
    assert code == 0 and "loud_plugin" not in out and "must never" not in err


@pytest.mark.parametrize("args, message", [
    (["--labels", "55"], "not divisible by the 10 classes"),
    (["--labels", "2000"], "more than the 1500 training examples"),
    (["--labels", "1500"], "fewer than the 150 labels per class"),
])
def test_bad_label_counts_are_usage_errors(args, message, tmp_path, capsys):
    code, _, err = run_cli(["semisup", "--steps", "2", "--no-baseline", "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2, err
    assert message in err and "hint:" in err


def test_unwritable_run_directory_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import igan.checkpoint as ck

    out = tmp_path / "run"
    code, _, _ = run_cli(["train", "--steps", "2", "--batch-size", "10", "--out", str(out)], capsys)
    assert code == 0
    before = (out / "checkpoints" / "last.safetensors").read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    code, _, err = run_cli(["train", "--steps", "4", "--batch-size", "10", "--resume",
                            str(out / "checkpoints" / "last.safetensors")], capsys)
    assert code == 1 and "No space left on device" in err and "previous checkpoint is intact" in err
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == before
    assert not list((out / "checkpoints").glob("*.tmp"))
