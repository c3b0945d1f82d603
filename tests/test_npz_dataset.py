"""``--dataset npz``: layouts (NHWC, NCHW, NHW), labels optional, the test split (in the file, test.npz, or
held out), every validation error, and ``igan train`` / ``igan semisup`` end to end."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import assert_clean_error
from igan.datasets.npz import load_npz
from igan.errors import IganError, UsageError

SMALL = ["--batch-size", "4", "--device", "cpu", "--log-every", "1"]


def _images(n=10, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_nhwc_nchw_and_nhw_give_the_same_images(tmp_path):
    x = _images(n=6, h=8, w=10)
    np.savez(tmp_path / "nhwc.npz", x=x)
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2))
    a = load_npz(tmp_path / "nhwc.npz", test_fraction=0)
    b = load_npz(tmp_path / "nchw.npz", test_fraction=0)
    assert a.image_shape == (3, 8, 10) and np.array_equal(a.x_train.numpy(), b.x_train.numpy())
    assert np.array_equal(a.x_train.numpy(), x.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "grey.npz", x=x[..., 0])
    g = load_npz(tmp_path / "grey.npz", test_fraction=0)
    assert g.image_shape == (1, 8, 10) and np.array_equal(g.x_train.numpy()[:, 0], x[..., 0])
    assert a.num_classes == 1 and a.x_test is None  # unlabelled, nothing held out
    assert a.to_float(a.x_train).min() >= -1 and a.value_range == (-1.0, 1.0)


def test_labels_and_a_held_out_fraction(tmp_path):
    x, y = _images(n=20), np.repeat([0, 1, 2, 3], 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_npz(tmp_path / "d.npz", test_fraction=0.2)
    assert ds.num_classes == 4 and ds.x_test.shape[0] == 4 and sorted(ds.y_test.tolist()) == [0, 1, 2, 3]
    # each image keeps its own label
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for img, label in zip(xs.numpy(), ys.tolist()):
            i = next(i for i in range(20) if np.array_equal(x[i].transpose(2, 0, 1), img))
            assert y[i] == label


def test_test_split_from_the_file_or_test_npz(tmp_path):
    x, y = _images(n=8), np.arange(8) % 2
    np.savez(tmp_path / "one.npz", x=x, y=y, x_test=x[:3], y_test=y[:3])
    ds = load_npz(tmp_path / "one.npz")
    assert ds.x_train.shape[0] == 8 and ds.y_test.tolist() == [0, 1, 0]
    folder = tmp_path / "split"
    folder.mkdir()
    np.savez(folder / "train.npz", x=x, y=y)
    np.savez(folder / "test.npz", x=x[:2].transpose(0, 3, 1, 2), y=y[:2])
    ds = load_npz(folder)
    assert ds.x_train.shape[0] == 8 and ds.x_test.shape[0] == 2 and ds.info["test_split"] == "the file's test arrays"


def _write_bad(tmp_path, case):
    p = tmp_path / f"{case}.npz"
    x = _images(n=4)
    if case == "float":
        np.savez(p, x=x.astype(np.float32) / 255)
    elif case == "ambiguous":
        np.savez(p, x=np.zeros((4, 3, 8, 3), np.uint8))
    elif case == "rgba":
        np.savez(p, x=np.zeros((4, 8, 8, 4), np.uint8))
    elif case == "rank":
        np.savez(p, x=np.zeros((4, 64), np.uint8))
    elif case == "empty":
        np.savez(p, x=np.zeros((0, 8, 8, 3), np.uint8))
    elif case == "y-length":
        np.savez(p, x=x, y=np.zeros(3, np.int64))
    elif case == "y-float":
        np.savez(p, x=x, y=np.zeros(4, np.float32))
    elif case == "y-negative":
        np.savez(p, x=x, y=np.array([0, 1, -1, 0]))
    elif case == "no-x":
        np.savez(p, images=x, labels=np.zeros(4))
    elif case == "object":
        np.savez(p, x=np.array([x[0], "a"], dtype=object))
    elif case == "not-a-zip":
        p.write_text("hello")
    elif case == "truncated":
        np.savez(p, x=_images(n=50))
        p.write_bytes(p.read_bytes()[:500])
    elif case == "npy":
        p = tmp_path / "x.npy"
        np.save(p, x)
    elif case == "y-test-only":
        np.savez(p, x=x, y_test=np.zeros(2, np.int64))
    elif case == "one-split-labelled":
        np.savez(p, x=x, y=np.zeros(4, np.int64), x_test=x[:2])
    elif case == "test-shape":
        np.savez(p, x=x, x_test=_images(n=2, h=16, w=16))
    elif case == "folder-without-train":
        p = tmp_path / "dir"
        p.mkdir()
        np.savez(p / "images.npz", x=x)
    elif case == "missing":
        p = tmp_path / "nope.npz"
    return p


@pytest.mark.parametrize("case, match", [
    ("float", r"x is float32; igan needs uint8 pixels"),
    ("ambiguous", r"both axis 1 and the last axis could be the channels"),
    ("rgba", r"no axis of 1 or 3 channels"),
    ("rank", r"has shape \[4, 64\]; expected"),
    ("empty", r"holds no images"),
    ("y-length", r"y has shape \[3\], but there are 4 images"),
    ("y-float", r"y is float32; labels must be integers"),
    ("y-negative", r"negative label -1"),
    ("no-x", r"has no array x \(found: images, labels\)"),
    ("object", r"holds an object array"),
    ("not-a-zip", r"is not a readable .npz file"),
    ("truncated", r"is not a readable .npz file"),
    ("npy", r"is a single .npy array, not an .npz archive"),
    ("y-test-only", r"has y_test but no x_test"),
    ("one-split-labelled", r"labels are given for one split only"),
    ("test-shape", r"test images are \[3, 16, 16\]"),
    ("folder-without-train", r"no train.npz in .* \(found images.npz\)"),
    ("missing", r"does not exist"),
])
def test_bad_npz_files_get_one_line_errors(tmp_path, case, match):
    with pytest.raises(IganError, match=match) as info:
        load_npz(_write_bad(tmp_path, case))
    assert info.value.hint


def test_semisup_needs_labels(tmp_path):
    np.savez(tmp_path / "u.npz", x=_images())
    with pytest.raises(UsageError, match="has no labels"):
        load_npz(tmp_path / "u.npz", require_labels=True)


def test_zip_members_are_never_extracted(tmp_path):
    """An .npz is a zip: a member named like a path must not be written anywhere (np.load reads in memory)."""
    p = tmp_path / "evil.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("../../x.npy", b"garbage")
    with pytest.raises(IganError, match="has no array x|not a readable"):
        load_npz(p)
    assert not (tmp_path.parent.parent / "x.npy").exists()


@pytest.mark.parametrize("shape, model", [((32, 32, 3), "cifar_conv"), ((28, 28), "mnist_mlp"),
                                          ((64, 64, 1), "dcgan64_conv")])
def test_train_on_npz_picks_the_model_from_the_shape(run_cli, tmp_path, single_thread, shape, model):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (12, *shape), dtype=np.uint8))
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--dataset", "npz", "--data-dir", path, "--steps", "1", *SMALL, "--out", out])
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == model and cfg["dataset_info"]["train_images"] == 11


def test_semisup_on_npz(run_cli, tmp_path, single_thread):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), y=np.arange(24) % 3)
    code, out, err = run_cli(["semisup", "--dataset", "npz", "--data-dir", path, "--labels", "6", "--steps", "1",
                              *SMALL, "--out", tmp_path / "s", "--json"])
    assert code == 0, err
    assert json.loads(out)["test_size"] == 3


def test_npz_cli_errors(run_cli, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=_images(n=6))
    code, out, err = run_cli(["semisup", "--dataset", "npz", "--data-dir", path, "--steps", "1", *SMALL,
                              "--out", tmp_path / "s"])
    assert_clean_error(code, out, err, 2, "has no labels")
    code, out, err = run_cli(["train", "--dataset", "npz", "--data-dir", path, "--image-size", "64", "--steps", "1",
                              *SMALL, "--out", tmp_path / "t"])
    assert_clean_error(code, out, err, 2, "--image-size applies to --dataset folder")
