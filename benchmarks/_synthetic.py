"""Synthetic datasets for the benchmarks, registered through an extra plugin (no files needed):
``bench_mnist`` (MNIST-shaped) and ``bench_cifar`` (CIFAR-10-shaped, scaled as igan's cifar10)."""

from __future__ import annotations

import torch

from igan.datasets.base import DatasetSpec, ImageDataset
from igan.plugins import hookimpl


class BenchData:
    """An extra plugin: registers ``bench_mnist`` and ``bench_cifar``, random uint8 images (fixed seed)."""

    def __init__(self, n_train: int = 6000, n_test: int = 1000) -> None:
        self.n_train, self.n_test = n_train, n_test
        self.made: dict[str, ImageDataset] = {}

    def dataset(self, name: str = "bench_mnist") -> ImageDataset:
        if name not in self.made:
            gen = torch.Generator().manual_seed(1234)
            shape = (1, 28, 28) if name == "bench_mnist" else (3, 32, 32)
            scale, shift = (1.0 / 255.0, 0.0) if name == "bench_mnist" else (1.0 / 128.0, -127.5 / 128.0)
            self.made[name] = ImageDataset(
                name=name,
                x_train=torch.randint(0, 256, (self.n_train, *shape), dtype=torch.uint8, generator=gen),
                y_train=torch.randint(0, 10, (self.n_train,), generator=gen),
                x_test=torch.randint(0, 256, (self.n_test, *shape), dtype=torch.uint8, generator=gen),
                y_test=torch.randint(0, 10, (self.n_test,), generator=gen),
                num_classes=10, scale=scale, shift=shift, source="synthetic (benchmarks/_synthetic.py)")
        return self.made[name]

    @hookimpl
    def igan_register_datasets(self, register):
        register(DatasetSpec("bench_mnist", lambda data_dir, download: self.dataset("bench_mnist"), "mnist_mlp",
                             "random MNIST-shaped images for benchmarks"))
        register(DatasetSpec("bench_cifar", lambda data_dir, download: self.dataset("bench_cifar"), "cifar_conv",
                             "random CIFAR-10-shaped images for benchmarks"))
