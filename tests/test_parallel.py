"""Vectorised seeds (``--seeds K --parallel``, igan.parallel): K runs in one process, batched or interleaved,
each equal to its own single-seed run; and ``--seeds K --resume FOLDER``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from igan.layers import GaussianNoise, NoiseTape
from igan.plugins import hookimpl

STEPS = ["--steps", "4"]


@pytest.fixture(params=["batched", "interleaved"])
def mode(request, monkeypatch):
    """Both ways of --parallel (the CPU default is interleaved; batched is the GPU default)."""
    monkeypatch.setenv("IGAN_PARALLEL", request.param)
    return request.param


@pytest.fixture
def batched(monkeypatch):
    monkeypatch.setenv("IGAN_PARALLEL", "batched")


def _semisup(run_cli, out, *flags, seeds=None, seed=0):
    args = ["semisup", "--dataset", "digits", *STEPS, *TINY, "--no-baseline", "--out", str(out), *flags]
    if seeds:
        args += ["--seeds", str(seeds)]
    else:
        args += ["--seed", str(seed), "--label-seed", str(seed + 1)]
    code, out_, err = run_cli(args)
    assert code == 0, err
    return out_


def _assert_same_checkpoint(a_path, b_path):
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert set(a) == set(b)
    for key in a:
        if a[key].is_floating_point():
            # float rounding only: batched and single matmuls sum in different orders
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        else:  # RNG states, sampler positions and permutations, step counts: exactly equal
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("flags", [[], ["--mbd"], ["--vbn"], ["--no-fm"]], ids=["fm", "mbd", "vbn", "no-fm"])
def test_each_parallel_seed_equals_its_single_seed_run(run_cli, tmp_path, single_thread, mode, flags):
    _semisup(run_cli, tmp_path / "par", "--parallel", *flags, seeds=2)
    for seed in (0, 1):
        _semisup(run_cli, tmp_path / f"single{seed}", *flags, seed=seed)
        par, single = tmp_path / "par" / f"seed{seed}", tmp_path / f"single{seed}"
        _assert_same_checkpoint(par / "checkpoints" / "last.safetensors", single / "checkpoints" / "last.safetensors")
        lines = [json.loads(x) for x in (par / "metrics.jsonl").read_text().splitlines()]
        ref = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
        assert [r.get("test_errors") for r in lines] == [r.get("test_errors") for r in ref]
        for r, s in zip(lines, ref):
            for k in r:
                assert r[k] == pytest.approx(s[k], rel=1e-4, abs=1e-5), k
    # the two seeds really are different runs (own seed, own label split)
    a = load_file(str(tmp_path / "par" / "seed0" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "par" / "seed1" / "checkpoints" / "last.safetensors"))
    assert not torch.equal(a["D.out.bias"], b["D.out.bias"])


def test_parallel_checkpoint_resumes_as_a_single_run(run_cli, tmp_path, single_thread, batched):
    """A parallel seed's checkpoint is an ordinary one: resuming it alone continues the same run."""
    _semisup(run_cli, tmp_path / "par", "--parallel", seeds=2)
    ckpt = tmp_path / "par" / "seed1" / "checkpoints" / "last.safetensors"
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "6", *TINY, "--no-baseline",
                            "--seed", "1", "--label-seed", "2", "--resume", str(ckpt)])
    assert code == 0, err
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "6", *TINY, "--no-baseline",
                            "--seed", "1", "--label-seed", "2", "--out", str(tmp_path / "straight")])
    assert code == 0, err
    _assert_same_checkpoint(ckpt, tmp_path / "straight" / "checkpoints" / "last.safetensors")


def test_batched_parallel_refuses_a_technique_with_per_run_loss_state(run_cli, tmp_path, batched):
    code, _, err = run_cli(["semisup", "--dataset", "digits", *STEPS, *TINY, "--seeds", "2", "--parallel", "--ha",
                            "--out", str(tmp_path / "r")])
    assert code == 2
    assert "historical_averaging" in err and "hint:" in err
    assert not (tmp_path / "r").exists()


def test_interleaved_parallel_runs_any_technique(run_cli, tmp_path, single_thread, monkeypatch):
    """Interleaved runs call each run's own hooks, so historical averaging (per-run state) is fine."""
    monkeypatch.setenv("IGAN_PARALLEL", "interleaved")
    _semisup(run_cli, tmp_path / "par", "--parallel", "--ha", seeds=2)
    _semisup(run_cli, tmp_path / "single1", "--ha", seed=1)
    _assert_same_checkpoint(tmp_path / "par" / "seed1" / "checkpoints" / "last.safetensors",
                            tmp_path / "single1" / "checkpoints" / "last.safetensors")


