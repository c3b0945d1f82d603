"""Dataset loaders on tiny real-format files (IDX, CIFAR pickles, MATLAB v5), plus the real MNIST.

Every synthetic file is written in ``tmp_path`` in the exact on-disk format of the official
release, so the parsers, the error messages and the preprocessing constants are checked without
any download. The real MNIST beside the clone (``../shared/data/mnist``) is used when present.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from igan.datasets import cifar10, mnist
from igan.datasets.cifar10 import load_cifar10
from igan.datasets.files import default_data_dir
from igan.datasets.mnist import load_mnist
from igan.datasets.sampling import balanced_labeled_subset
from igan.datasets.svhn import load_svhn
from igan.errors import IganError, UsageError

REAL_MNIST = Path(__file__).parents[1].parent / "shared" / "data" / "mnist"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# MNIST: synthetic IDX files

def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> Path:
    """Write ``array`` (uint8) as an IDX file: big-endian magic, dims, then the raw bytes."""
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_mnist(folder: Path, gz: bool | tuple[bool, bool, bool, bool] = True, n_train: int = 6,
               n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    flags = gz if isinstance(gz, tuple) else (gz,) * 4
    for (name, array), flag in zip(arrays.items(), flags):
        write_idx(folder / name, array, 2051 if array.ndim == 3 else 2049, flag)
    return arrays


@pytest.mark.parametrize("gz", [True, False, (True, False, False, True)], ids=["gz", "raw", "mixed"])
def test_mnist_round_trip(tmp_path: Path, gz) -> None:
    arrays = make_mnist(tmp_path, gz)
    ds = load_mnist(tmp_path, False, verify=False)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.source == str(tmp_path)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (6, 1, 28, 28)
    assert ds.x_test.shape == (4, 1, 28, 28) and ds.y_train.dtype == torch.int64
    assert np.array_equal(ds.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # The reference preprocessing: pixels / 255, in [0, 1].
    x = ds.to_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
    assert torch.allclose(x, torch.tensor([0.0, 0.2, 1.0]))
    assert ds.value_range == (0.0, 1.0)


def test_mnist_wrong_magic(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path)
    # Labels written with the images' magic number.
    bad = write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["t10k-labels-idx1-ubyte"], 2051, True)
    with pytest.raises(IganError, match="magic number 2051, expected 2049") as e:
        load_mnist(tmp_path, False, verify=False)
    assert str(bad) in e.value.message and "\n" not in e.value.message


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(IganError, match="not a valid gzip file") as e:
        load_mnist(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_mnist_not_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(IganError, match="not a valid gzip") as e:
        load_mnist(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), 2049, True)
    with pytest.raises(IganError, match="6 images but .* 5 labels") as e:
        load_mnist(tmp_path, False, verify=False)
    assert "train-images-idx3-ubyte.gz" in e.value.message
    assert "train-labels-idx1-ubyte.gz" in e.value.message


@pytest.mark.parametrize("change", [b"", b"\x00"], ids=["short", "long"])
def test_mnist_wrong_length(tmp_path: Path, change: bytes) -> None:
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-1] if not change else data + change)
    with pytest.raises(IganError, match=r"bytes, but its header 4x28x28 needs 3152") as e:
        load_mnist(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_mnist_wrong_image_size(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 14, 14), np.uint8), 2051, True)
    with pytest.raises(IganError, match="14x14, MNIST's are 28x28"):
        load_mnist(tmp_path, False, verify=False)


def test_mnist_label_out_of_range(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 12, 3], np.uint8), 2049, True)
    with pytest.raises(IganError, match="label 12 out of range") as e:
        load_mnist(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_mnist_missing(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(IganError) as e:
        load_mnist(tmp_path, False)
    message, hint = e.value.message, e.value.hint
    assert str(tmp_path) in message
    for name in mnist.MNIST_FILES:
        assert name in message
    assert "--download" in hint and "ossci-datasets" in hint
    assert "\n" not in message and "\n" not in hint


def test_mnist_synthetic_fails_verification(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    with pytest.raises(IganError, match="not the official MNIST") as e:
        load_mnist(tmp_path, False)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in e.value.message


def test_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IGAN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir("mnist") == tmp_path / "cache" / "igan" / "datasets" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_data_dir("svhn") == Path.home() / ".cache" / "igan" / "datasets" / "svhn"
    monkeypatch.setenv("IGAN_DATA_DIR", str(tmp_path / "data"))
    assert default_data_dir("cifar10") == tmp_path / "data" / "cifar10"
    # data_dir=None reads the default folder.
    make_mnist(tmp_path / "data" / "mnist")
    assert load_mnist(None, False, verify=False).source == str(tmp_path / "data" / "mnist")


# MNIST: the real files beside the clone

needs_real_mnist = pytest.mark.skipif(not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                                      reason=f"real MNIST not found in {REAL_MNIST}")


@pytest.fixture(scope="module")
def real_mnist():
    return load_mnist(REAL_MNIST, False)  # verify=True: the re-compressed .gz pass by content MD5


@needs_real_mnist
def test_real_mnist(real_mnist) -> None:
    ds = real_mnist
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert torch.bincount(ds.y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert int(ds.x_train.min()) == 0 and int(ds.x_train.max()) == 255
    x = ds.to_float(ds.x_test[:100])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


@needs_real_mnist
def test_real_mnist_corrupted_copy(tmp_path: Path) -> None:
    for name in mnist.MNIST_FILES:
        if name != "train-labels-idx1-ubyte":
            shutil.copy(REAL_MNIST / f"{name}.gz", tmp_path)
    raw = bytearray(gzip.decompress((REAL_MNIST / "train-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid label: only the checksum can tell
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(bytes(raw))
    assert load_mnist(tmp_path, False, verify=False).y_train.shape == (60000,)
    with pytest.raises(IganError, match="not the official MNIST") as e:
        load_mnist(tmp_path, False)
    assert str(bad) in e.value.message


# CIFAR-10: synthetic pickles in the python-version format

class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 strings (BINSTRING), like the files cPickle wrote in 2009."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_string(self, obj) -> None:
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(data)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def dump_batch(obj, path: Path, style: str) -> None:
    if style == "py3":
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x (what the real files were written with) named the reconstructor in numpy.core.
    data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n",
                                     b"cnumpy.core.multiarray\n_reconstruct\n")
    path.write_bytes(data)


CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar(folder: Path, style: str = "py3", n: int = 3, seed: int = 0) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in cifar10.FILES[:-1]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": b"synthetic " + name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        dump_batch(batch, folder / name, style)
        batches[name] = (data, labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CLASS_NAMES], b"num_vis": 3072}
    dump_batch(meta, folder / "batches.meta", style)
    return batches


def make_cifar_tar(data_dir: Path, style: str = "py3") -> tuple[Path, dict[str, tuple]]:
    batches = make_cifar(data_dir / "build" / "cifar-10-batches-py", style)
    archive = data_dir / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data_dir / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    shutil.rmtree(data_dir / "build")
    return archive, batches


def check_cifar(ds, batches) -> None:
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == sum((labels for _, labels in train), [])
    assert ds.y_test.tolist() == batches["test_batch"][1]
    # CHW: channel c, row h, column w is byte c*1024 + h*32 + w of the 3072 row.
    data = batches["data_batch_2"][0]
    for c, h, w in [(0, 0, 0), (1, 2, 3), (2, 31, 30)]:
        assert int(ds.x_train[3, c, h, w]) == int(data[0, c * 1024 + h * 32 + w])
    assert np.array_equal(ds.x_test.numpy().reshape(3, -1), batches["test_batch"][0])
    assert ds.class_names == tuple(CLASS_NAMES)


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar_folder(tmp_path: Path, style: str) -> None:
    batches = make_cifar(tmp_path / "cifar-10-batches-py", style)
    ds = load_cifar10(tmp_path, False, verify=False)
    check_cifar(ds, batches)
    assert ds.source == str(tmp_path / "cifar-10-batches-py")
    # The reference preprocessing: (x - 127.5) / 128.
    x = ds.to_float(torch.tensor([0, 128, 255], dtype=torch.uint8))
    assert torch.allclose(x, (torch.tensor([0.0, 128.0, 255.0]) - 127.5) / 128)
    assert ds.value_range == pytest.approx((-127.5 / 128, 127.5 / 128))


def test_cifar_batches_directly_in_data_dir(tmp_path: Path) -> None:
    batches = make_cifar(tmp_path)
    check_cifar(load_cifar10(tmp_path, False, verify=False), batches)


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar_archive(tmp_path: Path, style: str) -> None:
    archive, batches = make_cifar_tar(tmp_path, style)
    ds = load_cifar10(tmp_path, False, verify=False)
    check_cifar(ds, batches)
    assert ds.source == str(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # nothing was extracted


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["folder", "archive"])
def test_cifar_malicious_pickle_refused(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "PWNED"
    make_cifar(tmp_path / "build" / "cifar-10-batches-py")
    evil = {b"data": Exploit(marker), b"labels": [0]}
    (tmp_path / "build" / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    if where == "folder":
        data_dir = tmp_path / "build"
    else:
        data_dir = tmp_path / "dl"
        data_dir.mkdir()
        with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(IganError, match=r"refusing to load .*data_batch_3: it references \w+\.system") as e:
        load_cifar10(data_dir, False, verify=False)
    assert "\n" not in e.value.message
    assert not marker.exists()


def test_cifar_refuses_other_globals(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    # GLOBAL builtins.eval, then call it: the classic pickle payload.
    payload = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(IganError, match="references builtins.eval"):
        load_cifar10(tmp_path, False, verify=False)


def test_cifar_damaged_files(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_4"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(IganError, match="not a readable CIFAR-10 pickle") as e:
        load_cifar10(tmp_path, False, verify=False)
    assert str(path) in e.value.message


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"expected uint8 \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"expected uint8 \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 out of range"),
    ({b"labels": [0]}, "not a CIFAR-10 batch"),
])
def test_cifar_bad_batch(tmp_path: Path, batch: dict, message: str) -> None:
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_5"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(IganError, match=message) as e:
        load_cifar10(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(IganError) as e:
        load_cifar10(tmp_path, False)
    assert str(tmp_path) in e.value.message
    assert "cifar-10-python.tar.gz" in e.value.message and "data_batch_1" in e.value.message
    assert "--download" in e.value.hint and "cs.toronto.edu" in e.value.hint


def test_cifar_archive_lacking_batches(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(IganError, match="lacks cifar-10-batches-py/data_batch_1") as e:
        load_cifar10(tmp_path, False, verify=False)
    assert str(archive) in e.value.message


def test_cifar_synthetic_fails_verification(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(IganError, match="does not match the official CIFAR-10") as e:
        load_cifar10(tmp_path, False)
    assert "data_batch_1" in e.value.message
    archive, _ = make_cifar_tar(tmp_path / "tar")
    with pytest.raises(IganError, match="does not match the official CIFAR-10") as e:
        load_cifar10(tmp_path / "tar", False)
    assert str(archive) in e.value.message


# SVHN: synthetic MATLAB v5 files

def make_svhn(folder: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict[str, tuple]:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # digit 0, as SVHN writes it
        savemat(folder / name, {"X": x, "y": y})
        out[name] = (x, y)
    return out


def test_svhn_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    files = make_svhn(tmp_path)
    ds = load_svhn(tmp_path, False, verify=False)
    assert ds.name == "svhn" and ds.num_classes == 10 and ds.source == str(tmp_path)
    assert ds.x_train.shape == (5, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    x, y = files["train_32x32.mat"]
    assert ds.y_train.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
    assert ds.y_train[0] == 0 and int(ds.y_train.max()) <= 9
    # X[h, w, c, n] is x_train[n, c, h, w].
    assert np.array_equal(ds.x_train.numpy(), x.transpose(3, 2, 0, 1))
    assert int(ds.x_train[4, 2, 7, 19]) == int(x[7, 19, 2, 4])
    # The reference preprocessing: (x - 127.5) / 127.5, onto [-1, 1].
    v = ds.to_float(torch.tensor([0, 255], dtype=torch.uint8))
    assert v.tolist() == [-1.0, 1.0] and ds.value_range == (-1.0, 1.0)


def test_svhn_label_out_of_range(tmp_path: Path) -> None:
    from scipy.io import savemat

    make_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[3], [11]], np.uint8)})
    with pytest.raises(IganError, match=r"labels must be 1..10") as e:
        load_svhn(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_svhn_wrong_shape_and_garbage(tmp_path: Path) -> None:
    from scipy.io import savemat

    make_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    savemat(path, {"X": np.zeros((3, 32, 32, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(IganError, match=r"expected uint8 \(32, 32, 3, N\)") as e:
        load_svhn(tmp_path, False, verify=False)
    assert str(path) in e.value.message
    path.write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    with pytest.raises(IganError, match="not a readable MATLAB file") as e:
        load_svhn(tmp_path, False, verify=False)
    assert str(path) in e.value.message


def test_svhn_missing_and_unverified(tmp_path: Path) -> None:
    with pytest.raises(IganError) as e:
        load_svhn(tmp_path, False)
    assert str(tmp_path) in e.value.message and "train_32x32.mat" in e.value.message
    assert "test_32x32.mat" in e.value.message and "--download" in e.value.hint
    make_svhn(tmp_path)
    with pytest.raises(IganError, match="does not match the official SVHN") as e:
        load_svhn(tmp_path, False)
    assert "train_32x32.mat" in e.value.message


def test_svhn_without_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"")
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import ...` fail
    with pytest.raises(IganError, match="needs scipy") as e:
        load_svhn(tmp_path, False)
    assert e.value.hint == 'pip install "igan[svhn]"'


# the labelled subset

def reference_labelled_split(trainx: np.ndarray, trainy: np.ndarray, seed_data: int, count: int):
    """The reference scripts' selection, restated line by line (paper-notes §2.2)."""
    rng_data = np.random.RandomState(seed_data)
    inds = rng_data.permutation(trainx.shape[0])
    trainx = trainx[inds]
    trainy = trainy[inds]
    txs, tys = [], []
    for j in range(10):
        txs.append(trainx[trainy == j][:count])
        tys.append(trainy[trainy == j][:count])
    return np.concatenate(txs, axis=0), np.concatenate(tys, axis=0)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(3).integers(0, 10, 2000))


