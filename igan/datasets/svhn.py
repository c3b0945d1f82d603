"""SVHN (cropped digits, format 2) from ``train_32x32.mat`` and ``test_32x32.mat``.

As in the reference code (paper-notes §2.1): the 73,257 ``train`` images only (never ``extra``),
the 26,032 ``test`` images, label 10 meaning digit 0 mapped to 0, and pixels mapped with
``(x - 127.5) / 127.5`` onto [-1, 1]. The files are MATLAB v5 with ``X`` of shape (32, 32, 3, N)
and ``y`` of shape (N, 1); scipy reads them and is imported only when SVHN is asked for, so the
rest of igan does not depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from igan.datasets.base import ImageDataset
from igan.datasets.files import check_md5, check_size, download_files, missing_files_error, resolve_data_dir
from igan.errors import IganError

__all__ = ["SVHN_URL", "SVHN_MD5", "read_svhn_mat", "load_svhn"]

NAME = "svhn"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
HOMEPAGE = "http://ufldl.stanford.edu/housenumbers/"
TRAIN_FILE = "train_32x32.mat"
TEST_FILE = "test_32x32.mat"
SVHN_MD5 = {
    TRAIN_FILE: "e26dedcc434d2e4c54c9b2d4a06d8373",
    TEST_FILE: "eb5a983be6a315427106f1b164d9cef3",
}
# Larger files are refused before they are read (the official ones are about 182 MB and 64 MB). Their
# variables are zlib-compressed inside the .mat file; the MD5 check comes before scipy inflates them.
SVHN_MAX_BYTES = {TRAIN_FILE: 384 << 20, TEST_FILE: 128 << 20}


def _loadmat() -> Any:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise IganError("reading SVHN's .mat files needs scipy, which is not installed",
                        hint='pip install "igan[svhn]"') from None
    return loadmat


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file -> (uint8 [N, 3, 32, 32], int64 [N] in 0..9)."""
    loadmat = _loadmat()
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise IganError(f"{path}: MATLAB v7.3 files are not supported",
                        hint="use the official SVHN files, which are MATLAB v5") from None
    except Exception as e:  # scipy raises MatReadError, ValueError, TypeError... on damaged files
        raise IganError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})",
                        hint="the file is truncated or damaged; delete it and download it again") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise IganError(f"{path}: expected variables X and y, found {', '.join(sorted(mat)) or 'none'}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise IganError(f"{path}: X is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)")
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != x.shape[3]:
        raise IganError(f"{path}: {x.shape[3]} images but {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.number) or (y.size and (y.min() < 1 or y.max() > 10)):
        raise IganError(f"{path}: labels must be 1..10 (10 is digit 0), found "
                        f"{y.min() if y.size else ''}..{y.max() if y.size else ''}")
    y = y.astype(np.int64)
    y[y == 10] = 0  # SVHN writes digit 0 as label 10
    # X[h, w, c, n] -> [n, c, h, w]; copy to a contiguous array so batches index fast.
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def load_svhn(data_dir: Path | None = None, download: bool = False, *, verify: bool = True,
              base_url: str = SVHN_URL) -> ImageDataset:
    """SVHN's 73,257 training and 26,032 test images from ``data_dir`` (default: the cache).

    ``download`` fetches the missing .mat files from ``base_url``. ``verify=False`` skips the
    checksums (tests on synthetic files); the registry always verifies.
    """
    folder = resolve_data_dir(NAME, data_dir)
    files = (TRAIN_FILE, TEST_FILE)
    if download:
        download_files(base_url, SVHN_MD5, folder)
    if not all((folder / name).is_file() for name in files):
        raise missing_files_error("SVHN", folder, list(files), HOMEPAGE)
    _loadmat()  # fail on a missing scipy before spending time on checksums
    for name in files:
        check_size(folder / name, SVHN_MAX_BYTES[name], f"the SVHN file {name}")
    if verify:  # before scipy inflates anything: a file that is not the official one is never decompressed
        for name in files:
            check_md5(folder / name, SVHN_MD5[name], "SVHN", base_url.rstrip("/") + "/" + name)
    x_train, y_train = read_svhn_mat(folder / TRAIN_FILE)
    x_test, y_test = read_svhn_mat(folder / TEST_FILE)
    return ImageDataset(name=NAME, x_train=torch.from_numpy(x_train), y_train=torch.from_numpy(y_train),
                        x_test=torch.from_numpy(x_test), y_test=torch.from_numpy(y_test),
                        num_classes=10, scale=1.0 / 127.5, shift=-1.0, source=str(folder),
                        class_names=tuple(str(d) for d in range(10)))