def test_unknown_parallel_mode_is_a_usage_error(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IGAN_PARALLEL", "fast")
    code, _, err = run_cli(["semisup", "--dataset", "digits", *STEPS, *TINY, "--seeds", "2", "--parallel",
                            "--out", str(tmp_path / "r")])
    assert code == 2 and "IGAN_PARALLEL" in err


def _semisup_seeds(run_cli, steps, *flags):
    code, out, err = run_cli(["semisup", "--dataset", "digits", "--steps", str(steps), *TINY, "--no-baseline",
                              "--seeds", "2", *flags])
    assert code == 0, err
    return out


def test_seeds_resume_from_the_experiment_folder(run_cli, tmp_path, single_thread, mode):
    """--seeds K --resume FOLDER continues every seed from its own checkpoint, sequentially or with
    --parallel, exactly as an uninterrupted run (each seed compared with straight single-seed runs)."""
    for parallel in ([], ["--parallel"]):
        base = tmp_path / f"exp{len(parallel)}"
        _semisup_seeds(run_cli, 3, "--out", base, *parallel)
        _semisup_seeds(run_cli, 5, "--resume", base, *parallel)
        for seed in (0, 1):
            straight = tmp_path / f"straight{seed}"
            if not straight.exists():
                code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "5", *TINY, "--no-baseline",
                                        "--seed", str(seed), "--label-seed", str(seed + 1), "--out", straight])
                assert code == 0, err
            _assert_same_checkpoint(base / f"seed{seed}" / "checkpoints" / "last.safetensors",
                                    straight / "checkpoints" / "last.safetensors")


def test_seeds_resume_needs_the_folder_and_parallel_needs_every_seed_started(run_cli, tmp_path, single_thread):
    base = tmp_path / "exp"
    _semisup_seeds(run_cli, 2, "--out", base)
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "3", *TINY, "--seeds", "2", "--resume",
                            base / "seed0" / "checkpoints" / "last.safetensors"])
    assert code == 2 and "experiment's folder" in err
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "3", *TINY, "--seeds", "2",
                            "--resume", tmp_path / "nothing-here"])
    assert code == 2
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "3", *TINY, "--no-baseline", "--seeds", "3",
                            "--parallel", "--resume", base])
    assert code == 2 and "seeds 2 have no checkpoint" in err
    # sequentially, the started seeds continue and the missing one starts
    _semisup_seeds(run_cli, 3, "--resume", base)
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "3", *TINY, "--no-baseline", "--seeds", "3",
                            "--resume", base])
    assert code == 0, err
    assert json.loads((base / "seed2" / "summary.json").read_text())["steps"] == 3


def test_noise_tape_replays_what_the_layer_would_draw():
    layer = GaussianNoise(0.5).train()
    x = torch.randn(4, 3)
    torch.manual_seed(7)
    direct = layer(x)
    with NoiseTape() as rec:  # records shapes, adds nothing
        assert torch.equal(layer(x), x)
    assert rec.shapes == [(3,)]
    torch.manual_seed(7)
    with NoiseTape([torch.randn(4, 3)]):
        assert torch.equal(layer(x), direct)


def test_noise_tape_rejects_a_different_call_order():
    layer = GaussianNoise(0.5).train()
    with pytest.raises(RuntimeError, match="more noise"):
        with NoiseTape([torch.zeros(2, 3)]):
            layer(torch.zeros(2, 3))
            layer(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="not used"):
        with NoiseTape([torch.zeros(2, 3), torch.zeros(2, 3)]):
            layer(torch.zeros(2, 3))


def test_plain_copy_keeps_the_original_parametrized():
    from igan.layers import weight_norm
    from igan.parallel import plain_copy

    layer = weight_norm(torch.nn.Linear(3, 2))
    copy_ = plain_copy(layer)
    x = torch.randn(5, 3)
    assert torch.allclose(copy_(x), layer(x))  # the copy holds the parametrized weight as a parameter
    assert "weight" in dict(copy_.named_parameters())
    layer.parametrizations.weight.original1.data.mul_(2)  # the original still computes g v / ||v||
    assert torch.allclose(layer(x), copy_(x))
    assert torch.nn.utils.parametrize.is_parametrized(layer)


def test_train_seeds_parallel_equals_single_runs(train_cli, tmp_path, single_thread, mode):
    """``igan train --seeds 2 --parallel``: the plain GAN (K = 1 logit, non-saturating G loss)."""
    code, out, err = train_cli(tmp_path / "par", "--seeds", "2", "--parallel", "--json", steps=3)
    assert code == 0, err
    summary = json.loads(out)
    assert [r["run_dir"] for r in summary["runs"]] == [str(tmp_path / "par" / f"seed{s}") for s in (0, 1)]
    assert json.loads((tmp_path / "par" / "seeds.json").read_text())["runs"] == summary["runs"]
    for seed in (0, 1):
        code, _, err = train_cli(tmp_path / f"single{seed}", "--seed", str(seed), steps=3)
        assert code == 0, err
        _assert_same_checkpoint(tmp_path / "par" / f"seed{seed}" / "checkpoints" / "last.safetensors",
                                tmp_path / f"single{seed}" / "checkpoints" / "last.safetensors")


