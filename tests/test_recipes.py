"""Learning-rate schedules against their formulas, and the named recipes of the reference MNIST script.

The recipes (igan.recipes, docs/reproduction.md): ``reference`` is today's script (0fa06b5), the models'
own defaults; ``paper-v1`` is the script of 9 June 2016 (2b81a18): lr 0.001 * min(3 - epoch/100, 1),
test error of D's raw weights, and G's output layer weight-normed with data-dependent init.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY
from igan.schedules import lr_factor


# ---- schedules --------------------------------------------------------------------------------------


def test_linear_decay_is_the_paper_v1_mnist_formula():
    """2b81a18: lr = 0.001 * min(3 - epoch/100, 1) for epoch in range(301); epoch 300's lr is 0."""
    for epoch in (0, 1, 150, 199, 200, 201, 250, 299):
        assert lr_factor(epoch, 300, 200, "linear") == pytest.approx(min(3 - epoch / 100, 1.0))
    assert lr_factor(300, 300, 200) == 0.0


def test_cosine_decay_by_hand():
    """0.5 (1 + cos(pi (epoch - N) / (E - N))): constant to N, 1/2 half-way, 0 at the end."""
    assert lr_factor(9, 20, 10, "cosine") == 1.0
    assert lr_factor(10, 20, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(15, 20, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(12, 20, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(20, 20, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    # a decay from epoch 0 is the whole run
    assert lr_factor(5, 10, 0, "cosine") == 1.0  # 0 means never, as --lr-decay-from 0


def test_warmup_then_decay():
    """Warm-up (epoch + 1) / W multiplies whatever the decay gives."""
    assert [lr_factor(e, 10, 0, warmup=4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(1, 4, 1, "linear", warmup=2) == pytest.approx(1.0 * (4 - 1) / 3)
    assert lr_factor(0, 4, 0, warmup=2) == 0.5
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor(0, 4, 2, "step")


def test_cosine_schedule_in_training(run_cli, tmp_path):
    """--lr-schedule cosine: 4 epochs decaying from epoch 2, the last epoch (3) trains at 0.5 * (1 + cos(pi/2))."""
    from igan.checkpoint import load_checkpoint

    code, _, err = run_cli(["train", "--epochs", "4", "--lr-decay-from", "2", "--lr-schedule", "cosine", "--lr",
                            "0.002", "--batch-size", "300", "--device", "cpu", "--out", tmp_path / "r"])
    assert code == 0, err
    _, meta = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert [g["lr"] for g in meta["opt_groups"]["D"]] == [pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi / 2)))]
    assert meta["config"]["lr_schedule"] == "cosine"
    code, _, err = run_cli(["train", "--lr-schedule", "step", "--steps", "1", *TINY, "--out", tmp_path / "bad"])
    assert code == 2 and "Invalid value for '--lr-schedule': 'step' is not one of 'linear', 'cosine'." in err


# ---- recipes ----------------------------------------------------------------------------------------


def _model_def(name):
    from igan.plugins import get_plugin_manager
    from igan.train import model_registry

    return model_registry(get_plugin_manager())[name]


def test_paper_v1_on_mnist_is_the_2b81a18_schedule():
    """On the MNIST pair (300 epochs): lr 0.001, linear decay from epoch 200, no average, G output data init."""
    from igan.config import RunConfig
    from igan.recipes import apply_recipe
    from igan.train import apply_model_defaults

    config = RunConfig(command="semisup", dataset="mnist", model="mnist_mlp", recipe="paper-v1",
                       options={"ema_decay": 0.9999})
    md = _model_def("mnist_mlp")
    apply_recipe(config, md)
    apply_model_defaults(config, md)
    assert (config.lr, config.epochs, config.lr_decay_from, config.lr_schedule) == (0.001, 300, 200, "linear")
    assert config.options["ema_decay"] == 0.0 and config.model_kwargs == {"g_out_data_init": True}
    rates = [config.lr * lr_factor(e, config.epochs, config.lr_decay_from, config.lr_schedule) for e in range(300)]
    assert rates == pytest.approx([0.001 * min(3 - e / 100, 1) for e in range(300)])

    reference = RunConfig(command="semisup", dataset="mnist", model="mnist_mlp", recipe="reference")
    apply_recipe(reference, md)
    apply_model_defaults(reference, md)
    assert (reference.lr, reference.epochs, reference.lr_decay_from) == (0.003, 300, 0)
    assert reference.model_kwargs == {} and reference.options == {}


def _semisup(run_cli, out, *flags):
    code, stdout, err = run_cli(["semisup", "--steps", "6", "--batch-size", "50", "--device", "cpu", "--no-baseline",
                                 "--json", "--out", out, *flags])
    assert code == 0, err
    from igan.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    return tensors, meta, json.loads(stdout)


def _ema_equals_raw_d(tensors) -> bool:
    ema = {k.removeprefix("plugin.semisup.run.ema."): v for k, v in tensors.items() if ".ema." in k}
    assert ema, sorted(tensors)[:20]
    return all(torch.equal(v, tensors[f"D.{k}"]) for k, v in ema.items())


def _g_output_layer(tensors):
    """G's last Linear of the digits MLP: its weight-norm scale g [out, 1] and bias [out]."""
    keys = sorted(k for k in tensors if k.startswith("G.") and k.endswith("parametrizations.weight.original0"))
    last = keys[-1].removesuffix(".parametrizations.weight.original0")
    return tensors[keys[-1]].flatten(), tensors[f"{last}.bias"]


def test_paper_v1_evaluates_raw_d_and_inits_g_output(run_cli, tmp_path, single_thread):
    tensors, meta, result = _semisup(run_cli, tmp_path / "v1", "--recipe", "paper-v1", "--lr-decay-from", "0")
    config = meta["config"]
    assert config["recipe"] == "paper-v1" and config["lr"] == 0.001
    assert _ema_equals_raw_d(tensors)  # the test error is D's own weights
    json_config = json.loads((tmp_path / "v1" / "config.json").read_text())
    assert json_config["recipe"] == "paper-v1" and json_config["model_kwargs"] == {"g_out_data_init": True}

    # Today's reference: the 0.9999 average (not D itself), and G's output scale starts at 1 with no data init.
    ref, ref_meta, _ = _semisup(run_cli, tmp_path / "ref", "--lr-decay-from", "0")
    assert ref_meta["config"]["recipe"] is None and not _ema_equals_raw_d(ref)


def test_g_output_data_init_pools_one_std(tmp_path):
    """The 2b81a18 WeightNormLayer init: each unit centred, all units divided by one pooled std, so the
    layer's pre-activations on the init batch have mean 0 per unit and overall RMS 1; g is one value."""
    from igan.layers import data_dependent_init

    md = _model_def("digits_mlp")
    torch.manual_seed(0)
    models = md.build((1, 8, 8), 1, g_out_data_init=True)
    out = models.generator.net[-2]
    z = torch.rand(300, models.z_dim)
    data_dependent_init(models.generator, z)
    g = out.parametrizations.weight.original0.detach().flatten()
    assert torch.allclose(g, g[0].expand_as(g)) and not torch.allclose(g, torch.ones_like(g))
    pre = models.generator.net[:-2](z) @ out.weight.t() + out.bias  # the output layer's pre-activation
    assert pre.mean(0).abs().max() < 1e-4
    assert pre.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
    assert pre.std(0, unbiased=False).std() > 0.01  # per-unit stds differ: not a per-unit init

    plain = md.build((1, 8, 8), 1)  # today's reference: l2-normalised, scale 1, skipped by the init
    data_dependent_init(plain.generator, z)
    last = plain.generator.net[-2]
    assert torch.equal(last.parametrizations.weight.original0, torch.ones_like(last.parametrizations.weight.original0))
    assert torch.equal(last.bias, torch.zeros_like(last.bias))


def test_explicit_flags_beat_the_recipe(run_cli, tmp_path, single_thread):
    tensors, meta, _ = _semisup(run_cli, tmp_path / "mixed", "--recipe", "paper-v1", "--lr", "0.002",
                                "--ema-decay", "0.5", "--no-g-out-data-init", "--lr-decay-from", "0")
    config = meta["config"]
    assert config["lr"] == 0.002 and config["options"]["ema_decay"] == 0.5
    assert config["model_kwargs"] == {"g_out_data_init": False}
    assert not _ema_equals_raw_d(tensors)
    assert {"lr", "ema_decay", "g_out_data_init", "recipe"} <= set(config["given"])
    g, b = _g_output_layer(tensors)  # no data init: scale 1 before training moved it a little
    assert (g - 1).abs().max() < 0.05


def test_recipe_refusals(run_cli, tmp_path):
    code, _, err = run_cli(["semisup", "--recipe", "nope", "--steps", "1", *TINY, "--out", tmp_path / "a"])
    assert code == 2 and "Invalid value for '--recipe': 'nope' is not one of 'reference', 'paper-v1'." in err
    code, _, err = run_cli(["semisup", "--recipe", "paper-v1", "--model", "cifar_conv", "--steps", "1", *TINY,
                            "--out", tmp_path / "b"])
    assert code == 2 and "recipe paper-v1 is for the MLP pairs" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    code, _, err = run_cli(["train", "--recipe", "paper-v1"])
    assert code == 2 and "--recipe" in err  # a semisup option: the scripts it follows are semi-supervised


def test_report_shows_the_recipe(run_cli, tmp_path, single_thread):
    _semisup(run_cli, tmp_path / "v1", "--recipe", "paper-v1")
    code, out, err = run_cli(["report", tmp_path / "v1", "-o", tmp_path / "r.html"])
    assert code == 0, err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "--recipe paper-v1" in text
