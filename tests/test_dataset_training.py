"""`igan train --dataset D --data-dir DIR --steps 2` on tiny files in each real format (MNIST IDX,
CIFAR-10 python pickles, SVHN .mat), with the paper's model for each dataset."""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from igan.checkpoint import load_checkpoint
from igan.cli import main
from test_datasets import make_cifar, make_mnist, make_svhn


@pytest.fixture
def unverified(monkeypatch):
    """The registry's loaders verify official checksums; tiny synthetic files cannot pass that."""

    def patch(module: str, func: str) -> None:
        mod = importlib.import_module(module)
        monkeypatch.setattr(mod, func, functools.partial(getattr(mod, func), verify=False))

    return patch


@pytest.mark.parametrize("dataset, module, func, make, model, shape", [
    ("mnist", "igan.datasets.mnist", "load_mnist", lambda d: make_mnist(d, n_train=20, n_test=5), "mnist_mlp",
     [1, 28, 28]),
    ("cifar10", "igan.datasets.cifar10", "load_cifar10", lambda d: make_cifar(d / "cifar-10-batches-py", n=4),
     "cifar_conv", [3, 32, 32]),
    ("svhn", "igan.datasets.svhn", "load_svhn", lambda d: make_svhn(d, n_train=20, n_test=5), "svhn_conv",
     [3, 32, 32]),
])
def test_train_two_steps_on_each_dataset(dataset, module, func, make, model, shape, tmp_path, capsys, unverified):
    torch.set_num_threads(1)
    data = tmp_path / "data"
    make(data)
    unverified(module, func)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", dataset, "--data-dir", str(data), "--steps", "2", "--batch-size", "10",
              "--device", "cpu", "--out", str(out), "--fm", "--mbd"])
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    tensors, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["config"]["model"] == model and meta["data"]["image_shape"] == shape
    assert meta["step"] == 2
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith(("G.", "D.")) and t.is_floating_point())
