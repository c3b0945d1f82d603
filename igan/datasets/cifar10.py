"""CIFAR-10 ("python version") from ``cifar-10-python.tar.gz`` or its extracted folder.

The reference code maps pixels with ``(x - 127.5) / 128`` (paper-notes §2.1), so the dataset
carries ``scale=1/128, shift=-127.5/128``. Each 3072-byte row is 1024 red, then 1024 green, then
1024 blue values, row-major per channel, so a plain reshape to (N, 3, 32, 32) gives NCHW.

The batches are pickles, and unpickling runs whatever the file names. They are therefore read with
``_BatchUnpickler``, which resolves only the few numpy globals a genuine batch references and
refuses everything else before it can run. The archive is read in memory (no extraction).
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from igan.datasets.base import ImageDataset
# Imported under another name: the loaders' ``download`` flag would shadow it.
from igan.datasets.files import capped_tar, check_md5, check_size, missing_files_error, resolve_data_dir
from igan.datasets.files import download as fetch
from igan.errors import IganError

__all__ = ["CIFAR10_URL", "CIFAR10_ARCHIVE", "CIFAR10_FOLDER", "CIFAR10_MD5", "load_batch",
           "load_cifar10"]

NAME = "cifar10"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
# MD5s of the files inside the archive (the same values torchvision checks).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
FILES = (*TRAIN_BATCHES, TEST_BATCH, META)
# Bounds on what is read (a small .tar.gz can inflate to gigabytes). A batch pickles 10,000 x 3072 pixels
# (30.72 MB) with its labels and file names (31.0 MB on disk); the archive's tar stream is 186 MB.
MAX_BATCH_BYTES = 32 << 20
MAX_META_BYTES = 64 << 10
MAX_TAR_BYTES = 192 << 20


def _numpy_reconstruct() -> Any:
    # numpy 2 moved the function to numpy._core; importing numpy.core there emits a warning.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch needs; any other global raises ``IganError``.

    The real files are Python 2 pickles of numpy 1.x arrays (``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``); numpy 2 writes ``numpy._core.multiarray._reconstruct``; and
    Python 3 protocol-2 copies spell bytes keys as ``_codecs.encode(str, "latin1")``, which only
    builds a bytes object. Names are mapped to objects directly, nothing is imported by name.
    """

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str keys come back as bytes: b"data"
        self._path = path
        reconstruct = _numpy_reconstruct()
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise IganError(f"refusing to load {self._path}: it references {module}.{name}, which a "
                            f"CIFAR-10 batch never does",
                            hint="the file is not a genuine CIFAR-10 batch and may be malicious; "
                                 "delete it") from None


def _unpickle(data: bytes, path: str) -> Any:
    try:
        return _BatchUnpickler(io.BytesIO(data), path).load()
    except IganError:
        raise
    except Exception as e:  # a damaged pickle raises almost anything: UnpicklingError, EOF, Value...
        raise IganError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})",
                        hint="the file is truncated or damaged; delete it and download it again") from None


