"""The embedded default dataset: 1797 handwritten digits of 8x8 pixels (values 0..16).

The test set of the UCI "Optical Recognition of Handwritten Digits" data (Alpaydin & Kaynak 1998,
CC BY 4.0, see DIGITS-LICENSE.txt), stored in the package as scikit-learn ships it, so ``igan train``
runs with no download and no scikit-learn. The set has no official split: igan keeps the first 1500
images for training and the last 297 for testing (fixed, so error numbers are comparable).
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from igan.datasets.base import ImageDataset

__all__ = ["load_digits", "N_TRAIN"]

N_TRAIN = 1500


def load_digits(data_dir: Path | None = None, download: bool = False) -> ImageDataset:
    del data_dir, download  # embedded: nothing to find or fetch
    raw = resources.files("igan.datasets").joinpath("digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.uint8)
    x = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8).copy())
    y = torch.from_numpy(table[:, 64].astype(np.int64))
    return ImageDataset("digits", x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], num_classes=10,
                        scale=1 / 16, shift=0.0, max_value=16, source="embedded (UCI optdigits, CC BY 4.0)")
