"""igan-spectral-norm: what --sn does to D, how it meets weight norm, and that its checkpoints reload.

Unit tests build a small model pair with igan's public classes (``igan.Discriminator``,
``igan.Generator``, ``igan.Models``, ``igan.layers.weight_norm``) and call the plugin's hooks directly;
the end-to-end tests drive the installed ``igan`` command (``conftest.igan_cli``).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

import igan
import igan_spectral_norm as sn

from conftest import TINY

LAYERS = (nn.Linear, nn.Conv2d)


def tiny_models(wn: bool = True, seed: int = 0) -> igan.Models:
    """A conv + linear D (weight-normed like igan's built-in models unless ``wn=False``) and a linear G."""
    torch.manual_seed(seed)

    def norm(layer, **kw):
        return igan.layers.weight_norm(layer, **kw) if wn else layer

    trunk = nn.Sequential(norm(nn.Conv2d(1, 4, 3, padding=1), train_g=False), nn.LeakyReLU(0.2), nn.Flatten(),
                          norm(nn.Linear(4 * 8 * 8, 16), train_g=False), nn.ReLU())
    d = igan.Discriminator(trunk, 16, 1, lambda fin, k: norm(nn.Linear(fin, k), train_g=True))
    g = igan.Generator(nn.Sequential(norm(nn.Linear(8, 64)), nn.Sigmoid()), (1, 8, 8))
    return igan.Models(g, d, z_dim=8)


def config(**options) -> igan.RunConfig:
    return igan.RunConfig(options={"sn": True, "sn_power_iterations": 1, **options})


def d_layers(models):
    return {name: m for name, m in models.discriminator.named_modules() if isinstance(m, LAYERS)}


def spectral_norms(models):
    return [m.parametrizations.weight[0] for m in d_layers(models).values()]


def largest_singular_value(layer) -> float:
    return torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2).item()


def test_sn_replaces_the_weight_norm_of_d_and_leaves_g_alone():
    models = tiny_models(wn=True)
    before = {name: m.weight.detach().clone() for name, m in d_layers(models).items()}
    assert all(igan.layers.is_weight_normed(m) for m in d_layers(models).values())

    sn.igan_modify_models(models=models, config=config())

    layers = d_layers(models)
    assert set(layers) == set(before)
    models.discriminator.eval()  # no power iteration when reading the weights
    for name, layer in layers.items():
        assert not igan.layers.is_weight_normed(layer), name
        assert len(layer.parametrizations.weight) == 1, name
        power_iteration = layer.parametrizations.weight[0]
        assert hasattr(power_iteration, "_u") and hasattr(power_iteration, "_v")
        # the rebuilt layer starts from the weight-normed layer's effective weight ...
        torch.testing.assert_close(layer.parametrizations.weight.original, before[name])
        # ... and the weight D uses is that weight over its largest singular value
        assert largest_singular_value(layer) == pytest.approx(1.0, abs=0.01), name
    assert igan.layers.is_weight_normed(models.generator.net[0])  # G keeps its weight norm


def test_sn_without_weight_norm_normalises_the_layers_in_place():
    models = tiny_models(wn=False)
    originals = d_layers(models)
    assert sn.apply_spectral_norm(models.discriminator, 2) == 3
    after = d_layers(models)
    assert all(after[name] is originals[name] for name in originals)  # same modules, parametrized
    assert all(parametrize.is_parametrized(m, "weight") for m in after.values())
    assert [p.n_power_iterations for p in spectral_norms(models)] == [2, 2, 2]
    assert not parametrize.is_parametrized(models.generator.net[0], "weight")


def test_sn_power_iterations_option_reaches_the_layers():
    models = tiny_models()
    sn.igan_modify_models(models=models, config=config(sn_power_iterations=3))
    assert [p.n_power_iterations for p in spectral_norms(models)] == [3, 3, 3]


def test_sn_off_changes_nothing():
    models = tiny_models()
    keys = set(models.discriminator.state_dict())
    sn.igan_modify_models(models=models, config=igan.RunConfig(options={"sn": False}))
    assert set(models.discriminator.state_dict()) == keys