def load_batch(data: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    """One data batch's pickled bytes -> (uint8 [N, 3, 32, 32], int64 [N]); ``path`` names errors."""
    batch = _unpickle(data, path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise IganError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    x, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", type(x).__name__)
        raise IganError(f"{path}: data is {getattr(x, 'dtype', '')} {shape}, expected uint8 (N, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise IganError(f"{path}: labels are not a list of integers") from None
    if y.shape != (x.shape[0],):
        raise IganError(f"{path}: {x.shape[0]} images but labels of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise IganError(f"{path}: label {int(y.min() if y.min() < 0 else y.max())} out of range 0..9")
    # Row layout is [R(1024) G(1024) B(1024)], each 32x32 row-major: exactly C, H, W.
    return x.reshape(-1, 3, 32, 32), y


def _class_names(data: bytes, path: str) -> tuple[str, ...]:
    meta = _unpickle(data, path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, bytes) for n in names):
        raise IganError(f"{path}: not a CIFAR-10 batches.meta (expected 10 label_names)")
    return tuple(n.decode("ascii", "replace") for n in names)


def _max_size(name: str) -> int:
    return MAX_META_BYTES if name == META else MAX_BATCH_BYTES


def _read_folder(folder: Path, verify: bool) -> dict[str, bytes]:
    contents = {}
    for name in FILES:
        path = folder / name
        try:
            check_size(path, _max_size(name), f"a CIFAR-10 {name}")
            if verify:
                check_md5(path, CIFAR10_MD5[name], "CIFAR-10", CIFAR10_URL)
            contents[name] = path.read_bytes()
        except OSError as e:
            raise IganError(f"cannot read {path}: {e.strerror}") from None
    return contents


def _read_archive(archive: Path, verify: bool) -> dict[str, bytes]:
    """The batch files of the archive, read in memory: nothing is written to disk. The archive is read as
    a stream of at most MAX_TAR_BYTES decompressed bytes, and a batch larger than a batch can be is
    refused from its header, before its bytes are read."""
    if verify:
        check_md5(archive, ARCHIVE_MD5, "CIFAR-10", CIFAR10_URL)
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in FILES}
    contents: dict[str, bytes] = {}
    try:
        check_size(archive, MAX_TAR_BYTES, "the CIFAR-10 archive")
        with capped_tar(archive, MAX_TAR_BYTES, "the CIFAR-10 archive") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue  # readme.html, directories; links are never followed
                if member.size > _max_size(name):
                    raise IganError(f"{archive}: {member.name} is {member.size:,} bytes, more than a CIFAR-10 "
                                    f"{name} can be ({_max_size(name):,})",
                                    hint="this is not the CIFAR-10 python archive; delete it and download it again")
                handle = tar.extractfile(member)
                if handle is not None:  # always, for a regular file
                    contents[name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise IganError(f"cannot read {archive}: {type(e).__name__}: {e}",
                        hint="the archive is truncated or damaged; delete it and download it again"
                        ) from None
    missing = [f"{CIFAR10_FOLDER}/{n}" for n in FILES if n not in contents]
    if missing:
        raise IganError(f"{archive} lacks {', '.join(missing)}",
                        hint="this is not the CIFAR-10 python archive; delete it and download it again")
    return contents


def _locate(folder: Path) -> Path | None:
    """The extracted batches (``cifar-10-batches-py/`` or ``folder`` itself), else the archive."""
    for candidate in (folder / CIFAR10_FOLDER, folder):
        if all((candidate / name).is_file() for name in FILES):
            return candidate
    archive = folder / CIFAR10_ARCHIVE
    return archive if archive.is_file() else None


def load_cifar10(data_dir: Path | None = None, download: bool = False, *, verify: bool = True,
                 url: str = CIFAR10_URL) -> ImageDataset:
    """CIFAR-10's 50,000 training and 10,000 test images from ``data_dir`` (default: the cache).

    ``download`` fetches ``cifar-10-python.tar.gz`` from ``url`` into ``data_dir`` when neither it
    nor the extracted folder is there. ``verify=False`` skips the checksums (tests on synthetic
    batches); the registry always verifies.
    """
    folder = resolve_data_dir(NAME, data_dir)
    found = _locate(folder)
    if found is None and download:
        found = fetch(url, folder / CIFAR10_ARCHIVE, ARCHIVE_MD5)
    if found is None:
        raise missing_files_error(
            "CIFAR-10", folder, [CIFAR10_ARCHIVE, f"or {CIFAR10_FOLDER}/ with {', '.join(FILES)}"],
            HOMEPAGE)
    if found.is_dir():
        contents = _read_folder(found, verify)
        where = {name: str(found / name) for name in FILES}
    else:
        contents = _read_archive(found, verify)
        where = {name: f"{found}:{CIFAR10_FOLDER}/{name}" for name in FILES}  # file inside archive

    train = [load_batch(contents[name], where[name]) for name in TRAIN_BATCHES]
    x_test, y_test = load_batch(contents[TEST_BATCH], where[TEST_BATCH])
    class_names = _class_names(contents[META], where[META])
    return ImageDataset(
        name=NAME,
        x_train=torch.from_numpy(np.concatenate([x for x, _ in train])),
        y_train=torch.from_numpy(np.concatenate([y for _, y in train])),
        x_test=torch.from_numpy(x_test.copy()),
        y_test=torch.from_numpy(y_test),
        num_classes=10, scale=1.0 / 128.0, shift=-127.5 / 128.0, source=str(found),
        class_names=class_names)

