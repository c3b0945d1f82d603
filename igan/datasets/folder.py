"""``--dataset folder``: any folder of images as a dataset (PNG, JPEG, WebP, BMP, read with Pillow).

Layout (as torchvision's ImageFolder)::

    DIR/cat/0001.jpg, DIR/cat/more/0002.png, DIR/dog/...   labelled: one sub-folder per class
    DIR/0001.jpg, DIR/holiday/0002.png, ...                  unlabelled: any image directly in DIR
    DIR/test/...  (optional)                                 the held-out test split, same layout
    DIR/train/... (optional, only beside test/)              the training split

Folders are read recursively and symbolic links are followed; a folder reached a second time (a link
loop, or two links to one folder) is read once. Names starting with "." are skipped. A labelled tree's
classes are its first-level sub-folders in sorted order (label 0 = the first name). Without ``test/``, a
seeded fraction of each class (``--test-fraction``, default 0.1, numpy ``RandomState(0)``) is held out.

Each image is resized and centre-cropped to ``--image-size`` (32, 64 or 128) by ``igan.datasets.decode``
and kept as RGB, or as one grey channel when every image is grey (``--image-mode auto``, the default;
``rgb`` and ``grey`` force it). The pixels come from the decoded cache (``igan.datasets.image_cache``).
Pixels map to model inputs with x * 2/255 - 1, onto [-1, 1], as the paper's ImageNet code.

Unreadable files (truncated, damaged, not really images) are skipped with a warning that counts them
and names the first few, or refused with ``strict=True`` (``--strict``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from igan.datasets.base import ImageDataset
from igan.datasets.decode import IMAGE_EXTENSIONS
from igan.datasets.image_cache import FileStat, load_or_build
from igan.datasets.memory import format_bytes, require_memory
from igan.errors import IganError, UsageError

__all__ = ["SIZES", "DEFAULT_SIZE", "MODES", "DEFAULT_TEST_FRACTION", "SPLIT_SEED", "Tree", "scan_tree",
           "split_indices", "load_folder", "check_test_fraction"]

NAME = "folder"
SIZES = (32, 64, 128)
DEFAULT_SIZE = 64
MODES = ("auto", "rgb", "grey")
DEFAULT_TEST_FRACTION = 0.1
SPLIT_SEED = 0  # fixed: every run (and every --seeds run) of a folder holds out the same images
SHOWN = 3  # file names quoted in a message
_EXTENSIONS = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


@dataclass
class Tree:
    """What a recursive scan found below ``root``; paths are relative to it, with "/" separators."""

    root: Path
    files: list[FileStat] = field(default_factory=list)  # the candidate images, sorted by path
    others: list[str] = field(default_factory=list)  # files that are not images (by extension)
    revisited: list[str] = field(default_factory=list)  # folders reached again through links
    broken: dict[str, str] = field(default_factory=dict)  # images that cannot even be stat'ed


def _quote(names: list[str], reasons: dict[str, str] | None = None) -> str:
    shown = [f"{n} ({reasons[n]})" if reasons else n for n in names[:SHOWN]]
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(shown) + more


def scan_tree(root: Path, prefix: str = "", skip: tuple[str, ...] = ()) -> Tree:
    """Every image file below ``root`` (following links, each folder once); ``skip`` names top-level
    entries to leave out, ``prefix`` is prepended to every relative path."""
    tree = Tree(Path(root))
    seen: set[tuple[int, int]] = set()
    stack = [(str(root), prefix)]
    while stack:
        folder, rel = stack.pop()
        top = rel == prefix  # the root itself (``skip`` applies there only)
        try:
            st = os.stat(folder)
        except OSError as exc:
            tree.broken[rel.rstrip("/") or str(folder)] = exc.strerror or str(exc)
            continue
        if (st.st_dev, st.st_ino) in seen:
            tree.revisited.append(rel.rstrip("/"))
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if top:
                raise IganError(f"cannot read the folder {folder}: {exc.strerror or exc}",
                                hint="check its permissions") from None
            tree.broken[rel.rstrip("/")] = f"folder: {exc.strerror or exc}"
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(".") or (top and name in skip):
                continue
            path = f"{rel}{name}"
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                stack.append((entry.path, path + "/"))
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                tree.others.append(path)
                continue
            try:
                s = entry.stat()  # follows links: a dangling link fails here
                tree.files.append(FileStat(path, s.st_size, s.st_mtime_ns))
            except OSError as exc:
                tree.broken[path] = "broken symbolic link" if entry.is_symlink() else (exc.strerror or str(exc))
    tree.files.sort(key=lambda f: f.rel)
    tree.others.sort()
    return tree


def split_indices(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) index arrays, sorted: ``round(fraction * n_c)`` of each class c in the test split,
    chosen by ``numpy.random.RandomState(seed)``; a class of two or more images keeps at least one on
    each side when ``fraction > 0``, a class of one image stays in training."""
    rng = np.random.RandomState(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(idx.shape[0])]
        k = int(np.floor(fraction * idx.shape[0] + 0.5))
        if fraction > 0 and idx.shape[0] >= 2:
            k = min(max(k, 1), idx.shape[0] - 1)
        elif idx.shape[0] < 2:
            k = 0
        test.append(perm[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(labels.shape[0]), test_idx)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


def check_test_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {fraction}",
                         hint="e.g. --test-fraction 0.1 holds out 10% of each class; 0 holds out nothing")


