"""``--dataset npz``: images shipped as numpy arrays in an ``.npz`` file.

``--data-dir`` is either the ``.npz`` file, or a folder holding ``train.npz`` and optionally
``test.npz``. Each file holds

* ``x``: uint8 pixels, [N, H, W, C] (NHWC, numpy's and PIL's order) or [N, C, H, W] (NCHW), C = 1 or 3,
  or [N, H, W] for grey images;
* ``y`` (optional): integer labels >= 0, shape [N]; without it the images are unlabelled;
* in a single file, optionally ``x_test`` / ``y_test``: the test split.

Without a test split, a seeded fraction of each class is held out (``--test-fraction``, as
``--dataset folder``). The layout is read from the shape: the axis of size 1 or 3 is the channel axis;
an array where both axis 1 and the last axis could be (e.g. [N, 3, 8, 3]) is refused as ambiguous.
Files are read with ``allow_pickle=False``: an object array (which unpickling would execute) is refused.
Pixels map to model inputs with x * 2/255 - 1, onto [-1, 1], and the arrays are used at their own size.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from igan.datasets.base import ImageDataset
from igan.datasets.folder import DEFAULT_TEST_FRACTION, SPLIT_SEED, check_test_fraction, split_indices
from igan.errors import IganError, UsageError

__all__ = ["load_npz", "images_from_array", "labels_from_array"]

NAME = "npz"
TRAIN_FILE, TEST_FILE = "train.npz", "test.npz"


def _read(path: Path) -> dict[str, np.ndarray]:
    bad_file = IganError(f"{path} is not a readable .npz file",
                         hint="the file is truncated or not an .npz; save it with np.savez(path, x=images, y=labels)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # pickled or damaged data, a truncated zip
        raise bad_file from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise IganError(f"{path} is a single .npy array, not an .npz archive",
                        hint="save the arrays with np.savez(path, x=images, y=labels)")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise IganError(f"{path} holds an object array, which igan does not unpickle",
                            hint="save plain numeric arrays: np.savez(path, x=images.astype(np.uint8), y=labels)"
                            ) from None
        raise bad_file from None
    except (OSError, EOFError, zipfile.BadZipFile):
        raise bad_file from None


def images_from_array(x: np.ndarray, where: str) -> np.ndarray:
    """``x`` in any accepted layout -> uint8 [N, C, H, W] (contiguous); ``where`` names errors."""
    if x.dtype != np.uint8:
        hint = "convert it: (x * 255).round().astype(np.uint8) for floats in [0, 1]" if x.dtype.kind == "f" else \
            "store pixels as uint8 0..255"
        raise IganError(f"{where} is {x.dtype}; igan needs uint8 pixels 0..255", hint=hint)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        last, second = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
        if last and second:
            raise IganError(f"{where} has shape {list(x.shape)}: both axis 1 and the last axis could be the channels",
                            hint="store it as NHWC with H, W > 3")
        if last:
            x = x.transpose(0, 3, 1, 2)
        elif not second:
            raise IganError(f"{where} has shape {list(x.shape)}: no axis of 1 or 3 channels",
                            hint="use [N, H, W, C] or [N, C, H, W] with C = 1 (grey) or 3 (RGB); drop an alpha channel")
    else:
        raise IganError(f"{where} has shape {list(x.shape)}; expected [N, H, W, C], [N, C, H, W] or [N, H, W]",
                        hint="one image per row of the first axis")
    if x.shape[0] == 0:
        raise IganError(f"{where} holds no images (its first axis is 0)", hint="save at least one image")
    if min(x.shape[2:]) < 4:
        raise IganError(f"{where} images are {x.shape[2]}x{x.shape[3]}, too small to train on",
                        hint="store images of at least 4x4 pixels")
    return np.ascontiguousarray(x)


def labels_from_array(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """``y`` -> int64 [n], refusing other lengths, non-integers and negative labels."""
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or y.shape[0] != n:
        raise IganError(f"{where} has shape {list(y.shape)}, but there are {n} images",
                        hint="one integer label per image")
    if y.dtype.kind not in "iub":
        raise IganError(f"{where} is {y.dtype}; labels must be integers 0..K-1", hint="store them as int64")
    if n and y.min() < 0:
        raise IganError(f"{where} holds the negative label {int(y.min())}; labels must be 0..K-1",
                        hint="number the classes from 0")
    return y.astype(np.int64)


def _arrays(root: Path) -> tuple[dict[str, np.ndarray], list[str], Path, str]:
    """The arrays (x, y, x_test, y_test as present), the names in the main file, the main file and a
    description of the files read, from a file or a folder."""
    if root.is_dir():
        train = root / TRAIN_FILE
        if not train.is_file():
            found = sorted(p.name for p in root.glob("*.npz"))
            raise IganError(f"no {TRAIN_FILE} in {root}" + (f" (found {', '.join(found[:3])})" if found else ""),
                            hint=f"pass the .npz file itself to --data-dir, or name it {TRAIN_FILE} "
                                 f"(and the test split {TEST_FILE})")
        data = _read(train)
        arrays = {k: v for k, v in data.items() if k in ("x", "y")}
        test = root / TEST_FILE
        if test.is_file():
            t = _read(test)
            if "x" not in t:
                raise IganError(f"{test} has no array x (found: {', '.join(sorted(t)) or 'none'})",
                                hint="save it with np.savez(path, x=images, y=labels)")
            arrays.update({"x_test": t["x"], **({"y_test": t["y"]} if "y" in t else {})})
        return arrays, sorted(data), train, f"{train}" + (f" + {test.name}" if test.is_file() else "")
    data = _read(root)
    return data, sorted(data), root, str(root)


def load_npz(data_dir: Path | str | None, download: bool = False, *,
             test_fraction: float = DEFAULT_TEST_FRACTION, require_labels: bool = False) -> ImageDataset:
    """The arrays of an .npz file (or a folder with train.npz and test.npz) as an ``ImageDataset``."""
    del download
    check_test_fraction(test_fraction)
    if data_dir is None:
        raise UsageError("--dataset npz needs --data-dir: the .npz file (or a folder with train.npz)",
                         hint="e.g. igan train --dataset npz --data-dir images.npz")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise IganError(f"{root} does not exist", hint="check the path given to --data-dir")
    arrays, keys, main, source = _arrays(root)
    if "x" not in arrays:
        raise IganError(f"{main} has no array x (found: {', '.join(keys) or 'none'})",
                        hint="save the images as x: np.savez(path, x=images, y=labels)")
    x = images_from_array(arrays["x"], f"{main}: x")
    y = labels_from_array(arrays["y"], x.shape[0], f"{main}: y") if "y" in arrays else None
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = images_from_array(arrays["x_test"], f"{source}: test images")
        if x_test.shape[1:] != x.shape[1:]:
            raise IganError(f"{source}: test images are {list(x_test.shape[1:])} (C, H, W) but training images are "
                            f"{list(x.shape[1:])}", hint="store both splits at the same size and channels")
        if (y is None) != ("y_test" not in arrays):
            raise IganError(f"{source}: labels are given for one split only",
                            hint="store y for both splits (labelled) or for neither (unlabelled)")
        if y is not None:
            y_test = labels_from_array(arrays["y_test"], x_test.shape[0], f"{source}: test labels")
    elif "y_test" in arrays:
        raise IganError(f"{main} has y_test but no x_test", hint="store the test images as x_test")
    labelled = y is not None
    if require_labels and not labelled:
        raise UsageError(f"{main} has no labels (array y); semisup needs labelled images",
                         hint="save the labels too: np.savez(path, x=images, y=labels), or use `igan train`")
    split = "the file's test arrays"
    if x_test is None:
        labels = y if labelled else np.zeros(x.shape[0], np.int64)
        train_idx, test_idx = split_indices(labels, test_fraction)
        if test_idx.size:
            x_test, y_test = x[test_idx], labels[test_idx]
        x, y = x[train_idx], labels[train_idx]
        split = f"{test_fraction:g} of each class (seed {SPLIT_SEED})"
    elif not labelled:
        y, y_test = np.zeros(x.shape[0], np.int64), np.zeros(x_test.shape[0], np.int64)
    if x.shape[0] == 0:
        raise IganError(f"{main}: no training images are left after holding out the test split",
                        hint="lower --test-fraction")
    num_classes = int(max(y.max(initial=0), y_test.max(initial=0) if y_test is not None else 0)) + 1 if labelled else 1
    if require_labels and num_classes < 2:
        raise UsageError(f"{main}: every label is 0; semisup needs two or more classes", hint="check the array y")
    if require_labels and x_test is None:
        raise UsageError("semisup measures a test error, but --test-fraction 0 and no test arrays leave no test images",
                         hint="hold out some images with --test-fraction, or store x_test/y_test")
    digest = hashlib.sha256()
    for arr in (x, y, x_test, y_test):
        digest.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
    from igan.console import info

    n_test = 0 if x_test is None else x_test.shape[0]
    info(f"npz {source}: {x.shape[0]} training and {n_test} test images of {x.shape[1]}x{x.shape[2]}x{x.shape[3]}"
         + (f", {num_classes} classes" if labelled else ", unlabelled") + f"; test split: {split}")
    return ImageDataset(
        name=NAME, x_train=torch.from_numpy(np.ascontiguousarray(x)), y_train=torch.from_numpy(y),
        x_test=None if x_test is None else torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=None if y_test is None else torch.from_numpy(y_test), num_classes=num_classes,
        scale=2.0 / 255.0, shift=-1.0, source=source,
        class_names=tuple(str(k) for k in range(num_classes)) if labelled else (),
        info={"root": str(root.resolve()), "layout": "labelled" if labelled else "unlabelled", "test_split": split,
              "test_fraction": test_fraction if "the file" not in split else None, "split_seed": SPLIT_SEED,
              "train_images": int(x.shape[0]), "test_images": int(n_test), "fingerprint": digest.hexdigest()[:16]})
