"""The training step's per-phase weight cache: each weight-normed weight computed once per phase,
the same trajectory as computing it per pass, and off for stateful parametrizations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from igan.layers import cacheable_parametrizations, weight_norm
from igan.train import train_step

from test_hooks import make_run

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
    run = make_run(tmp_path, command=command, **({"num_classes": 10, "options": {"labels": 20}} if command == "semisup" else {}))
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
