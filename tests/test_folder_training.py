"""End to end on generated image folders: ``igan train`` / ``igan semisup --dataset folder`` at 32, 64 and
128 pixels (the model chosen from the size), the techniques on the DCGAN-style pairs, ``sample`` and
``evaluate`` rebuilding a folder-trained model, ``--resume`` refusing changed data, and the CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _images import class_folder, flat_folder
from conftest import TINY, assert_clean_error
from igan.layers import BatchNormNoScale, VirtualBatchNorm
from igan.models import build_dcgan

SMALL = ["--batch-size", "4", "--device", "cpu", "--log-every", "1"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch, single_thread):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default image cache, never ~/.cache


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> Path:
    """Three classes of six small images each, mixed formats."""
    return class_folder(tmp_path_factory.mktemp("data") / "pets", per_class=6)


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("size, model, steps, flags", [
    (32, "cifar_conv", 2, []), (64, "dcgan64_conv", 2, []),
    (128, "dcgan128_conv", 1, ["--fm", "--mbd", "--vbn", "--ha", "--ls"]),  # one step: slow on a CPU
])
def test_train_on_a_folder_at_each_size(run_cli, pets, tmp_path, size, model, steps, flags):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", "--dataset", "folder", "--data-dir", pets, "--image-size", size,
                                 "--steps", steps, *SMALL, "--out", out, *flags])
    assert code == 0, err
    assert stdout == f"{out}\n"
    cfg = _config(out)
    assert cfg["model"] == model  # chosen from the image size
    info = cfg["dataset_info"]
    assert info["image_size"] == size and info["classes"] == ["cat", "dog", "eel"]
    assert info["train_images"] + info["test_images"] == 18 and info["test_fraction"] == 0.1
    assert info["test_split"] == "0.1 of each class (seed 0)" and info["split_seed"] == 0
    from igan.checkpoint import load_checkpoint

    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["data"]["image_shape"] == [3, size, size]


@pytest.mark.parametrize("size, steps", [(32, 2), (64, 2), (128, 1)])
def test_semisup_on_a_labelled_folder_at_each_size(run_cli, pets, tmp_path, size, steps):
    out = tmp_path / "semi"
    code, stdout, err = run_cli(["semisup", "--dataset", "folder", "--data-dir", pets, "--image-size", size,
                                 "--labels", "6", "--steps", steps, *SMALL, "--out", out, "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["labels"] == 6 and result["test_size"] == 3  # one held-out image per class
    assert 0 <= result["test_errors"] <= 3
    assert _config(out)["num_classes"] == 3


def test_semisup_default_labels_are_ten_per_class(run_cli, tmp_path):
    root = class_folder(tmp_path / "big", classes=("a", "b"), per_class=12)
    code, stdout, err = run_cli(["semisup", "--dataset", "folder", "--data-dir", root, "--image-size", "32",
                                 "--steps", "1", *SMALL, "--out", tmp_path / "s", "--json"])
    assert code == 0, err
    assert json.loads(stdout)["labels"] == 20


def test_all_five_techniques_on_the_dcgan_pair(run_cli, pets, tmp_path):
    out = tmp_path / "all"
    code, _, err = run_cli(["train", "--dataset", "folder", "--data-dir", pets, "--image-size", "64", "--fm", "--mbd",
                            "--vbn", "--ha", "--ls", "--steps", "2", *SMALL, "--out", out])
    assert code == 0, err
    from igan.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["config"]["options"]["vbn"] and "G.ref_z" in tensors  # VBN's reference batch is saved
    assert any(k.startswith("D.mbd.") for k in tensors)
    # sample rebuilds the model (VBN, MBD) from the checkpoint's metadata, at the folder's image size
    npz = tmp_path / "s.npz"
    code, _, err = run_cli(["sample", out / "checkpoints" / "last.safetensors", "-n", "5", "-o", npz,
                            "--device", "cpu"])
    assert code == 0, err
    with np.load(npz) as f:
        assert f["images"].shape == (5, 64, 64, 3) and f["images"].dtype == np.uint8


def test_evaluate_error_of_a_folder_semisup_checkpoint(run_cli, pets, tmp_path):
    out = tmp_path / "semi"
    code, _, err = run_cli(["semisup", "--dataset", "folder", "--data-dir", pets, "--image-size", "32", "--labels",
                            "6", "--steps", "2", *SMALL, "--out", out, "--json"])
    assert code == 0, err
    trained = json.loads((out / "semisup.json").read_text())
    code, stdout, err = run_cli(["evaluate", out / "checkpoints" / "last.safetensors", "--metric", "error", "--json",
                                 "--device", "cpu"])
    assert code == 0, err
    result = json.loads(stdout)
    assert result["n"] == 3 and result["test_errors"] == trained["test_errors"]  # the same held-out images


def test_a_grey_unlabelled_folder_trains_with_one_channel(run_cli, tmp_path):
    from PIL import Image

    root = tmp_path / "scans"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), mode="L").save(root / f"{i}.png")
    out = tmp_path / "g"
    code, _, err = run_cli(["train", "--dataset", "folder", "--data-dir", root, "--image-size", "32", "--steps", "1",
                            *SMALL, "--out", out])
    assert code == 0, err
    info = _config(out)["dataset_info"]
    assert info["channels"] == 1 and info["layout"] == "flat" and info["test_images"] == 1


def test_resume_refuses_a_folder_that_changed(run_cli, tmp_path):
    from _images import solid

    root = class_folder(tmp_path / "c", per_class=4)
    out = tmp_path / "r"
    base = ["train", "--dataset", "folder", "--data-dir", root, "--image-size", "32", *SMALL]
    code, _, err = run_cli([*base, "--steps", "1", "--out", out])
    assert code == 0, err
    ckpt = out / "checkpoints" / "last.safetensors"
    code, _, err = run_cli([*base, "--steps", "2", "--resume", ckpt])  # unchanged: continues
    assert code == 0, err
    solid(root / "cat" / "new.png", (1, 2, 3))
    code, out_text, err = run_cli([*base, "--steps", "3", "--resume", ckpt])
    assert_clean_error(code, out_text, err, 1, "trained on other data")


def test_the_cache_is_built_once_across_runs(run_cli, pets, tmp_path):
    args = ["train", "--dataset", "folder", "--data-dir", pets, "--image-size", "32", "--steps", "1", *SMALL]
    code, _, err = run_cli([*args, "--out", tmp_path / "a"])
    assert code == 0 and "image cache built: decoded 18 images" in err
    assert "18 images of 3x32x32, 54.0 KiB" in err  # the size is reported (18 * 3 * 32 * 32 bytes)
    code, _, err = run_cli([*args, "--out", tmp_path / "b"])
    assert code == 0 and "unchanged since it was built" in err and "54.0 KiB" in err
    assert _config(tmp_path / "a")["dataset_info"]["fingerprint"] == _config(tmp_path / "b")["dataset_info"]["fingerprint"]


@pytest.mark.parametrize("args, code, needles", [
    (["semisup", "--dataset", "folder", "--data-dir", "{flat}"], 2, ["no class sub-folders"]),
    (["train", "--dataset", "folder"], 2, ["needs --data-dir"]),
    (["train", "--dataset", "folder", "--data-dir", "{missing}"], 1, ["does not exist"]),
    (["train", "--dataset", "folder", "--data-dir", "{flat}", "--image-size", "48"], 2, ["--image-size must be one of"]),
    (["train", "--dataset", "folder", "--data-dir", "{flat}", "--image-mode", "cmyk"], 2, ["--image-mode", "'cmyk' is not one of"]),
    (["train", "--dataset", "digits", "--image-size", "64"], 2, ["--image-size applies to --dataset folder"]),
    (["train", "--dataset", "digits", "--test-fraction", "0.2"], 2, ["--test-fraction applies to"]),
    (["train", "--dataset", "folder", "--data-dir", "{flat}", "--image-size", "128", "--model", "dcgan64_conv"], 2,
     ["dcgan64_conv takes 64x64 images", "128x128", "folder trains dcgan128_conv"]),
])
def test_cli_errors_are_one_line(run_cli, tmp_path, args, code, needles):
    flat = flat_folder(tmp_path / "flat", n=6)
    args = [a.format(flat=flat, missing=tmp_path / "nope") for a in args]
    got, out, err = run_cli([*args, "--steps", "1", *TINY, "--out", tmp_path / "x"])
    assert_clean_error(got, out, err, code, *needles)


# ------------------------------------------------------------------------------------------------
# the DCGAN-style pair itself


@pytest.mark.parametrize("size, g_bn, d_convs", [(64, 4, 4), (128, 5, 5)])
def test_dcgan_pair_shapes_and_slots(size, g_bn, d_convs):
    torch.manual_seed(0)
    models = build_dcgan((3, size, size), 1, image_size=size)
    g, d = models.generator, models.discriminator
    x = g(torch.rand(2, 100))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1  # tanh output
    out = d(x)
    assert out.logits.shape == (2, 1) and out.features.shape == (2, 512)
    assert sum(isinstance(m, BatchNormNoScale) for m in g.modules()) == g_bn
    assert sum(isinstance(m, torch.nn.Conv2d) for m in d.trunk.modules()) == d_convs
    widths = [m.out_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == ([256, 128, 64, 3] if size == 64 else [256, 128, 64, 64, 3])  # reference ImageNet G widths


def test_vbn_replaces_every_batch_norm_of_the_dcgan_generator():
    from igan.config import RunConfig
    from igan.techniques import virtual_batchnorm

    models = build_dcgan((3, 64, 64), 1)
    config = RunConfig(model="dcgan64_conv", batch_size=4, options={"vbn": True})
    virtual_batchnorm.igan_modify_models(models, config)
    g = models.generator
    assert not any(isinstance(m, BatchNormNoScale) for m in g.modules())
    assert sum(isinstance(m, VirtualBatchNorm) for m in g.modules()) == 4
    assert g(torch.rand(3, 100)).shape == (3, 3, 64, 64)


def test_fid_statistics_of_two_folders_are_cached_apart(tmp_path, monkeypatch):
    """The FID cache is named by the dataset; two folders are both "folder", so their fingerprint names them."""
    from igan import evaluate
    from igan.datasets.folder import load_folder

    monkeypatch.setattr(evaluate, "_inception_pool_logits",
                        lambda model, images, device, what: (images.flatten(1)[:, :6].float(), None))
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"w")
    a = load_folder(class_folder(tmp_path / "a", per_class=3), image_size=32, progress=False)
    b = load_folder(flat_folder(tmp_path / "b", n=9), image_size=32, progress=False)
    mu_a, _, path_a = evaluate._real_statistics(a, "train", 6, weights, None, torch.device("cpu"))
    mu_b, _, path_b = evaluate._real_statistics(b, "train", 6, weights, None, torch.device("cpu"))
    assert path_a != path_b and a.info["fingerprint"] in path_a.name
    assert not torch.equal(mu_a, mu_b)


def test_a_dataset_too_large_for_the_training_device_is_refused(run_cli, pets, tmp_path, monkeypatch):
    """build_run checks the device's free memory before moving the whole set there (a GPU, here faked)."""
    from igan import train
    from igan.datasets import memory

    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("meta"))
    monkeypatch.setattr(memory, "free_device_memory", lambda device: None if torch.device(device).type == "cpu"
                        else 1000)
    code, out, err = run_cli(["train", "--dataset", "folder", "--data-dir", pets, "--image-size", "32", "--steps", "1",
                              *SMALL, "--out", tmp_path / "x"])
    # 18 images of 3x32x32 (55296 bytes) plus their int64 labels (144 bytes)
    assert_clean_error(code, out, err, 1, "needs 54.1 KiB of meta memory, but only 1000 B is free")