def test_balanced_subset_is_balanced_and_reproducible(labels: torch.Tensor) -> None:
    idx = balanced_labeled_subset(labels, 10, seed=1)
    assert idx.dtype == torch.int64 and idx.shape == (100,) and len(set(idx.tolist())) == 100
    assert torch.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert torch.equal(idx, balanced_labeled_subset(labels, 10, seed=1))
    assert not torch.equal(idx, balanced_labeled_subset(labels, 10, seed=2))


@pytest.mark.parametrize("seed, count", [(1, 10), (7, 40), (0, 2)])
def test_balanced_subset_matches_reference(labels: torch.Tensor, seed: int, count: int) -> None:
    y = labels.numpy()
    # Each "image" is its own index, so the reference's chosen images are the chosen indices.
    ref_x, ref_y = reference_labelled_split(np.arange(y.shape[0]), y, seed, count)
    idx = balanced_labeled_subset(labels, count, seed)
    assert idx.tolist() == ref_x.tolist()
    assert labels[idx].tolist() == ref_y.tolist()


def test_balanced_subset_too_few(labels: torch.Tensor) -> None:
    smallest = int(torch.bincount(labels).min())
    assert balanced_labeled_subset(labels, smallest, 0).shape == (10 * smallest,)
    with pytest.raises(UsageError, match="fewer than"):
        balanced_labeled_subset(labels, smallest + 1, 0)
    with pytest.raises(UsageError, match="class 10 has 0"):
        balanced_labeled_subset(labels, 1, 0, num_classes=11)
    with pytest.raises(UsageError):
        balanced_labeled_subset(labels, 0, 0)


