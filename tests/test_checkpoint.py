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

from conftest import TINY, assert_clean_error

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
    # the first checkpoint of the run failed: the hint must not claim a previous one is intact
    assert "no checkpoint had been written yet" in info.value.hint and "intact" not in info.value.hint
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


# ------------------------------------------------------------------------------------------------
# damage is an error naming the file: the digest (tensors and metadata) and the metadata schema

def _header(data: bytes) -> tuple[int, dict]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n])


def _flip_bit_in(src, dst, tensor: str) -> None:
    """Flip one bit in the data area, inside ``tensor``'s bytes (what a bad disk or copy does)."""
    data = bytearray(src.read_bytes())
    n, header = _header(data)
    start, end = header[tensor]["data_offsets"]
    data[8 + n + (start + end) // 2] ^= 0x10
    dst.write_bytes(bytes(data))


def _retype(src, dst, tensor: str, old: str, new: str) -> None:
    """Change a tensor's dtype in the header to one of the same size (F32 -> I32): the bytes stay."""
    data = src.read_bytes()
    n, header = _header(data)
    entry = json.dumps(header[tensor], separators=(",", ":"))
    assert entry in data[8:8 + n].decode()
    changed = data[8:8 + n].decode().replace(entry, entry.replace(f'"{old}"', f'"{new}"'), 1).encode()
    assert len(changed) == n
    dst.write_bytes(data[:8] + changed + data[8 + n:])


@pytest.mark.parametrize("damage", ["bit-in-sampler", "bit-in-weight", "dtype-f32-to-i32", "metadata-step"])
def test_damaged_checkpoints_are_refused_naming_the_file(damage, trained_run, tmp_path, run_cli):
    src, bad = trained_run.joinpath(*CKPT), tmp_path / "bad.safetensors"
    if damage == "bit-in-sampler":  # where the fault campaign's flipped bit landed: the data order
        _flip_bit_in(src, bad, next(k for k in _header(src.read_bytes())[1] if k.startswith("sampler.")))
    elif damage == "bit-in-weight":
        _flip_bit_in(src, bad, "G.net.0.weight")
    elif damage == "dtype-f32-to-i32":
        _retype(src, bad, "D.out.bias", "F32", "I32")
    else:
        _rewrite(src, bad, step="7")  # the digest covers the metadata too
    with pytest.raises(IganError, match="damaged") as info:
        load_checkpoint(bad)
    assert str(bad) in info.value.message
    code, out, err = run_cli(["sample", bad, "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 1, str(bad), "damaged", "another copy or an earlier checkpoint")
    assert not (tmp_path / "g.png").exists()


def test_a_damaged_checkpoint_is_refused_on_resume(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, steps=2)[0] == 0
    ckpt = run.joinpath(*CKPT)
    _flip_bit_in(ckpt, ckpt, "D.out.bias")
    code, out, err = run_cli(["train", "--steps", "4", *TINY, "--resume", ckpt])
    assert_clean_error(code, out, err, 1, str(ckpt), "damaged")


def test_checkpoints_without_a_digest_still_load(trained_run, tmp_path, run_cli):
    old = tmp_path / "old.safetensors"
    _rewrite(trained_run.joinpath(*CKPT), old, digest=None)  # as written before igan stored one
    tensors, meta = load_checkpoint(old)
    assert "digest" not in meta and tensors
    code, out, err = run_cli(["sample", old, "-n", "4", "-o", tmp_path / "g.png"])
    assert code == 0, err


def test_the_digest_covers_every_tensor_and_entry(trained_run):
    from igan.checkpoint import tensor_digest

    tensors, _ = load_checkpoint(trained_run.joinpath(*CKPT))
    with safe_open(str(trained_run.joinpath(*CKPT)), framework="pt") as f:
        raw = dict(f.metadata())
    assert raw["digest"] == tensor_digest(tensors, raw) and raw["digest"].startswith("sha256:")
    changed = dict(tensors)
    changed["rng.torch"] = tensors["rng.torch"].clone()
    changed["rng.torch"][0] ^= 1
    assert tensor_digest(changed, raw) != raw["digest"]
    assert tensor_digest(tensors, {**raw, "step": "3"}) != raw["digest"]
    assert tensor_digest({k: v for k, v in tensors.items() if k != "rng.torch"}, raw) != raw["digest"]


def _edit_meta(src, dst, edit) -> None:
    """Rewrite ``src`` with its (decoded) metadata changed by ``edit`` and no digest, as an old checkpoint
    edited by hand or by another tool would be: only the schema can tell."""
    with safe_open(str(src), framework="pt") as f:
        raw = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    raw.pop("digest")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    edit(meta)
    safetensors.torch.save_file(tensors, str(dst), metadata={k: v if isinstance(v, str) else json.dumps(v)
                                                             for k, v in meta.items()})


def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split(".")
        target = meta
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return edit


def _rename_key(meta):
    meta["data"]["image_rhape"] = meta["data"].pop("image_shape")  # one flipped bit: s (0x73) -> r (0x72)


SCHEMA_CASES = {
    "flipped-key": (_rename_key, "data.image_shape is missing"),
    "config-not-an-object": (_set("config", [1, 2, 3]), "config must be an object"),
    "data-missing": (_set("data", KeyError), "data is missing"),
    "huge-hidden-layers": (_set("config.model_kwargs", {"g_hidden": [1e7, 1e7]}), "model_kwargs.g_hidden"),
    "empty-image-shape": (_set("data.image_shape", [1, 0, 0]), "data.image_shape must be"),
    "huge-image-shape": (_set("data.image_shape", [3, 100000, 100000]), "larger than igan builds"),
    "scale-zero": (_set("data.scale", 0), "data.scale must be a finite number > 0"),
    "max-value-nan": (_set("data.max_value", float("nan")), "data.max_value must be a finite number > 0"),
    "wn-yes": (_set("config.model_kwargs", {"wn": "yes"}), "model_kwargs.wn must be true or false"),
    "lr-infinite": (_set("config.lr", float("inf")), "config.lr must be a finite number"),
    "classes-huge": (_set("data.num_classes", 10**9), "data.num_classes must be in 1.."),
    "option-out-of-range": (_set("config.options.mbd_kernels", 0), "config.options.mbd_kernels must be in"),
    "option-bad-choice": (_set("config.options.fm_norm", "l7"), "config.options.fm_norm must be one of"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_metadata_that_igan_did_not_write_is_refused_before_building(case, trained_run, tmp_path, run_cli):
    edit, needle = SCHEMA_CASES[case]
    bad = tmp_path / "edited.safetensors"
    _edit_meta(trained_run.joinpath(*CKPT), bad, edit)
    code, out, err = run_cli(["sample", bad, "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 1, str(bad), needle, "edited or damaged")
    assert not (tmp_path / "g.png").exists()


def test_a_checkpoint_with_nan_weights_is_refused_by_sample_and_evaluate(trained_run, tmp_path, run_cli):
    tensors, meta = load_checkpoint(trained_run.joinpath(*CKPT))
    tensors["G.net.0.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_checkpoint(bad, tensors, {k: v for k, v in meta.items() if k not in ("format", "digest")})
    code, out, err = run_cli(["sample", bad, "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 1, str(bad), "non-finite weights", "G.net.0.weight")
    assert not (tmp_path / "g.png").exists()
    code, out, err = run_cli(["evaluate", bad, "--metric", "classifier-score", "-n", "20", "--splits", "2"])
    assert_clean_error(code, out, err, 1, str(bad), "non-finite weights")


def test_a_generator_that_outputs_nan_gives_no_samples(trained_run, tmp_path):
    from igan.restore import restore_models

    restored = restore_models(trained_run.joinpath(*CKPT), "cpu")
    with torch.no_grad():  # finite weights whose outputs overflow: inf - inf in the batch norm
        for p in restored.models.generator.parameters():
            p.fill_(3e38)
    with pytest.raises(IganError, match="non-finite outputs"):
        list(restored.generate(8, seed=0))


# ------------------------------------------------------------------------------------------------
# modes: what open() would give, not mkstemp's 0600

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_and_samples_get_the_mode_of_the_umask(umask, train_cli, run_cli, tmp_path):
    import os
    import stat

    previous = os.umask(umask)
    try:
        run = tmp_path / "run"
        assert train_cli(run, steps=2)[0] == 0
        assert run_cli(["sample", run.joinpath(*CKPT), "-n", "4", "-o", tmp_path / "g.png"])[0] == 0
        assert run_cli(["sample", run.joinpath(*CKPT), "-n", "4", "-o", tmp_path / "g.npz"])[0] == 0
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for path in (run.joinpath(*CKPT), run / "samples" / "epoch_0001.png", run / "config.json",
                 run / "summary.json", tmp_path / "g.png", tmp_path / "g.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_rewritten_file_keeps_its_mode(trained_run, tmp_path):
    import os
    import stat

    path = tmp_path / "kept.safetensors"
    tensors, meta = load_checkpoint(trained_run.joinpath(*CKPT))
    meta = {k: v for k, v in meta.items() if k not in ("format", "digest")}
    save_checkpoint(path, tensors, meta)
    os.chmod(path, 0o604)
    save_checkpoint(path, tensors, meta)  # as open(path, "w") would: an existing file keeps its mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
