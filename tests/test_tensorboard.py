"""``--tensorboard``: event files under <run>/tensorboard/, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import math
import sys

import pytest

from conftest import TINY, assert_clean_error


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    everything = {"scalars": 0, "images": 0, "tensors": 0}
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance=everything)
    acc.Reload()
    return acc


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_mirror_metrics_jsonl(train_cli, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    code, out, err = train_cli(run, "--tensorboard", "--ha", steps=3)
    assert code == 0, err
    acc = _events(run)
    tags = acc.Tags()
    records = [r for r in _records(run) if "loss/D" in r]
    for key in ("loss/D", "loss/G", "loss/D/ha", "loss/G/ha"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in records] == [1, 2, 3]
        assert all(math.isclose(e.value, r[key], rel_tol=1e-6, abs_tol=1e-7) for e, r in zip(events, records))
    assert {"lr/G", "lr/D"} <= set(tags["scalars"])
    assert acc.Scalars("lr/G")[0].value == pytest.approx(json.loads((run / "config.json").read_text())["lr"])
    images = acc.Images("samples")
    assert len(images) >= 1 and images[-1].step == 3 and images[-1].width > 0
    assert "config/text_summary" in tags["tensors"]


def test_tensorboard_gets_epoch_metrics(run_cli, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "ss"
    args = ["semisup", "--steps", "2", *TINY, "--no-baseline", "--tensorboard", "--out", run]
    code, out, err = run_cli(args)
    assert code == 0, err
    metric = [r for r in _records(run) if "test_error" in r][-1]
    events = _events(run).Scalars("test_error")
    assert [(e.step, pytest.approx(e.value)) for e in events] == [(metric["step"], metric["test_error"])]


def test_without_tensorboard_is_a_usage_error(train_cli, tmp_path, monkeypatch):
    # `from torch.utils.tensorboard import SummaryWriter` now fails as it does without the package
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, out, err = train_cli(tmp_path / "run", "--tensorboard")
    assert_clean_error(code, out, err, 2, "--tensorboard", "tensorboard package")
    assert 'pip install "igan[tensorboard]"' in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_no_event_files_without_the_flag(trained_run):
    assert not (trained_run / "tensorboard").exists()
