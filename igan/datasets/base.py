"""The in-memory dataset every loader returns, and the registry entry that names a loader.

Datasets are small (CIFAR-10's training set is 150 MB as uint8), so each one is held as a single
uint8 tensor and moved to the training device whole; batches are drawn by index on the device with
no DataLoader workers in the hot path (the airbench approach). Pixels stay uint8 until a batch is
drawn; ``to_float`` applies the reference code's preprocessing (paper-notes §2.1) on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

__all__ = ["ImageDataset", "DatasetSpec", "outputs_to_uint8"]


@dataclass(frozen=True)
class ImageDataset:
    """Images as uint8 NCHW tensors plus integer labels, with the affine map to model inputs.

    ``float = uint8 * scale + shift``: MNIST/digits map to [0, 1], CIFAR-10 to (x - 127.5) / 128 and
    SVHN to (x - 127.5) / 127.5, exactly as the reference code preprocessed them.
    """

    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor | None  # uint8 [M, C, H, W] or None when the set has no test split
    y_test: torch.Tensor | None  # int64 [M]
    num_classes: int
    scale: float
    shift: float
    max_value: int = 255  # largest raw pixel value (the embedded digits use 0..16)
    source: str = ""  # where the data came from, for logs and the run config
    class_names: tuple[str, ...] = field(default_factory=tuple)
    # JSON-ready facts about where the data came from (layout, split, cache, skipped files), recorded as
    # ``dataset_info`` in config.json; a ``fingerprint`` entry identifies the exact data for --resume.
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x_train.dtype != torch.uint8 or self.x_train.dim() != 4:
            raise ValueError(f"{self.name}: x_train must be uint8 [N, C, H, W], got "
                             f"{self.x_train.dtype} {tuple(self.x_train.shape)}")
        if self.y_train.shape[0] != self.x_train.shape[0]:
            raise ValueError(f"{self.name}: {self.x_train.shape[0]} images but "
                             f"{self.y_train.shape[0]} labels")

    @property
    def nbytes(self) -> int:
        """Bytes its tensors take: what moving it to the training device needs."""
        return sum(t.numel() * t.element_size() for t in (self.x_train, self.y_train, self.x_test, self.y_test)
                   if t is not None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> model inputs (float32), the reference preprocessing."""
        return x.float().mul_(self.scale).add_(self.shift)

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Model outputs -> uint8 pixels in [0, 255] (inverse map, rounded, clamped)."""
        return outputs_to_uint8(x, self.scale, self.shift, self.max_value)

    @property
    def value_range(self) -> tuple[float, float]:
        """Range of model inputs: G's output layer must cover it."""
        return (self.shift, self.max_value * self.scale + self.shift)

    def to(self, device: torch.device | str) -> "ImageDataset":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, x_train=move(self.x_train), y_train=move(self.y_train),
                       x_test=move(self.x_test), y_test=move(self.y_test))


def outputs_to_uint8(x: torch.Tensor, scale: float, shift: float, max_value: int) -> torch.Tensor:
    """Invert ``uint8 * scale + shift``, rescale 0..max_value to 0..255, round and clamp."""
    raw = (x.float() - shift) / scale
    return (raw * (255.0 / max_value)).round_().clamp_(0, 255).to(torch.uint8)


# A loader takes (data_dir, download) and returns the dataset; data_dir None means "the default".
Loader = Callable[[Path | None, bool], ImageDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: a name, how to load it, and the model pair that fits it by default.

    ``default_model`` is a model name, or a function of the loaded dataset that returns one (for sets
    whose image size is chosen by the user: ``--dataset folder``). A loader that accepts a ``config``
    keyword also receives the run's ``RunConfig`` (its options, ``command``, ``seed``); ``None`` when
    there is no run (``igan evaluate`` of a file)."""

    name: str
    loader: Loader
    default_model: str | Callable[[ImageDataset], str]
    description: str = ""
    files: tuple[str, ...] = ()  # the files it reads, for error messages and docs

    def model_for(self, dataset: ImageDataset) -> str:
        """The model pair to use for ``dataset`` when ``--model`` is not given."""
        return self.default_model(dataset) if callable(self.default_model) else self.default_model
