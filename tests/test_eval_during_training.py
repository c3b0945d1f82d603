"""``--eval-every N``: sample quality at epoch ends (metrics.jsonl, TensorBoard, igan report) and the best
checkpoint, chosen by a stated metric.

Runs use the embedded digits with batches of 500, so an epoch is 3 steps; a stand-in metric plugin
returns chosen values, so which epoch is "best" is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import igan.plugins
from igan.plugins import hookimpl

from conftest import assert_clean_error

FAST = ["--batch-size", "500", "--device", "cpu", "--log-every", "3"]  # 3 steps per epoch
SPE = 3


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, single_thread):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the digits classifier, trained once here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # and no Inception weights
    monkeypatch.delenv("IGAN_INCEPTION_WEIGHTS", raising=False)


class Scripted:
    """A metric plugin whose metric ``scripted`` returns the next of ``values`` at each call."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.calls: list[int] = []  # sample counts it was given

    @hookimpl
    def igan_register_metrics(self, register):
        def scripted(images, context):
            self.calls.append(int(images.shape[0]))
            assert images.dtype == torch.uint8 and context["input_kind"] == "training"
            return {"mean": self.values[len(self.calls) - 1], "std": None}

        register("scripted", scripted, "values chosen by the test")


@pytest.fixture
def scripted(monkeypatch) -> Scripted:
    plugin = Scripted()
    real = igan.plugins.get_plugin_manager
    monkeypatch.setattr(igan.plugins, "get_plugin_manager",
                        lambda **kw: real(**{**kw, "extra": [*kw.get("extra", ()), ("scripted", plugin)]}))
    return plugin


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _best(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "best.json").read_text())


def _meta(path: Path) -> dict:
    from igan.checkpoint import load_checkpoint

    return load_checkpoint(path)[1]


def test_eval_every_logs_the_classifier_score_and_keeps_the_best(run_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--epochs", "3", *FAST, "--eval-every", "1", "--eval-n", "200",
                              "--out", run])
    assert code == 0, err
    evals = [r for r in _records(run) if "eval/classifier_score" in r]
    assert [r["step"] for r in evals] == [3, 6, 9] and [r["epoch"] for r in evals] == [1.0, 2.0, 3.0]
    for r in evals:
        assert 1.0 <= r["eval/classifier_score"] <= 10.0 and r["eval/classifier_fd"] >= 0
        assert r["eval/classifier_score_std"] >= 0
    # the stated rule: lowest classifier FD (printed at the start), the cost of each evaluation printed
    assert "best checkpoint by classifier_fd (lower is better)" in err
    assert err.count("eval epoch ") == 3 and "s for 200 samples" in err
    fds = [r["eval/classifier_fd"] for r in evals]
    best = _best(run)
    assert best["metric"] == "classifier_fd" and best["higher_is_better"] is False
    assert best["value"] == min(fds) and best["epoch"] == 1 + fds.index(min(fds))
    assert _meta(run / "checkpoints" / "best.safetensors")["step"] == best["step"] == SPE * best["epoch"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["eval/classifier_fd"] == fds[-1]

    # the last value is what `igan evaluate` gives for the last checkpoint (same samples: n and seed)
    code, out, err = run_cli(["evaluate", run / "checkpoints" / "last.safetensors", "--metric", "classifier-score",
                              "-n", "200", "--device", "cpu", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["mean"] == evals[-1]["eval/classifier_score"] and result["fd"] == fds[-1]


def test_evaluation_does_not_change_the_training(run_cli, tmp_path):
    """Its samples come from its own random generator: the run's weights are those of a run without it."""
    from igan.checkpoint import load_checkpoint

    for name, extra in (("with", ["--eval-every", "1", "--eval-n", "100"]), ("without", [])):
        assert run_cli(["train", "--epochs", "2", *FAST, *extra, "--out", tmp_path / name])[0] == 0
    a, _ = load_checkpoint(tmp_path / "with" / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "without" / "checkpoints" / "last.safetensors")
    weights = [k for k in a if k.startswith(("G.", "D.", "opt_", "rng."))]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)


@pytest.mark.parametrize("rule, epoch", [("scripted:min", 2), ("scripted:max", 3)])
def test_best_checkpoint_is_the_epoch_the_stated_metric_chose(run_cli, scripted, tmp_path, rule, epoch):
    scripted.values = [5.0, 1.0, 7.0, 2.0]
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--epochs", "4", *FAST, "--eval-every", "1", "--metric", "scripted",
                              "--best-by", rule, "--eval-n", "30", "--out", run])
    assert code == 0, err
    assert scripted.calls == [30] * 4
    assert [r["eval/scripted"] for r in _records(run) if "eval/scripted" in r] == scripted.values
    best = _best(run)
    assert (best["metric"], best["value"], best["epoch"], best["step"]) == (
        "scripted", scripted.values[epoch - 1], epoch, SPE * epoch)
    # the copy is that epoch's checkpoint: the weights of a run that stopped there
    assert run_cli(["train", "--epochs", str(epoch), *FAST, "--out", tmp_path / "short"])[0] == 0
    from igan.checkpoint import load_checkpoint

    copy, meta = load_checkpoint(run / "checkpoints" / "best.safetensors")
    short, _ = load_checkpoint(tmp_path / "short" / "checkpoints" / "last.safetensors")
    assert meta["step"] == SPE * epoch
    assert all(torch.equal(copy[k], short[k]) for k in short if k.startswith(("G.", "D.")))
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # written atomically: no temporary file left


