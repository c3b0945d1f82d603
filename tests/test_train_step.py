"""The training step's per-phase weight cache: each weight-normed weight computed once per phase,
the same trajectory as computing it per pass, and off for stateful parametrizations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from igan.compiling import MaybeCompiled
from igan.layers import cacheable_parametrizations, weight_norm
from igan.train import train_step

from test_hooks import make_run
from test_kernels import needs_compiler

pytestmark = pytest.mark.usefixtures("single_thread")


def _weight_norm_calls(module: nn.Module) -> list[int]:
    """A counter per weight-norm parametrization of ``module``, increased by each computation of W."""
    counts = []
    for m in module.modules():
        if hasattr(m, "parametrizations"):
            counts.append(0)
            i = len(counts) - 1

            def hook(_mod, _inp, _out, i=i):
                counts[i] += 1

            m.parametrizations.weight[0].register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("command", ["train", "semisup"])
def test_each_weight_computed_once_per_phase(tmp_path, command) -> None:
    """train: 2 D passes + 1 G-phase pass; semisup: 3 D passes + 2 G-phase passes (real features for
    feature matching). Cached, every D weight is computed once in each of the two phases."""
    extra = {"num_classes": 10, "options": {"labels": 20}} if command == "semisup" else {}
    run = make_run(tmp_path, command=command, **extra)
    run.pm.hook.igan_train_start(run=run)  # semisup's labelled and FM-real batches are set up here
    assert run.cache_weights
    counts = _weight_norm_calls(run.discriminator)
    assert counts, "the digits D is weight-normed"
    train_step(run)
    assert counts == [2] * len(counts)
    run.cache_weights = False
    counts[:] = [0] * len(counts)
    train_step(run)
    per_pass = 3 if command == "train" else 5
    assert counts == [per_pass] * len(counts)


def test_cached_step_follows_the_uncached_trajectory(tmp_path) -> None:
    runs = []
    for cached in (True, False):
        torch.manual_seed(0)
        run = make_run(tmp_path / str(cached), seed=3)
        run.cache_weights = cached
        for _ in range(4):
            train_step(run)
            run.step += 1
        runs.append(run)
    for a, b in zip(runs[0].discriminator.parameters(), runs[1].discriminator.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(runs[0].generator.parameters(), runs[1].generator.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_stateful_parametrizations_turn_the_cache_off() -> None:
    normed = nn.Sequential(weight_norm(nn.Linear(3, 4)), nn.ReLU(), weight_norm(nn.Linear(4, 1)))
    assert cacheable_parametrizations(normed, nn.Linear(2, 2))
    # spectral norm's power iteration updates u/v on every call: caching would change its maths
    assert not cacheable_parametrizations(normed, spectral_norm(nn.Linear(3, 3)))


# --- the fast path (--fast-path: compiled G and D) ------------------------------------------------


def test_fast_path_is_off_on_cpu_by_default(tmp_path) -> None:
    run = make_run(tmp_path)
    assert run.config.fast_path is None
    assert run.g_exec is run.generator and run.d_frozen_exec is run.discriminator
    assert run.cache_weights


def _boom(fn, **kwargs):
    def fail(*args, **kw):
        raise RuntimeError("no compiler here")

    return fail


def test_fast_path_falls_back_to_eager_when_compiling_fails(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("IGAN_COMPILE", "auto")
    monkeypatch.setattr(torch, "compile", _boom)
    torch.manual_seed(0)
    fast = make_run(tmp_path / "fast", fast_path=True, seed=5)
    assert isinstance(fast.d_exec, MaybeCompiled) and not fast.cache_weights
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        train_step(fast)
    assert fast.g_exec._failed and fast.d_exec._failed
    torch.manual_seed(0)
    eager = make_run(tmp_path / "eager", fast_path=False, seed=5)
    eager.cache_weights = False  # as the fast path, which leaves weight norm to the compiled graph
    train_step(eager)
    for a, b in zip(fast.discriminator.parameters(), eager.discriminator.parameters()):
        assert torch.equal(a, b)


@needs_compiler
def test_fast_path_compiled_steps_follow_eager_steps(tmp_path, monkeypatch) -> None:
    """Three compiled steps against three eager ones from the same weights (D's noise off: compiled
    graphs draw random numbers with their own generator)."""
    monkeypatch.setenv("IGAN_COMPILE", "1")  # a compiler failure fails the test
    runs, losses = [], []
    for fast in (True, False):
        torch.manual_seed(0)
        run = make_run(tmp_path / str(fast), fast_path=fast, seed=7, model_kwargs={"noise": False})
        run.cache_weights = False
        logs = []
        for _ in range(3):
            logs.append({k: float(v) for k, v in train_step(run).items()})
            run.step += 1
        runs.append(run)
        losses.append(logs)
    assert isinstance(runs[0].d_exec, MaybeCompiled) and not runs[0].d_exec._failed
    for compiled, eager in zip(*losses):
        assert compiled.keys() == eager.keys()
        for k in eager:
            assert compiled[k] == pytest.approx(eager[k], rel=1e-4, abs=1e-6), k
    for a, b in zip(runs[0].discriminator.parameters(), runs[1].discriminator.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(runs[0].generator.parameters(), runs[1].generator.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fast_path_flag_end_to_end(train_cli, tmp_path) -> None:
    """`--fast-path` / `--no-fast-path` reach the run's config (IGAN_COMPILE=0 here: the graphs run
    eagerly, the compiled run is covered above) and a run with it trains and checkpoints."""
    import json

    code, _, err = train_cli(tmp_path / "on", "--fast-path")
    assert code == 0, err
    assert json.loads((tmp_path / "on" / "config.json").read_text())["fast_path"] is True
    code, _, err = train_cli(tmp_path / "off", "--no-fast-path")
    assert code == 0, err
    assert json.loads((tmp_path / "off" / "config.json").read_text())["fast_path"] is False
    assert (tmp_path / "on" / "checkpoints" / "last.safetensors").is_file()


@pytest.mark.parametrize("epochs, decay_from, period", [(1200, 800, 400.0), (900, 600, 300.0)],
                         ids=["cifar10", "svhn"])
def test_lr_schedule_is_the_reference_formula(epochs, decay_from, period):
    """paper-notes §2.4-2.5: lr * min(3 - epoch / 400, 1) (CIFAR-10), min(3 - epoch / 300, 1) (SVHN)."""
    from igan.train import lr_factor

    for epoch in (0, 1, decay_from - 1, decay_from, decay_from + 1, (epochs + decay_from) // 2, epochs - 1):
        assert lr_factor(epoch, epochs, decay_from) == pytest.approx(min(3 - epoch / period, 1.0))
    assert lr_factor(5, 10, 0) == 1.0 and lr_factor(5, 10, None) == 1.0  # no decay


def test_lr_decays_in_training_and_is_in_the_checkpoint(run_cli, tmp_path):
    """4 epochs decaying from epoch 2: the last epoch (index 3) trains with lr * (4 - 3) / (4 - 2)."""
    from igan.checkpoint import load_checkpoint

    code, _, err = run_cli(["train", "--epochs", "4", "--lr-decay-from", "2", "--lr", "0.002", "--batch-size", "300",
                            "--device", "cpu", "--out", tmp_path / "r"])
    assert code == 0, err
    _, meta = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.safetensors")
    for net in ("G", "D"):
        assert [g["lr"] for g in meta["opt_groups"][net]] == [pytest.approx(0.001)]
    assert meta["config"]["lr_decay_from"] == 2