def _resolve_root(data_dir: Path | str | None) -> Path:
    if data_dir is None:
        raise UsageError("--dataset folder needs --data-dir: the folder that holds the images",
                         hint="e.g. igan train --dataset folder --data-dir ~/pictures")
    root = Path(data_dir).expanduser()
    if not root.exists():
        hint = "check the path given to --data-dir"
        if root.is_symlink():
            hint = f"{root} is a symbolic link to a path that does not exist"
        raise IganError(f"{root} does not exist", hint=hint)
    if not root.is_dir():
        hint = "--data-dir takes the folder that holds the images"
        if root.suffix.lower() == ".npz":
            hint = "for arrays in an .npz file use --dataset npz"
        elif root.suffix.lower() in IMAGE_EXTENSIONS:
            hint += "; put this image in a folder (a GAN needs many images)"
        raise UsageError(f"{root} is a file, not a folder", hint=hint)
    return root


def _no_images_error(where: Path, tree: Tree) -> IganError:
    if tree.others:
        return IganError(f"no images in {where}: {len(tree.others)} files, none of them {_EXTENSIONS} "
                         f"(e.g. {_quote(tree.others)})",
                         hint="--dataset folder reads .png, .jpg, .jpeg, .webp and .bmp files, in sub-folders too")
    if tree.broken:
        return IganError(f"no readable images in {where}: {_quote(sorted(tree.broken), tree.broken)}",
                         hint="fix or remove the broken links")
    return IganError(f"{where} holds no images (it is empty)",
                     hint="point --data-dir at the folder of images (sub-folders are read too)")