def test_eval_every_n_epochs_and_always_the_last(run_cli, scripted, tmp_path):
    scripted.values = [1.0, 2.0]
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--epochs", "3", *FAST, "--eval-every", "2", "--metric", "scripted",
                              "--best-by", "scripted:max", "--eval-n", "10", "--out", run])
    assert code == 0, err
    assert [r["epoch"] for r in _records(run) if "eval/scripted" in r] == [2.0, 3.0]


def test_resume_keeps_the_best_so_far(run_cli, scripted, tmp_path):
    run = tmp_path / "run"
    args = [*FAST, "--eval-every", "1", "--metric", "scripted", "--best-by", "scripted:min", "--eval-n", "10"]
    scripted.values = [1.0, 5.0]
    assert run_cli(["train", "--epochs", "2", *args, "--out", run])[0] == 0
    before = (run / "checkpoints" / "best.safetensors").read_bytes()
    scripted.values, scripted.calls = [3.0], []  # worse than epoch 1's 1.0
    code, out, err = run_cli(["train", "--epochs", "3", *args, "--resume", run / "checkpoints" / "last.safetensors"])
    assert code == 0, err
    assert scripted.calls == [10]  # epoch 3 was evaluated ...
    assert _best(run)["epoch"] == 1  # ... and did not replace the best copy
    assert (run / "checkpoints" / "best.safetensors").read_bytes() == before


def test_eval_metrics_reach_tensorboard(run_cli, scripted, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scripted.values = [4.0, 2.0]
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--epochs", "2", *FAST, "--eval-every", "1", "--metric", "scripted",
                              "--best-by", "scripted:min", "--eval-n", "10", "--tensorboard", "--out", run])
    assert code == 0, err
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/scripted")] == [(3, 4.0), (6, 2.0)]


def test_eval_metrics_in_the_report(run_cli, scripted, tmp_path):
    pytest.importorskip("matplotlib")
    scripted.values = [4.0, 2.0]
    run = tmp_path / "run"
    assert run_cli(["train", "--epochs", "2", *FAST, "--eval-every", "1", "--metric", "scripted", "--best-by",
                    "scripted:min", "--eval-n", "10", "--out", run])[0] == 0
    code, out, err = run_cli(["report", run])
    assert code == 0, err
    page = Path(out.strip()).read_text(encoding="utf-8")
    metrics = page.split('id="metrics"')[1].split("</section>")[0]
    assert 'alt="metrics: eval/scripted' in metrics  # a plot of the evaluations
    assert "scripted=2 at epoch 2" in page  # the best checkpoint, in the final numbers


@pytest.mark.parametrize("args, needles", [
    (["--metric", "classifier-score"], ["--metric", "--eval-every"]),
    (["--best-by", "fid"], ["--best-by", "--eval-every"]),
    (["--eval-every", "1", "--metric", "nonsense"], ["nonsense", "classifier-score"]),
    (["--eval-every", "1", "--metric", "error"], ["error", "test_error"]),
    (["--eval-every", "1", "--best-by", "fid"], ["fid", "classifier_fd"]),
    (["--eval-every", "1", "--metric", "scripted"], ["scripted:max", "scripted:min"]),
    (["--eval-every", "1", "--metric", "is"], ["Inception weights", "classifier-score"]),
])
def test_eval_usage_errors(run_cli, scripted, tmp_path, args, needles):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--epochs", "1", *FAST, *args, "--out", run])
    assert_clean_error(code, out, err, 2, *needles)
    assert not run.exists()


def test_default_metrics_follow_the_dataset():
    from igan.techniques.evaluation import best_rule, default_metrics

    assert default_metrics("digits") == default_metrics("mnist") == ["classifier-score"]
    assert default_metrics("cifar10") == ["is", "fid"]
    assert best_rule(None, ["classifier-score"]) == ("classifier_fd", False)
    assert best_rule(None, ["is", "fid"]) == ("fid", False)
    assert best_rule(None, ["is"]) == ("is", True)
    assert best_rule("classifier_score", ["classifier-score"]) == ("classifier_score", True)
