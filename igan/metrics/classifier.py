"""An offline classifier score for the digit datasets (``digits``, ``mnist``): no download, no Inception.

The Inception network is an ImageNet classifier; on 8x8 or 28x28 grey digits its scores say little.
For those datasets igan trains its own small classifier on the real training set, once, and caches it:

* the network is an MLP on the flattened uint8 pixels scaled to [0, 1] (``x / 255``), with ReLU hidden
  layers: 64 -> 256 -> 128 -> 10 for the 8x8 digits, 784 -> 512 -> 256 -> 10 for MNIST;
* it is trained with Adam (lr 1e-3, cross-entropy) for a fixed number of epochs from a fixed seed, on
  the training images *as igan's samples are stored*: uint8 in [0, 255] (the embedded digits, stored as
  0..16, are mapped to 0..255 exactly as ``ImageDataset.to_uint8`` maps a generator's output);
* the weights are cached, as safetensors only, at
  ``<user cache>/igan/classifiers/<dataset>-<key>.safetensors`` where ``<user cache>`` is
  ``$XDG_CACHE_HOME`` or ``~/.cache`` and ``<key>`` is the first 16 hex digits of the SHA-256 of the
  training images and labels (so a changed dataset never reuses a stale classifier); its test accuracy
  is stored in the file's metadata.

The score of a set of uint8 images (:func:`classifier_score_metric`) is

* ``mean``/``std``: the Inception-Score formula with the classifier's softmax,
  ``inception_score(logits, splits)`` (consecutive splits, ddof=0 std), between 1 and the class count;
* ``fd``: the Fréchet distance between the penultimate-layer features of the images and those of the
  real *test* images (lower is better);
* ``reference``: the same two numbers for real data, the score of the real test images (shuffled with
  ``RandomState(2020)``, the IS protocol for real data) and the Fréchet distance between the real test
  and the real training images. A model is as good as real data when its numbers reach these.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from igan.errors import IganError, UsageError
from igan.metrics.scores import feature_statistics, frechet_distance, inception_score

__all__ = ["ClassifierRecipe", "RECIPES", "PixelMLP", "Classifier", "user_cache_dir", "dataset_uint8",
           "data_key", "classifier_path", "train_classifier", "load_classifier", "classifier_outputs",
           "classifier_score", "classifier_score_metric", "REAL_SHUFFLE_SEED"]

RECIPE_VERSION = 1  # bump when the recipe changes: cached files of another version are retrained
REAL_SHUFFLE_SEED = 2020  # real data is shuffled before splitting, as torch-fidelity does


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the classifier of one dataset is built and trained."""

    hidden: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float = 1e-3
    seed: int = 0


RECIPES: dict[str, ClassifierRecipe] = {
    # 1500 training images: 20 short epochs (600 steps, about a second on a CPU); about 92% test
    # accuracy on igan's fixed split (its last 297 images; 1-nearest-neighbour gets 94.6% there).
    "digits": ClassifierRecipe(hidden=(256, 128), epochs=20, batch_size=50),
    # 60,000 training images: 5 epochs (3000 steps) reach 97.8% test accuracy (CPU, one thread).
    "mnist": ClassifierRecipe(hidden=(512, 256), epochs=5, batch_size=100),
}


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/igan`` or ``~/.cache/igan``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "igan"


