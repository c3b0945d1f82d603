"""safetensors checkpoints: atomic writes, write errors, metadata, format versions, layout."""

from __future__ import annotations

import errno
import json

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import igan
import igan.checkpoint
from igan.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from igan.restore import restore_models
from igan.errors import IganError

from conftest import assert_clean_error

pytestmark = pytest.mark.usefixtures("single_thread")

CKPT = ("checkpoints", "last.safetensors")
META = {"config": {"dataset": "digits"}, "step": 1}


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt" / "last.safetensors"
    first = {"w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint(path, first, META)
    good = path.read_bytes()

    def save_half_then_fail(tensors, filename, metadata=None):
        safetensors.torch.save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # the disk fills up half-way through
            f.truncate(len(good) // 2)
        raise failure

    monkeypatch.setattr(igan.checkpoint, "save_file", save_half_then_fail)
    with pytest.raises(type(failure)):
        save_checkpoint(path, {"w": torch.zeros(2, 3)}, META)

    assert path.read_bytes() == good
    tensors, meta = load_checkpoint(path)
    assert torch.equal(tensors["w"], first["w"])
    assert _leftovers(path.parent, path.name) == []  # the temporary file is gone


def test_write_error_during_training_names_the_path(train_cli, tmp_path, monkeypatch):
    real_save = safetensors.torch.save_file
    calls = []

    def fail_after_first(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(igan.checkpoint, "save_file", fail_after_first)
    run = tmp_path / "run"
    code, out, err = train_cli(run, "--checkpoint-every", "1", steps=4)
    ckpt = run.joinpath(*CKPT)
    assert_clean_error(code, out, err, 1, str(ckpt), "no space left", "intact")
    assert len(calls) == 2  # stopped at the first failed write
    _, meta = load_checkpoint(ckpt)
    assert meta["step"] == 1  # the previous checkpoint is intact
    assert _leftovers(ckpt.parent, ckpt.name) == []


def test_write_error_is_an_igan_error_from_fit(tmp_path, monkeypatch):
    from igan.config import RunConfig
    from igan.plugins import get_plugin_manager
    from igan.train import build_run, fit

    def always_fail(tensors, filename, metadata=None):
        raise PermissionError(errno.EACCES, "Permission denied", filename)

    run = build_run(RunConfig(steps=1, batch_size=10, device="cpu"), get_plugin_manager(), tmp_path / "run")
    monkeypatch.setattr(igan.checkpoint, "save_file", always_fail)
    with pytest.raises(IganError) as info:
        fit(run, progress=False)
    assert str(tmp_path / "run" / "checkpoints" / "last.safetensors") in info.value.message
    assert "intact" in info.value.hint
    assert isinstance(info.value.__cause__, OSError)


def test_metadata_describes_the_run(trained_run):
    path = trained_run.joinpath(*CKPT)
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert all(isinstance(v, str) for v in raw.values())  # safetensors metadata is str -> str
    assert raw["format"] == str(FORMAT_VERSION)

    _, meta = load_checkpoint(path)
    assert meta["format"] == FORMAT_VERSION
    assert meta["igan_version"] == igan.__version__
    assert meta["config"] == json.loads((trained_run / "config.json").read_text())
    assert meta["config"]["options"]["mbd"] is False  # every technique option is recorded
    assert meta["model"] == {"name": "digits_mlp", "kwargs": {}}
    plugins = meta["plugins"]
    assert plugins["core"] == igan.__version__
    for name in ("feature_matching", "minibatch_discrimination", "historical_averaging", "label_smoothing",
                 "virtual_batchnorm"):
        assert plugins[name] == igan.__version__
    assert meta["step"] == 2


def _rewrite(src, dst, **meta_changes):
    with safe_open(str(src), framework="pt") as f:
        raw = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in meta_changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    safetensors.torch.save_file(tensors, str(dst), metadata=raw)


def test_newer_format_is_refused_with_an_upgrade_hint(trained_run, tmp_path, run_cli):
    newer = tmp_path / "newer.safetensors"
    _rewrite(trained_run.joinpath(*CKPT), newer, format=str(FORMAT_VERSION + 1))
    with pytest.raises(IganError) as info:
        load_checkpoint(newer)
    assert str(FORMAT_VERSION + 1) in info.value.message
    assert "upgrade" in info.value.hint

    code, out, err = run_cli(["sample", newer, "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 1, str(newer), "upgrade")


def test_safetensors_without_igan_metadata_is_refused(trained_run, tmp_path):
    plain = tmp_path / "plain.safetensors"
    _rewrite(trained_run.joinpath(*CKPT), plain, format=None, config=None)
    with pytest.raises(IganError, match="not an igan checkpoint"):
        load_checkpoint(plain)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_loads_straight_onto_the_target_device(trained_run, device):
    tensors, _ = load_checkpoint(trained_run.joinpath(*CKPT), device)
    assert tensors and {t.device.type for t in tensors.values()} == {"cpu"}
    restored = restore_models(trained_run.joinpath(*CKPT), "cpu")
    assert next(restored.models.generator.parameters()).device.type == "cpu"


def test_checkpoint_layout(trained_run):
    tensors, _ = load_checkpoint(trained_run.joinpath(*CKPT))
    groups = ("G.", "D.", "opt_G.", "opt_D.", "sampler.", "rng.torch")
    for prefix in groups:
        assert any(k.startswith(prefix) for k in tensors), prefix
    assert all(k.startswith(groups + ("plugin.", "rng.")) for k in tensors)
    # the model entries are exactly the state dicts of the model the metadata describes
    restored = restore_models(trained_run.joinpath(*CKPT), "cpu")
    assert {k[2:] for k in tensors if k.startswith("G.")} == set(restored.models.generator.state_dict())
    assert {k[2:] for k in tensors if k.startswith("D.")} == set(restored.models.discriminator.state_dict())
    # Adam moments and step counts of both optimizers
    for opt in ("opt_G", "opt_D"):
        keys = {k.split(".", 2)[2] for k in tensors if k.startswith(opt + ".")}
        assert {"exp_avg", "exp_avg_sq", "step"} <= keys
    assert tensors["rng.torch"].dtype == torch.uint8


def test_historical_averaging_tensors_are_saved_under_the_plugin(train_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = train_cli(run, "--ha", steps=2)
    assert code == 0, err
    path = run.joinpath(*CKPT)
    tensors, _ = load_checkpoint(path)
    prefix = "plugin.historical_averaging.run."
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    assert own, sorted(k for k in tensors if k.startswith("plugin."))
    # the initial parameters plus one entry per optimizer step (2 steps, --g-steps 1)
    assert int(own["G.count"]) == 3 and int(own["D.count"]) == 3
    restored = restore_models(path, "cpu")
    for net, module in (("G", restored.models.generator), ("D", restored.models.discriminator)):
        params = [p for p in module.parameters() if p.requires_grad]
        means = [own[f"{net}.mean.{i}"] for i in range(len(params))]
        assert f"{net}.mean.{len(params)}" not in own
        assert [m.shape for m in means] == [p.shape for p in params]
        # a running mean of the history differs from the current parameters after updates
        assert any(not torch.equal(m, p.detach()) for m, p in zip(means, params))