def _classes(files: list[FileStat], prefix: str) -> list[str] | None:
    """The class names of a labelled tree (first-level folders), or None when images lie directly in it."""
    tops = set()
    for f in files:
        rest = f.rel[len(prefix):]
        if "/" not in rest:
            return None
        tops.add(rest.split("/", 1)[0])
    return sorted(tops)


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_folder(data_dir: Path | str | None, download: bool = False, *, image_size: int = DEFAULT_SIZE,
                mode: str = "auto", test_fraction: float = DEFAULT_TEST_FRACTION, strict: bool = False,
                cache_dir: Path | str | None = None, require_labels: bool = False, workers: int | None = None,
                progress: bool = True) -> ImageDataset:
    """The images below ``data_dir`` as an ``ImageDataset`` (see the module docstring).

    ``require_labels`` (``igan semisup``) refuses an unlabelled folder, a single class and a folder
    without a test split before anything is decoded.
    """
    from igan.console import info, warn

    del download  # nothing to fetch: the folder is the user's
    if image_size not in SIZES:
        raise UsageError(f"--image-size must be one of {', '.join(map(str, SIZES))}, got {image_size}",
                         hint="the model pairs exist for 32 (the paper's CIFAR pair), 64 and 128 (DCGAN-style)")
    if mode not in MODES:
        raise UsageError(f"--image-mode must be one of {', '.join(MODES)}, got {mode!r}", hint="e.g. --image-mode rgb")
    check_test_fraction(test_fraction)
    root = _resolve_root(data_dir)

    # ---- the two trees: training images, and test images from test/ when it exists
    has_test = (root / "test").is_dir()
    if has_test:
        train_prefix = "train/" if (root / "train").is_dir() else ""
        train_tree = (scan_tree(root / "train", "train/") if train_prefix
                      else scan_tree(root, "", skip=("test",)))
        test_tree = scan_tree(root / "test", "test/")
    else:
        train_prefix = ""
        train_tree, test_tree = scan_tree(root), Tree(root / "test")
    train_where = root / train_prefix if train_prefix else root
    if not train_tree.files:
        raise _no_images_error(train_where, train_tree)
    if has_test and not test_tree.files:
        raise IganError(f"{root / 'test'} holds no images",
                        hint="put the held-out images there, or remove it to hold out --test-fraction of the images")
    classes = _classes(train_tree.files, train_prefix)
    labelled = classes is not None
    if require_labels:
        if not labelled:
            loose = [f.rel for f in train_tree.files if "/" not in f.rel[len(train_prefix):]]
            raise UsageError(f"{train_where} has no class sub-folders, so its images have no labels (images directly "
                             f"in it: {_quote(loose)}); semisup needs one sub-folder per class",
                             hint="arrange the images as DIR/<class>/<image>, or use `igan train` for unlabelled images")
        if len(classes) < 2:
            raise UsageError(f"{train_where} has a single class ({classes[0]}); semisup needs two or more",
                             hint="add a sub-folder per class, or use `igan train`")
        if not has_test and test_fraction == 0:
            raise UsageError("semisup measures a test error, but --test-fraction 0 and no test/ folder leave no "
                             "test images", hint="hold out some images with --test-fraction, or add DIR/test/")
    test_classes = _classes(test_tree.files, "test/") if has_test else None
    if has_test and labelled:
        if test_classes is None:
            raise IganError(f"{root / 'test'} holds images directly, but the training images are in class folders",
                            hint="give test/ the same class sub-folders as the training images")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise IganError(f"{root / 'test'} has classes the training images lack: {_quote(unknown)}",
                            hint=f"the training classes are {_quote(classes)}; rename or remove the others")

    # ---- messages about what the scan skipped
    if train_tree.revisited or test_tree.revisited:
        again = train_tree.revisited + test_tree.revisited
        warn(f"{len(again)} folders below {root} are reached again through symbolic links (a loop, or two links to "
             f"one folder) and were read once: {_quote(again)}")
    files = train_tree.files + test_tree.files
    broken = {**train_tree.broken, **test_tree.broken}

    # ---- pixels, from the cache when it is valid
    def check_memory(nbytes: int) -> None:
        require_memory(nbytes, "cpu", f"the folder {root} ({len(files)} images at {image_size}x{image_size})",
                       hint="use a smaller --image-size, fewer images, or a machine with more memory")

    decoded = load_or_build(root, files, image_size, mode, Path(cache_dir) if cache_dir else None, workers,
                            progress, check_memory)
    bad = {**broken, **decoded.errors}
    if bad:
        names = sorted(bad)
        if strict:
            raise IganError(f"{len(bad)} of {len(files) + len(broken)} images below {root} cannot be read "
                            f"(--strict): {_quote(names, bad)}",
                            hint="fix or remove them, or drop --strict to skip them")
        if len(bad) == len(files) + len(broken):
            raise IganError(f"none of the {len(bad)} images below {root} can be read: {_quote(names, bad)}",
                            hint="check that they are PNG, JPEG, WebP or BMP files that an image viewer opens")
        warn(f"skipped {len(bad)} unreadable images of {len(files) + len(broken)} below {root}: {_quote(names, bad)}",
             hint="fix or remove them; --strict refuses such a folder instead")

    # ---- labels and the split (computed from the readable images, cheap, never cached)
    rows = np.asarray(decoded.rows)
    readable = np.flatnonzero(rows >= 0)
    rels = [files[i].rel for i in readable]
    is_test = np.array([r.startswith("test/") for r in rels], dtype=bool) if has_test else np.zeros(len(rels), bool)
    if labelled:
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[r[len("test/") if t else len(train_prefix):].split("/", 1)[0]]
                           for r, t in zip(rels, is_test)], dtype=np.int64)
    else:
        labels = np.zeros(len(rels), dtype=np.int64)
    pixels = torch.from_numpy(decoded.pixels)  # rows in the same order as ``readable``
    if has_test:
        train_idx, test_idx = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        split = "the test/ folder"
    else:
        train_idx, test_idx = split_indices(labels, test_fraction)
        split = f"{test_fraction:g} of each class (seed {SPLIT_SEED})" if labelled else \
            f"{test_fraction:g} of the images (seed {SPLIT_SEED})"
    if train_idx.size == 0:
        raise IganError(f"no readable training images below {train_where}", hint="add images, or fix the unreadable ones")
    if has_test and test_idx.size == 0:
        raise IganError(f"none of the images in {root / 'test'} can be read", hint="fix or remove them")
    everything = train_idx.size == pixels.shape[0]  # nothing held out: no copy
    x_train = pixels if everything else pixels[torch.from_numpy(train_idx)]
    x_test = pixels[torch.from_numpy(test_idx)] if test_idx.size else None
    y_train = torch.from_numpy(labels[train_idx])
    y_test = torch.from_numpy(labels[test_idx]) if test_idx.size else None

    c = int(pixels.shape[1])
    used = [[rels[i], files[readable[i]].size, files[readable[i]].mtime_ns, int(labels[i])] for i in range(len(rels))]
    fingerprint = _fingerprint({"files": used, "test": [int(i) for i in test_idx], "size": image_size, "channels": c,
                                "mode": mode})
    nbytes = pixels.numel()
    where = f"{decoded.path}" if decoded.path else "not cached"
    if decoded.status == "reused":
        info(f"image cache: {len(rels)} images of {c}x{image_size}x{image_size}, {format_bytes(nbytes)}, "
             f"unchanged since it was built ({where})")
    else:
        rate = decoded.decoded / decoded.seconds if decoded.seconds > 0 else float("nan")
        verb = {"built": "built", "updated": "updated", "uncached": "decoded"}[decoded.status]
        info(f"image cache {verb}: decoded {decoded.decoded} images in {decoded.seconds:.1f} s ({rate:.0f} images/s); "
             f"{len(rels)} images of {c}x{image_size}x{image_size}, {format_bytes(nbytes)} ({where})")
    info(f"folder {root}: {x_train.shape[0]} training and {0 if x_test is None else x_test.shape[0]} test images"
         + (f", {len(classes)} classes" if labelled else ", unlabelled") + f"; test split: {split}")
    return ImageDataset(
        name=NAME, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        num_classes=len(classes) if labelled else 1, scale=2.0 / 255.0, shift=-1.0, source=str(root),
        class_names=tuple(classes) if labelled else (),
        info={"root": str(root.resolve()), "layout": "classes" if labelled else "flat",
              "classes": list(classes) if labelled else [], "image_size": image_size, "channels": c, "mode": mode,
              "test_split": split, "test_fraction": None if has_test else test_fraction, "split_seed": SPLIT_SEED,
              "train_images": int(x_train.shape[0]), "test_images": int(test_idx.size), "skipped": len(bad),
              "cache": str(decoded.path) if decoded.path else None, "fingerprint": fingerprint})