class PixelMLP(nn.Module):
    """uint8 [N, C, H, W] -> logits [N, classes]; ``features`` is the last hidden layer (after ReLU)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        layers: list[nn.Module] = []
        width = math.prod(self.image_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def _inputs(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"the classifier takes uint8 images of shape {list(self.image_shape)}, got "
                             f"{images.dtype} {list(images.shape[1:])}")
        return images.flatten(1).to(torch.float32) / 255.0

    def features(self, images: Tensor) -> Tensor:
        return self.body(self._inputs(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


@dataclass
class Classifier:
    """A trained classifier and where it came from."""

    model: PixelMLP
    path: Path
    test_accuracy: float
    trained: bool  # True when it was trained by this call (not read from the cache)
    dataset: str

    def info(self) -> dict[str, Any]:
        return {"path": str(self.path), "test_accuracy": self.test_accuracy, "trained": self.trained}


def dataset_uint8(ds, x: Tensor) -> Tensor:
    """Real images of ``ds`` as igan's samples are stored: uint8 in [0, 255] (digits' 0..16 scaled)."""
    if ds.max_value == 255:
        return x
    return ds.to_uint8(ds.to_float(x))


def data_key(x: Tensor, y: Tensor) -> str:
    """First 16 hex digits of the SHA-256 of uint8 images and int64 labels (with their shapes)."""
    h = hashlib.sha256()
    h.update(repr((tuple(x.shape), tuple(y.shape))).encode())
    h.update(x.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def classifier_path(dataset: str, x: Tensor, y: Tensor) -> Path:
    return user_cache_dir() / "classifiers" / f"{dataset}-{data_key(x, y)}.safetensors"


@torch.no_grad()
def _accuracy(model: PixelMLP, x: Tensor, y: Tensor, device: torch.device, batch_size: int = 2000) -> float:
    right = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i:i + batch_size].to(device))
        right += int((logits.argmax(1).cpu() == y[i:i + batch_size].cpu()).sum())
    return right / max(x.shape[0], 1)


def train_classifier(x_train: Tensor, y_train: Tensor, x_test: Tensor | None, y_test: Tensor | None,
                     num_classes: int, recipe: ClassifierRecipe, device: torch.device | str = "cpu"
                     ) -> tuple[PixelMLP, float | None]:
    """Train the MLP on uint8 [0, 255] images; returns it (eval mode) and its test accuracy."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # the same initial weights wherever it runs
        torch.manual_seed(recipe.seed)
        model = PixelMLP(tuple(x_train.shape[1:]), recipe.hidden, num_classes)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    order = torch.Generator().manual_seed(recipe.seed)
    x, y = x_train.to(device), y_train.to(device)
    n = x.shape[0]
    with torch.autocast(device_type=device.type, enabled=False), _one_cpu_thread(device):
        for _ in range(recipe.epochs):
            perm = torch.randperm(n, generator=order).to(device)
            for i in range(0, n, recipe.batch_size):
                idx = perm[i:i + recipe.batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval().requires_grad_(False)
        accuracy = _accuracy(model, x_test, y_test, device) if x_test is not None else None
    return model, accuracy


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Train on one CPU thread. The MLP's ops are small (a 100 x 784 x 512 matmul at most), so extra
    threads gain little, and on a busy machine they mostly wait for each other: measured on 2 shared
    cores, a MNIST step took 15 ms with one thread and 255 ms with two. The setting is restored after."""
    threads = torch.get_num_threads()
    switch = device.type == "cpu" and threads > 1
    if switch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if switch:
            torch.set_num_threads(threads)


def _save(model: PixelMLP, path: Path, metadata: dict[str, str]) -> None:
    from igan.checkpoint import write_safetensors
    from igan.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    # atomic: a concurrent reader sees the old file or the new one; mode as open() gives it; a full disk
    # is an OSError (safetensors raises its own error type)
    atomic_write(path, lambda tmp: write_safetensors(state, tmp, metadata))


def _load(path: Path, image_shape: tuple[int, int, int], num_classes: int, recipe: ClassifierRecipe,
          device: torch.device) -> tuple[PixelMLP, float | None] | None:
    """The cached classifier, or None when the file is of another recipe or unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("recipe_version") != str(RECIPE_VERSION) or meta.get("recipe") != repr(asdict(recipe)):
            return None
        state = load_file(str(path), device="cpu")
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: draw them off the record
            model = PixelMLP(image_shape, recipe.hidden, num_classes)
        model.load_state_dict(state, strict=True)
    except Exception:  # noqa: BLE001 - a damaged cache file is retrained, never fatal
        return None
    accuracy = meta.get("test_accuracy", "")
    return model.to(device).eval().requires_grad_(False), (float(accuracy) if accuracy else None)


def load_classifier(ds, device: torch.device | str = "cpu", *, retrain: bool = False) -> Classifier:
    """The classifier of dataset ``ds`` (an ``ImageDataset``): from the cache, else trained and cached."""
    from igan.console import info, warn

    device = torch.device(device)
    recipe = RECIPES.get(ds.name)
    if recipe is None:
        raise IganError(f"there is no offline classifier for dataset {ds.name!r} (only for "
                        f"{', '.join(sorted(RECIPES))})",
                        hint="use --metric is (or fid) for other datasets; they use the Inception network")
    x_train = dataset_uint8(ds, ds.x_train.cpu())
    y_train = ds.y_train.cpu()
    path = classifier_path(ds.name, x_train, y_train)
    if path.is_file() and not retrain:
        loaded = _load(path, ds.image_shape, ds.num_classes, recipe, device)
        if loaded is not None:
            return Classifier(loaded[0], path, loaded[1], False, ds.name)
        warn(f"the cached classifier {path} is unreadable or of another version; retraining it")
    x_test = dataset_uint8(ds, ds.x_test.cpu()) if ds.x_test is not None else None
    y_test = ds.y_test.cpu() if ds.y_test is not None else None
    info(f"training the {ds.name} classifier ({' -> '.join(map(str, (math.prod(ds.image_shape),) + recipe.hidden))}"
         f" -> {ds.num_classes}, {recipe.epochs} epochs) on {x_train.shape[0]} images ...")
    model, accuracy = train_classifier(x_train, y_train, x_test, y_test, ds.num_classes, recipe, device)
    meta = {"dataset": ds.name, "recipe_version": str(RECIPE_VERSION), "recipe": repr(asdict(recipe)),
            "image_shape": repr(list(ds.image_shape)), "num_classes": str(ds.num_classes),
            "test_accuracy": "" if accuracy is None else repr(accuracy)}
    try:
        _save(model, path, meta)
    except OSError as exc:
        warn(f"could not cache the classifier at {path}: {exc.strerror or exc}",
             hint="set XDG_CACHE_HOME to a writable folder; it is retrained on every call until then")
    shown = "n/a (no test split)" if accuracy is None else f"{100 * accuracy:.2f}%"
    info(f"{ds.name} classifier: test accuracy {shown}; cached at {path}")
    return Classifier(model, path, accuracy, True, ds.name)


@torch.no_grad()
def classifier_outputs(model: PixelMLP, images: Tensor, batch_size: int = 5000,
                       device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``(features, logits)`` of uint8 images, in batches on ``device``; float64 on the CPU."""
    target = torch.device(device) if device is not None else model.head.weight.device
    feats: list[Tensor] = []
    logits: list[Tensor] = []
    with torch.autocast(device_type=target.type, enabled=False):
        for i in range(0, images.shape[0], batch_size):
            f = model.features(images[i:i + batch_size].to(target))
            feats.append(f.to("cpu", torch.float64))
            logits.append(model.head(f).to("cpu", torch.float64))
    width = model.head.in_features
    if not feats:
        return torch.empty(0, width, dtype=torch.float64), torch.empty(0, model.head.out_features,
                                                                        dtype=torch.float64)
    return torch.cat(feats), torch.cat(logits)


def _fd(a: Tensor, b: Tensor) -> float | None:
    if a.shape[0] < 2 or b.shape[0] < 2:
        return None  # a covariance needs two samples
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


# The real data's side of the score (features of up to 70,000 real images) is the same at every call
# with the same classifier file and images: ``--eval-every`` scores a run many times, so it is kept.
_REFERENCES: dict[tuple, tuple[Any, Tensor, Tensor]] = {}
_MAX_REFERENCES = 4


def _reference(clf: Classifier, real_train: Tensor, real_test: Tensor, splits: int,
               device: torch.device | str | None) -> tuple[dict[str, Any], Tensor, Tensor]:
    """The real-data reference and the real test features' (mean, covariance), computed once per
    classifier file (path, size and time: a retrained one is new) and real images (their hashes)."""
    stat = clf.path.stat() if clf.path.is_file() else None
    key = (str(clf.path), stat.st_size if stat else None, stat.st_mtime_ns if stat else id(clf.model),
           data_key(real_train, torch.zeros(0)), data_key(real_test, torch.zeros(0)), splits, str(device))
    if key not in _REFERENCES:
        test_feats, test_logits = classifier_outputs(clf.model, real_test, device=device)
        train_feats, _ = classifier_outputs(clf.model, real_train, device=device)
        reference: dict[str, Any] = {"mean": None, "std": None, "fd": _fd(test_feats, train_feats),
                                     "n": int(real_test.shape[0]), "n_train": int(real_train.shape[0])}
        if real_test.shape[0] >= splits:
            reference["mean"], reference["std"] = inception_score(test_logits, splits,
                                                                  shuffle_seed=REAL_SHUFFLE_SEED)
        mu, sigma = feature_statistics(test_feats) if test_feats.shape[0] >= 2 else (None, None)
        if len(_REFERENCES) >= _MAX_REFERENCES:
            _REFERENCES.pop(next(iter(_REFERENCES)))
        _REFERENCES[key] = (reference, mu, sigma)
    reference, mu, sigma = _REFERENCES[key]
    return dict(reference), mu, sigma


def classifier_score(clf: Classifier, images: Tensor, real_train: Tensor, real_test: Tensor, splits: int,
                     device: torch.device | str | None = None) -> dict[str, Any]:
    """Score uint8 ``images`` with ``clf``, and real test data as the reference (see the module doc)."""
    if images.shape[0] < splits:
        raise UsageError(f"{images.shape[0]} images cannot fill {splits} splits",
                         hint="use --n at least --splits, or fewer --splits")
    if tuple(images.shape[1:]) != clf.model.image_shape:
        raise IganError(f"the {clf.dataset} classifier scores images of shape {list(clf.model.image_shape)} "
                        f"(C, H, W), got {list(images.shape[1:])}",
                        hint=f"score {clf.dataset} samples, or pass the --dataset these images belong to")
    feats, logits = classifier_outputs(clf.model, images, device=device)
    reference, mu_test, sigma_test = _reference(clf, real_train, real_test, splits, device)
    mean, std = inception_score(logits, splits)
    fd = (frechet_distance(*feature_statistics(feats), mu_test, sigma_test)
          if feats.shape[0] >= 2 and mu_test is not None else None)
    return {"mean": mean, "std": std, "fd": fd, "reference": reference, "classifier": clf.info()}


def classifier_score_metric(images: Tensor, context: dict[str, Any]) -> dict[str, Any]:
    """The ``classifier-score`` metric of ``igan evaluate`` (see the module doc for what it returns)."""
    from igan.datasets import load_dataset

    name = context.get("dataset")
    if not name:
        raise UsageError("the classifier score needs to know which dataset the images imitate",
                         hint="pass --dataset digits or --dataset mnist")
    if name not in RECIPES:
        raise IganError(f"there is no offline classifier for dataset {name!r} (only for "
                        f"{', '.join(sorted(RECIPES))})",
                        hint="use --metric is (or fid) for other datasets; they use the Inception network")
    ds = context.get("dataset_obj")  # the loaded dataset, when the caller has it (training)
    if ds is None or ds.name != name:
        ds, _ = load_dataset(context["pm"], name, context.get("data_dir"), bool(context.get("download")))
    if ds.x_test is None:
        raise IganError(f"dataset {name!r} has no test split, which the classifier score's reference needs",
                        hint="use a dataset with a test split")
    if tuple(images.shape[1:]) != ds.image_shape:  # before any training
        raise IganError(f"the {name} classifier scores images of shape {list(ds.image_shape)} (C, H, W), got "
                        f"{list(images.shape[1:])}",
                        hint=f"score {name} samples, or pass the --dataset these images belong to")
    device = context.get("device") or torch.device("cpu")
    clf = load_classifier(ds, device, retrain=bool(context.get("retrain")))
    return classifier_score(clf, images, dataset_uint8(ds, ds.x_train.cpu()), dataset_uint8(ds, ds.x_test.cpu()),
                            int(context.get("splits", 10)), device)