@needs_real_mnist
def test_balanced_subset_real_mnist(real_mnist) -> None:
    idx = balanced_labeled_subset(real_mnist.y_train, 10, seed=1)
    assert torch.bincount(real_mnist.y_train[idx], minlength=10).tolist() == [10] * 10


# Decompression bombs: a small compressed file that inflates far past what its format can hold is
# refused once the format's size is passed, without inflating the rest (memory stays small).

class _Zeros(io.RawIOBase):
    """``n`` zero bytes, produced as they are read (the bomb is never held in memory while written)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _gzip_bomb(path: Path, header: bytes, inflated: int) -> Path:
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        shutil.copyfileobj(_Zeros(inflated - len(header)), f, 1 << 20)
    return path


def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_mnist_gzip_bomb_stops_at_the_official_size(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    # test labels: an 8-byte header, then 12 MiB of what claims to be labels (the official file has 10,008
    # bytes); compressed, the bomb is about as small as the real file
    bomb = _gzip_bomb(tmp_path / "t10k-labels-idx1-ubyte.gz", struct.pack(">iI", 2049, 12 << 20), 12 << 20)
    assert bomb.stat().st_size < 14_000

    def load() -> None:
        with pytest.raises(IganError, match="inflates past the 10,008 bytes") as e:
            load_mnist(tmp_path, False, verify=False)
        assert str(bomb) in e.value.message

    assert _peak_bytes(load) < 4 << 20  # it did not inflate the 12 MiB


def test_mnist_oversized_raw_file_is_refused_before_reading(tmp_path: Path) -> None:
    make_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that take no disk space
    assert _peak_bytes(lambda: _expect_too_large(lambda: load_mnist(tmp_path, False, verify=False), path)) < 8 << 20


def _expect_too_large(fn, path: Path) -> None:
    with pytest.raises(IganError, match="bytes, more than .* can be") as e:
        fn()
    assert str(path) in e.value.message


def _tar_with(archive: Path, name: str, size: int) -> Path:
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, _Zeros(size))
    return archive


@pytest.mark.parametrize("member, size", [
    ("cifar-10-batches-py/data_batch_1", 40 << 20),  # a batch larger than a batch can be: refused from its header
    ("cifar-10-batches-py/readme.html", 200 << 20),  # an unread member: the stream stops at the archive's size
], ids=["batch", "skipped-member"])
def test_cifar_archive_bomb_stops_early(tmp_path: Path, member: str, size: int) -> None:
    archive = _tar_with(tmp_path / "cifar-10-python.tar.gz", member, size)
    assert archive.stat().st_size < 2 << 20

    def load() -> None:
        with pytest.raises(IganError, match="more than a CIFAR-10|inflates past the") as e:
            load_cifar10(tmp_path, False, verify=False)
        assert str(archive) in e.value.message

    assert _peak_bytes(load) < 8 << 20


def test_cifar_oversized_batch_file_is_refused_before_reading(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "r+b") as f:
        f.truncate(1 << 30)  # sparse
    _expect_too_large(lambda: load_cifar10(tmp_path, False, verify=False), path)


def test_svhn_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    make_svhn(tmp_path)
    path = tmp_path / "test_32x32.mat"
    with open(path, "r+b") as f:
        f.truncate(1 << 30)  # sparse
    _expect_too_large(lambda: load_svhn(tmp_path, False, verify=False), path)
