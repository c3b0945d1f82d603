"""Synthetic MNIST-shaped data for the benchmarks, registered through an extra plugin (no files needed)."""

from __future__ import annotations

import torch

from igan.datasets.base import DatasetSpec, ImageDataset
from igan.plugins import hookimpl


class BenchData:
    """An extra plugin: registers ``bench_mnist``, random MNIST-shaped uint8 images (fixed seed)."""

    def __init__(self, n_train: int = 6000, n_test: int = 1000) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.dataset = ImageDataset(
            name="bench_mnist",
            x_train=torch.randint(0, 256, (n_train, 1, 28, 28), dtype=torch.uint8, generator=gen),
            y_train=torch.randint(0, 10, (n_train,), generator=gen),
            x_test=torch.randint(0, 256, (n_test, 1, 28, 28), dtype=torch.uint8, generator=gen),
            y_test=torch.randint(0, 10, (n_test,), generator=gen),
            num_classes=10, scale=1.0 / 255.0, shift=0.0, source="synthetic (benchmarks/_synthetic.py)")

    @hookimpl
    def igan_register_datasets(self, register):
        register(DatasetSpec("bench_mnist", lambda data_dir, download: self.dataset, "mnist_mlp",
                             "random MNIST-shaped images for benchmarks"))