def test_training_forward_passes_iterate_u_and_state_dict_round_trips_u_and_v():
    a = tiny_models(seed=0)
    sn.igan_modify_models(models=a, config=config())
    u0 = [p._u.clone() for p in spectral_norms(a)]
    for _ in range(3):  # power iterations happen in training-mode forward passes
        a.discriminator(torch.rand(5, 1, 8, 8))
    assert any(not torch.equal(u, p._u) for u, p in zip(u0, spectral_norms(a)))

    b = tiny_models(seed=1)  # another init: other weights and other random _u/_v
    sn.igan_modify_models(models=b, config=config())
    state = a.discriminator.state_dict()
    assert sum(k.endswith("._u") for k in state) == 3 and sum(k.endswith("._v") for k in state) == 3
    b.discriminator.load_state_dict(state)
    for pa, pb in zip(spectral_norms(a), spectral_norms(b)):
        assert torch.equal(pa._u, pb._u) and torch.equal(pa._v, pb._v)
    a.discriminator.eval()
    b.discriminator.eval()
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(a.discriminator(x).logits, b.discriminator(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("options, model_kwargs, needle", [
    ({"sn": True}, {"wn": True}, "--wn"),
    ({"sn": False, "sn_power_iterations": 3}, {}, "--sn-power-iterations given without --sn"),
])
def test_impossible_combinations_are_usage_errors(options, model_kwargs, needle):
    with pytest.raises(igan.UsageError, match=re.escape(needle)) as exc:
        sn.igan_configure(config=igan.RunConfig(options=options, model_kwargs=model_kwargs), pm=None)
    assert exc.value.hint


def test_sn_with_default_or_no_weight_norm_is_accepted():
    for model_kwargs in ({}, {"wn": False}):
        sn.igan_configure(config=igan.RunConfig(options={"sn": True}, model_kwargs=model_kwargs), pm=None)


# ------------------------------------------------------------------------------------------------
# end to end, through the installed igan command


def test_help_shows_the_options_in_the_plugin_panel(igan_cli):
    code, out, _ = igan_cli("train", "--help")
    assert code == 0
    panel = re.search(r"Plugin: spectral_norm ─+.\n(?P<body>.*?)\n\s*╰", out, re.S)
    assert panel, out
    assert "--sn " in panel["body"] and "--sn-power-iterations" in panel["body"]


def test_train_sample_and_resume_with_fm_and_mbd(igan_cli, tmp_path):
    """``--sn --fm --mbd`` trains; ``igan sample`` reloads the checkpoint; and 3 steps at once equal
    2 steps + ``--resume`` to 3 bit for bit, so the power-iteration vectors were restored."""
    flags = ["--sn", "--fm", "--mbd", "--mbd-kernels", "10", *TINY]  # few kernels: a quick MBD init
    code, _, err = igan_cli("train", "--steps", "2", *flags, "--out", tmp_path / "twice")
    assert code == 0, err
    ckpt = tmp_path / "twice" / "checkpoints" / "last.safetensors"
    tensors = load_file(ckpt)
    for layer in ("D.trunk.2", "D.out"):  # the first hidden layer, and the head that --mbd rebuilt
        for key in ("_u", "_v"):
            assert f"{layer}.parametrizations.weight.0.{key}" in tensors
    assert "D.mbd.theta" in tensors
    assert not any(".original0" in k for k in tensors if k.startswith("D."))  # no weight norm left in D
    assert any(".original0" in k for k in tensors if k.startswith("G."))  # G keeps it

    code, _, err = igan_cli("sample", ckpt, "-n", "4", "-o", tmp_path / "grid.png")
    assert code == 0, err
    assert (tmp_path / "grid.png").is_file()

    code, _, err = igan_cli("train", "--steps", "3", *flags, "--out", tmp_path / "twice", "--resume", ckpt)
    assert code == 0, err
    code, _, err = igan_cli("train", "--steps", "3", *flags, "--out", tmp_path / "once")
    assert code == 0, err
    once = load_file(tmp_path / "once" / "checkpoints" / "last.safetensors")
    twice = load_file(ckpt)
    for k in [k for k in once if k.startswith(("D.", "G."))]:
        assert torch.equal(once[k], twice[k]), k


def test_explicit_wn_with_sn_is_refused_on_the_command_line(igan_cli, tmp_path):
    code, out, err = igan_cli("train", "--steps", "2", *TINY, "--out", tmp_path / "both", "--sn", "--wn")
    assert code == 2 and out == ""
    assert "error: --sn replaces weight normalisation in D" in err and "hint:" in err
    assert not (tmp_path / "both").exists()
