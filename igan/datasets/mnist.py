"""MNIST from its four IDX files, gzipped or not, as uint8 tensors scaled to [0, 1].

The reference code fed MNIST to its MLPs as floats in [0, 1] (paper-notes §2.1), so the dataset
carries ``scale=1/255, shift=0``. The IDX format is parsed here directly (magic number, big-endian
dimensions, then raw uint8) with ``numpy.frombuffer``: 60,000 images load in well under a second
and no torchvision is needed.

Checksums: a file is accepted when either its .gz bytes match the official .gz MD5 or its
decompressed content matches the official decompressed MD5, so re-compressed or gunzipped copies of
the genuine data are valid while anything else is refused.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from igan.datasets.base import ImageDataset
from igan.datasets.files import (check_size, download_files, md5_bytes, md5_file, missing_files_error, read_gzip,
                                 resolve_data_dir)
from igan.errors import IganError

__all__ = ["MNIST_URL", "MNIST_FILES", "MNIST_GZ_MD5", "MNIST_RAW_MD5", "MNIST_RAW_SIZE", "read_idx", "load_mnist"]

NAME = "mnist"
# The LeCun site no longer serves the files reliably; this is the mirror torchvision uses.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
HOMEPAGE = "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/)"

# (train images, train labels, test images, test labels): the order the loader reads them in.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# MD5 of the official .gz downloads.
MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
# MD5 of the decompressed files: what makes a re-compressed copy recognisable.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# Sizes of the decompressed files: nothing larger is read (header + 60,000 or 10,000 items).
MNIST_RAW_SIZE = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _find(folder: Path, name: str) -> Path | None:
    # The uncompressed file wins when both exist: it is the faster of the two to read.
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_content(path: Path, name: str, verify: bool) -> bytes:
    """The decompressed bytes of ``path``, checked against the official MD5s when ``verify``. Never more
    than the official file's size is read or inflated (a small .gz can inflate to gigabytes)."""
    limit, what = MNIST_RAW_SIZE[name], f"the MNIST file {name}"
    gz_ok = False
    try:
        if path.suffix == ".gz":
            check_size(path, limit + limit // 100 + 4096, what)  # even stored uncompressed, gzip adds little
            gz_ok = verify and md5_file(path) == MNIST_GZ_MD5[name]
            data = read_gzip(path, limit, what)
        else:
            check_size(path, limit, what)
            data = path.read_bytes()
    except OSError as e:
        raise IganError(f"cannot read {path}: {e.strerror}") from None
    if verify and not gz_ok:
        actual = md5_bytes(data)
        if actual != MNIST_RAW_MD5[name]:
            what = "decompressed content" if path.suffix == ".gz" else "content"
            raise IganError(
                f"{path}: {what} has MD5 {actual}, not the official MNIST {name} "
                f"({MNIST_RAW_MD5[name]})",
                hint="the file is corrupt or not the official MNIST release; delete it and rerun "
                     "with --download")
    return data


def read_idx(data: bytes, magic: int, path: Path | str) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: check the magic number and the length, return the array.

    ``path`` is only used in error messages. The array is a read-only view of ``data``.
    """
    if len(data) < 4:
        raise IganError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">i", data[:4])
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise IganError(f"{path}: magic number {found}, expected {magic} (IDX {kind} of uint8)",
                        hint="the file is not an MNIST IDX file; check the file names")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IganError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise IganError(f"{path}: {len(data)} bytes, but its header {'x'.join(map(str, dims))} "
                        f"needs {expected}",
                        hint="the file is truncated or damaged; delete it and download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_split(folder: Path, images_name: str, labels_name: str,
                verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = _find(folder, images_name)
    labels_path = _find(folder, labels_name)
    assert images_path is not None and labels_path is not None  # checked by the caller
    images = read_idx(_read_content(images_path, images_name, verify), IMAGES_MAGIC, images_path)
    labels = read_idx(_read_content(labels_path, labels_name, verify), LABELS_MAGIC, labels_path)
    if images.shape[1:] != (28, 28):
        raise IganError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, MNIST's are 28x28")
    if images.shape[0] != labels.shape[0]:
        raise IganError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels",
                        hint="the two files come from different splits or releases")
    if labels.size and labels.max() > 9:
        raise IganError(f"{labels_path}: label {int(labels.max())} out of range 0..9")
    # Copies: frombuffer views are read-only, and torch wants writable memory.
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy())
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_mnist(data_dir: Path | None = None, download: bool = False, *, verify: bool = True,
               base_url: str = MNIST_URL) -> ImageDataset:
    """MNIST's 60,000 training and 10,000 test images from ``data_dir`` (default: the cache).

    ``download`` fetches the missing .gz files from ``base_url``. ``verify=False`` skips the
    checksums, for tests on small synthetic IDX files; the registry always verifies.
    """
    folder = resolve_data_dir(NAME, data_dir)
    missing = [name for name in MNIST_FILES if _find(folder, name) is None]
    if missing and download:
        download_files(base_url, {f"{n}.gz": MNIST_GZ_MD5[n] for n in missing}, folder)
        missing = [name for name in MNIST_FILES if _find(folder, name) is None]
    if missing:
        raise missing_files_error("MNIST", folder, [f"{n}[.gz]" for n in MNIST_FILES], HOMEPAGE)
    x_train, y_train = _read_split(folder, MNIST_FILES[0], MNIST_FILES[1], verify)
    x_test, y_test = _read_split(folder, MNIST_FILES[2], MNIST_FILES[3], verify)
    return ImageDataset(name=NAME, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                        num_classes=10, scale=1.0 / 255.0, shift=0.0, source=str(folder),
                        class_names=tuple(str(d) for d in range(10)))