def test_train_seeds_sequential_makes_one_folder_per_seed(train_cli, tmp_path):
    code, _, err = train_cli(tmp_path / "seq", "--seeds", "2", steps=1)
    assert code == 0, err
    for seed in (0, 1):
        cfg = json.loads((tmp_path / "seq" / f"seed{seed}" / "config.json").read_text())
        assert cfg["seed"] == seed


def test_parallel_refuses_dropout_it_cannot_replay_per_seed():
    from types import SimpleNamespace

    from igan.distributed import Dist
    from igan.errors import UsageError
    from igan.parallel import check_parallel_safe
    from igan.plugins import get_plugin_manager

    run = SimpleNamespace(pm=get_plugin_manager(), dist=Dist(), generator=torch.nn.Linear(2, 2),
                          discriminator=torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 1)))
    with pytest.raises(UsageError, match="dropout"):
        check_parallel_safe(run)
    run.discriminator = torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.Linear(2, 1))
    check_parallel_safe(run)  # p = 0 draws nothing


class _AfterStepLogger:
    """Logs which run its after-step hook saw, and that run's step slice, for each network."""

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        step.log(f"seen/{net}", torch.tensor(float(step.run.config.seed)))
        step.log(f"z_mean/{net}", step.z.mean())


def test_after_step_hooks_fire_per_run_with_its_own_slice_and_logs(tmp_path, single_thread, mode):
    from igan.config import RunConfig
    from igan.parallel import build_parallel
    from igan.plugins import get_plugin_manager
    from igan.train import fit_runs

    pms = [get_plugin_manager(extra=[("spy", _AfterStepLogger())]) for _ in range(2)]
    configs = [RunConfig(dataset="digits", steps=2, batch_size=10, seed=s, device="cpu", log_every=1)
               for s in (3, 4)]
    trainer = build_parallel(configs, pms, [tmp_path / f"s{s}" for s in (3, 4)], mode=mode)
    fit_runs(trainer, [None, None], progress=False)
    for s in (3, 4):
        rows = [json.loads(x) for x in (tmp_path / f"s{s}" / "metrics.jsonl").read_text().splitlines()]
        losses = [r for r in rows if "seen/D" in r]
        assert len(losses) == 2 and all(r["seen/D"] == s and r["seen/G"] == s for r in losses)
        assert all(0.3 < r["z_mean/G"] < 0.7 for r in losses)  # U(0, 1) noise of that run's G update


@pytest.mark.parametrize("make", [lambda: torch.nn.Linear(4, 3), lambda: torch.nn.ConvTranspose2d(3, 2, 3)],
                         ids=["linear (dim 0)", "conv transpose (dim 1)"])
def test_stacked_weights_equal_each_models_weight_normed_weight(make):
    from igan.layers import weight_norm
    from igan.parallel import _Stack

    torch.manual_seed(0)
    layers = [weight_norm(make()) for _ in range(3)]
    for layer in layers:  # distinct g per model, so a mix-up between models would show
        layer.parametrizations.weight.original0.data.uniform_(0.5, 2.0)
    stack = _Stack(layers)
    weights = stack.weights()
    for k, layer in enumerate(layers):
        torch.testing.assert_close(weights["weight"][k], layer.weight)
        torch.testing.assert_close(weights["bias"][k], layer.bias)
    # the layers now view the stack: an update of the stack is an update of each layer
    with torch.no_grad():
        stack.params["bias"].add_(1.0)
    assert torch.equal(layers[2].bias, stack.params["bias"][2].detach())


def test_third_party_after_step_plugin_runs_per_seed_in_batched_mode(train_cli, tmp_path, single_thread, batched):
    """The igan-gen-ema package (plugins/) keeps an EMA of G per run: batched seeds equal single runs."""
    pytest.importorskip("igan_gen_ema")
    code, _, err = train_cli(tmp_path / "par", "--seeds", "2", "--parallel", "--g-ema", "0.9", steps=3)
    assert code == 0, err
    code, _, err = train_cli(tmp_path / "single1", "--seed", "1", "--g-ema", "0.9", steps=3)
    assert code == 0, err
    par = tmp_path / "par" / "seed1" / "checkpoints" / "last.safetensors"
    assert any(k.startswith("plugin.gen_ema.") for k in load_file(str(par)))
    _assert_same_checkpoint(par, tmp_path / "single1" / "checkpoints" / "last.safetensors")
