"""What ``igan evaluate`` computes: score a checkpoint's samples, an .npz of images or a folder of PNGs.

Metrics come from a registry that plugins extend (``igan_register_metrics(register)`` with
``register(name, fn, help)``); the built-in ones are registered by ``igan.defaults``:

* ``is``: the Inception Score (Inception-v3 of the TF graph, ``logits_unbiased``), paper protocol
  (50,000 samples, 10 splits);
* ``fid``: FID against the real training images of the dataset; the real statistics are cached;
* ``classifier-score``: the offline digit-classifier score (``igan.metrics.classifier``), with the
  real-data reference values;

and ``error`` is handled here: the test error of a semi-supervised checkpoint's discriminator (its
moving average, as during training). A metric function is ``fn(images_uint8 [N, C, H, W], context) ->
dict`` with at least ``mean`` (and ``std`` where defined); ``context`` is described in
:func:`make_context`. See docs/metrics.md ("igan evaluate").
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from igan.errors import IganError, UsageError

__all__ = ["Metric", "metric_registry", "read_npz", "read_png_folder", "load_images", "run_evaluate",
           "default_metric", "score_images", "checkpoint_test_error", "inception_score_metric", "fid_metric",
           "DEFAULT_N", "ERROR_METRIC"]

ERROR_METRIC = "error"
DEFAULT_N = {"is": 50_000, "fid": 50_000, "classifier-score": 10_000}
PLUGIN_DEFAULT_N = 50_000
USES_SPLITS = {"is", "classifier-score"}  # built-ins whose result depends on --splits


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., dict]
    help: str = ""
    plugin: str = ""


def metric_registry(pm) -> dict[str, Metric]:
    """Every metric the plugins register, by name (``error`` is reserved for the command itself)."""
    metrics: dict[str, Metric] = {}
    for impl in pm.hook.igan_register_metrics.get_hookimpls():

        def register(name: str, fn: Callable[..., dict], help: str = "", _plugin: str = impl.plugin_name) -> None:
            if not isinstance(name, str) or not name or not callable(fn):
                raise IganError(f"plugin {_plugin!r} registered an invalid metric ({name!r}, {fn!r})",
                                hint="call register(name, fn, help) with a string name and a function")
            if name == ERROR_METRIC:
                raise IganError(f"plugin {_plugin!r} registers a metric named {name!r}, which igan reserves",
                                hint="choose another name for the metric")
            if name in metrics:
                raise IganError(f"metric {name!r} is registered twice (by {metrics[name].plugin!r} and "
                                f"{_plugin!r})", hint="two plugins provide the same metric name; disable one")
            metrics[name] = Metric(name, fn, help, _plugin)

        impl.function(register=register)
    return metrics


# --------------------------------------------------------------------------------------------------
# Inputs


def _check_nchw(images: torch.Tensor, source: str) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise IganError(f"{source}: expected images of shape [N, H, W, C] with C 1 or 3, got "
                        f"{list(images.permute(0, 2, 3, 1).shape) if images.dim() == 4 else list(images.shape)}",
                        hint="store uint8 images as an NHWC array (grey images with C = 1)")
    return images


def read_npz(path: Path) -> torch.Tensor:
    """uint8 NCHW images from the ``images`` array (uint8 NHWC, C 1 or 3) of an .npz file."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise IganError(f"{path} has no array named 'images' (it holds: "
                                f"{', '.join(data.files) or 'nothing'})",
                                hint="save the images with np.savez(path, images=uint8 NHWC array), as "
                                     "`igan sample -o x.npz` does")
            arr = data["images"]
    except IganError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/pickle/format errors of a damaged file
        raise IganError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})",
                        hint="write it with numpy.savez or `igan sample -o x.npz`") from exc
    if arr.dtype != np.uint8:
        raise IganError(f"{path}: 'images' has dtype {arr.dtype}, expected uint8",
                        hint="convert to uint8 pixels in [0, 255] first, e.g. "
                             "(x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]")
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise IganError(f"{path}: 'images' has shape {list(arr.shape)}, expected [N, H, W, C] with C 1 or 3",
                        hint="store NHWC (channels last); grey images as [N, H, W, 1]")
    if arr.shape[0] == 0:
        raise IganError(f"{path}: 'images' holds no images", hint="write at least one image")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def read_png_folder(path: Path, limit: int | None = None) -> torch.Tensor:
    """uint8 NCHW images from the PNG files of a folder, in name order (grey PNGs give 1 channel)."""
    import numpy as np
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise IganError(f"{path} holds no .png files", hint="write samples with `igan sample CKPT -n N -o DIR/`")
    if limit is not None:
        files = files[:limit]
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                grey = img.mode in ("1", "L", "LA", "I", "I;16", "F") or (
                    img.mode == "P" and "transparency" not in img.info and _palette_is_grey(img))
                arr = np.asarray(img.convert("L" if grey else "RGB"))
        except Exception as exc:  # noqa: BLE001 - Pillow raises several types for a bad file
            raise IganError(f"{f} is not a readable PNG ({type(exc).__name__}: {exc})",
                            hint="remove or replace the file") from exc
        arr = arr[..., None] if arr.ndim == 2 else arr
        if arrays and arr.shape != arrays[0].shape:
            raise IganError(f"{f} has shape {list(arr.shape)} (H, W, C), but {files[0].name} has "
                            f"{list(arrays[0].shape)}", hint="all images of a folder must have one size and "
                                                              "channel count")
        arrays.append(arr)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _palette_is_grey(img) -> bool:
    pal = img.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


@dataclass
class Loaded:
    images: torch.Tensor  # uint8 [N, C, H, W] on the CPU
    kind: str  # "checkpoint", "npz" or "folder"
    restored: Any = None  # igan.restore.Restored for a checkpoint


def input_kind(path: Path) -> str:
    if path.is_dir():  # a run directory stands for its last checkpoint
        return "checkpoint" if (path / "checkpoints" / "last.safetensors").is_file() else "folder"
    if not path.exists():
        raise IganError(f"input not found: {path}",
                        hint="pass a checkpoint (.safetensors), an .npz with uint8 NHWC `images`, or a folder "
                             "of PNGs")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "checkpoint"
    if suffix == ".npz":
        return "npz"
    raise UsageError(f"cannot evaluate {path}: not a .safetensors checkpoint, an .npz or a folder",
                     hint="pass a checkpoint written by igan, an .npz with uint8 NHWC `images`, or a folder of "
                          "PNGs (`igan sample` writes the last two)")


def load_images(path: Path, kind: str, n: int | None, restored=None, seed: int = 0) -> torch.Tensor:
    """The images to score: ``n`` samples of a checkpoint, or (the first ``n`` of) a file's images."""
    from igan.console import info

    if kind == "checkpoint":
        assert n is not None
        info(f"generating {n} samples from {path} (seed {seed}) ...")
        return torch.cat(list(restored.generate(n, seed)))
    images = read_npz(path) if kind == "npz" else read_png_folder(path, limit=n)
    if n is not None:
        if images.shape[0] < n:
            raise UsageError(f"--n {n} asks for more images than {path} holds ({images.shape[0]})",
                             hint="lower --n, or leave it out to score every image")
        images = images[:n]
    return images


# --------------------------------------------------------------------------------------------------
# Built-in metrics (registered in igan.defaults)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _inception_batch(device: torch.device) -> int:
    return 200 if device.type == "cuda" else 50


def _inception_pool_logits(model, images: torch.Tensor, device: torch.device, what: str):
    from igan.metrics import inception_outputs

    from igan.console import TaskBar

    with TaskBar(f"inception ({what})") as progress:
        return inception_outputs(model, images, batch_size=_inception_batch(device), device=device,
                                 progress=progress)


def _load_inception(context: dict[str, Any]):
    from igan.metrics import load_inception

    return load_inception(context.get("inception_weights"), download=bool(context.get("download")),
                          device=context["device"])


def inception_score_metric(images: torch.Tensor, context: dict[str, Any]) -> dict[str, Any]:
    """``is``: Inception Score of uint8 images (grey repeated to RGB), ``inception_score(logits, splits)``."""
    from igan.metrics import inception_score

    splits = int(context.get("splits", 10))
    model = _load_inception(context)
    _, logits = _inception_pool_logits(model, _rgb(images), context["device"], "samples")
    mean, std = inception_score(logits, splits)
    return {"mean": mean, "std": std}


def _fid_cache_path(dataset: str, split: str, n: int, weights: Path) -> Path:
    from igan.metrics.classifier import user_cache_dir

    w = weights.resolve()
    key = hashlib.sha256(f"{w}:{w.stat().st_size}".encode()).hexdigest()[:16]
    name = f"{dataset}-{n}-{key}.npz" if split == "train" else f"{dataset}-{split}-{n}-{key}.npz"
    return user_cache_dir() / "fid-stats" / name


def _real_statistics(ds, split: str, n: int, weights: Path, model, device: torch.device):
    """Mean and covariance of the pool features of ``n`` real images of a split, cached per weights file."""
    import numpy as np

    from igan.console import warn
    from igan.metrics import feature_statistics
    from igan.metrics.classifier import dataset_uint8

    # a user's folder or .npz is named by its content, so two folders never share statistics
    fingerprint = ds.info.get("fingerprint")
    path = _fid_cache_path(f"{ds.name}-{fingerprint}" if fingerprint else ds.name, split, n, weights)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return torch.from_numpy(data["mu"]), torch.from_numpy(data["sigma"]), path
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            warn(f"the cached FID statistics {path} are unreadable; recomputing them")
    x = ds.x_train if split == "train" else ds.x_test
    # A fixed random subset: stored datasets may be sorted by class.
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    pool, _ = _inception_pool_logits(model, _rgb(dataset_uint8(ds, x.cpu()[idx])), device, f"real {split}")
    mu, sigma = feature_statistics(pool)
    try:
        from igan.fileio import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, mu=mu.numpy(), sigma=sigma.numpy()), suffix=".npz")
    except OSError as exc:
        warn(f"could not cache the FID statistics at {path}: {exc.strerror or exc}",
             hint="set XDG_CACHE_HOME to a writable folder")
    return mu, sigma, path


def fid_metric(images: torch.Tensor, context: dict[str, Any]) -> dict[str, Any]:
    """``fid``: FID of uint8 images against (up to N) real training images; reference: real test vs train."""
    from igan.datasets import load_dataset
    from igan.metrics import feature_statistics, frechet_distance
    from igan.metrics.inception import _resolve_weights

    name = context.get("dataset")
    if not name:
        raise UsageError("FID compares with the real images of a dataset, and none is known for this input",
                         hint="pass --dataset (e.g. --dataset cifar10 --data-dir DIR)")
    if images.shape[0] < 2:
        raise UsageError("FID needs at least 2 images (a covariance)", hint="use --n 2 or more")
    device = context["device"]
    weights = _resolve_weights(context.get("inception_weights"), bool(context.get("download")))
    model = _load_inception({**context, "inception_weights": weights})
    ds = context.get("dataset_obj")  # the loaded dataset, when the caller has it (training)
    if ds is None or ds.name != name:
        ds, _ = load_dataset(context["pm"], name, context.get("data_dir"), bool(context.get("download")),
                             context.get("config"))
    pool, _ = _inception_pool_logits(model, _rgb(images), device, "samples")
    n_real = min(images.shape[0], ds.x_train.shape[0])
    mu_r, sigma_r, cache = _real_statistics(ds, "train", n_real, weights, model, device)
    fid = frechet_distance(*feature_statistics(pool), mu_r, sigma_r)
    reference: dict[str, Any] = {"mean": None, "n": 0}
    if ds.x_test is not None and ds.x_test.shape[0] >= 2:
        n_test = min(images.shape[0], ds.x_test.shape[0])
        mu_t, sigma_t, _ = _real_statistics(ds, "test", n_test, weights, model, device)
        reference = {"mean": frechet_distance(mu_t, sigma_t, mu_r, sigma_r), "n": n_test}
    return {"mean": fid, "std": None, "n_real": n_real, "reference": reference, "stats_cache": str(cache)}


# --------------------------------------------------------------------------------------------------
# The semi-supervised test error


def checkpoint_test_error(restored, data_dir: str | None = None, download: bool = False, n: int | None = None,
                          pm=None) -> dict[str, Any]:
    """Test error of a semi-supervised checkpoint, with the EMA of D when the checkpoint holds it."""
    from igan.datasets import load_dataset
    from igan.restore import evaluation_discriminator
    from igan.techniques.semisup import test_errors

    config = restored.config
    d, used_ema = evaluation_discriminator(restored)
    pm = pm or _plugin_manager()
    ds, _ = load_dataset(pm, config.dataset, data_dir or config.data_dir, download, config)
    if ds.x_test is None:
        raise IganError(f"dataset {config.dataset!r} has no test split", hint="use a dataset with a test split")
    x, y = ds.x_test, ds.y_test
    if n is not None:
        x, y = x[:n], y[:n]
    wrong = test_errors(d, x.to(restored.device), y.to(restored.device), ds.to_float)
    total = int(x.shape[0])
    return {"mean": wrong / total, "std": None, "test_error": wrong / total, "test_errors": wrong, "n": total,
            "ema": used_ema, "dataset": config.dataset}


# --------------------------------------------------------------------------------------------------
# Evaluating an input (the command itself is igan.cli.evaluate)


def _plugin_manager():
    import igan.plugins

    return igan.plugins.get_plugin_manager()


def make_context(**values: Any) -> dict[str, Any]:
    """What a metric function receives besides the images.

    ``splits`` (int), ``n`` (number of images), ``device`` (torch.device), ``dataset`` (name or None),
    ``data_dir`` (str or None), ``download`` (bool), ``inception_weights`` (path or None), ``retrain``
    (bool), ``seed`` (int), ``pm`` (the plugin manager), ``input`` (the path scored), ``input_kind``
    ("checkpoint", "npz", "folder"), ``config`` (the checkpoint's RunConfig or None); during training
    (``--eval-every``) ``input_kind`` is "training", ``config`` the run's and ``dataset_obj`` the run's
    loaded ``ImageDataset`` (so a metric need not load it again).
    """
    return dict(values)


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


def default_metric(restored=None, dataset: str | None = None) -> str:
    """The metric ``igan evaluate`` uses without ``--metric``: the one that works for the input offline.

    ``error`` for a checkpoint of ``igan semisup`` (the number its experiment is about), the offline
    ``classifier-score`` for the digit datasets (digits, mnist: no Inception weights, which say little
    about 8x8 or 28x28 digits anyway), else the Inception Score ``is``."""
    from igan.metrics.classifier import RECIPES

    if restored is not None and restored.config.command == "semisup":
        return ERROR_METRIC
    if dataset in RECIPES:
        return "classifier-score"
    return "is"


def _check_metric(metric: str, registry: dict[str, Metric], n: int | None, splits: int) -> bool:
    """Refuse an unknown metric or an ``n`` too small for the splits; returns whether it uses splits."""
    if metric != ERROR_METRIC and metric not in registry:
        raise UsageError(f"unknown metric {metric!r}",
                         hint=f"choose one of: {', '.join(sorted([*registry, ERROR_METRIC]))}")
    uses_splits = metric in USES_SPLITS or (metric in registry and metric not in DEFAULT_N)
    if n is not None and uses_splits and n < splits:
        raise UsageError(f"--n {n} is smaller than --splits {splits}: every split needs a sample",
                         hint=f"use --n {splits} or more (the paper uses 50,000 samples in 10 splits)")
    return uses_splits


def score_images(metric: Metric, images: torch.Tensor, context: dict[str, Any]) -> tuple[float, float | None,
                                                                                           dict[str, Any]]:
    """``(mean, std, the rest)`` of ``metric`` on uint8 images, with the metric's answer checked."""
    device = context.get("device") or torch.device("cpu")
    with torch.autocast(device_type=device.type, enabled=False):
        out = metric.fn(images, context)
    if not isinstance(out, dict) or "mean" not in out:
        raise IganError(f"metric {metric.name!r} returned {type(out).__name__}, not a dict with 'mean'",
                        hint=f"fix the metric function of plugin {metric.plugin!r}")
    out = dict(out)
    try:
        mean, std = float(out.pop("mean")), _float_or_none(out.pop("std", None))
    except (TypeError, ValueError) as exc:
        raise IganError(f"metric {metric.name!r} returned a mean or std that is not a number ({exc})",
                        hint=f"fix the metric function of plugin {metric.plugin!r}") from exc
    return mean, std, out


def needs_inception(metric: Metric) -> bool:
    """Whether ``metric`` is a built-in one that runs the Inception network (is, fid)."""
    return metric.plugin == "core" and metric.name in ("is", "fid")


def run_evaluate(input: Path, metric: str | None = None, n: int | None = None, splits: int = 10,
                 dataset: str | None = None, data_dir: Path | str | None = None,
                 inception_weights: Path | str | None = None, download: bool = False, retrain: bool = False,
                 device: str = "auto", seed: int = 0, pm=None) -> dict[str, Any]:
    """Evaluate ``input`` with ``metric`` (None: ``default_metric``); returns the JSON-ready result
    (see docs/metrics.md)."""
    from igan.console import info
    from igan.train import resolve_device

    input = Path(input)
    pm = pm or _plugin_manager()
    from igan.ensemble import ensemble_test_error, is_seeds_folder

    if metric == ERROR_METRIC and is_seeds_folder(input):  # the K runs of `igan semisup --seeds K`
        result = ensemble_test_error(input, str(data_dir) if data_dir else None, download, n, device, pm)
        return {"metric": metric, "input": str(input), "input_kind": "seeds", "mean": result["test_error"],
                "std": None, "splits": None, **result}
    registry = metric_registry(pm)
    if splits < 1:
        raise UsageError(f"--splits must be at least 1, got {splits}", hint="the paper's protocol uses 10")
    if metric is not None:  # a mistake in --metric or --n costs nothing: checked before any loading
        _check_metric(metric, registry, n, splits)
    kind = input_kind(input)
    dev = resolve_device(device)
    restored = None
    if kind == "checkpoint":
        from igan.restore import restore_models

        restored = restore_models(input, device, pm)
        dataset = dataset or restored.config.dataset
        data_dir = data_dir or restored.config.data_dir
    if metric is None:
        metric = default_metric(restored, dataset)
        what = f"{restored.config.command} checkpoints of {dataset}" if restored is not None else (
            f"{dataset} images" if dataset else "images of an unknown dataset")
        info(f"metric: {metric} (the default for {what}; choose another with --metric)")
    uses_splits = _check_metric(metric, registry, n, splits)

    base: dict[str, Any] = {"metric": metric, "input": str(input), "input_kind": kind}
    if metric == ERROR_METRIC:
        if restored is None:
            what = {"npz": "an .npz of images", "folder": "a folder of images"}[kind]
            raise UsageError(f"--metric error needs a checkpoint of `igan semisup`, not {what}",
                             hint="pass checkpoints/last.safetensors of a semi-supervised run")
        result = checkpoint_test_error(restored, str(data_dir) if data_dir else None, download, n, pm)
        return {**base, "mean": result.pop("mean"), "std": None, "n": result.pop("n"), "splits": None, **result}

    if needs_inception(registry[metric]):  # find the weights before generating 50,000 samples for them
        from igan.metrics.inception import _resolve_weights

        inception_weights = _resolve_weights(inception_weights, download)
    if kind == "checkpoint" and n is None:
        n = DEFAULT_N.get(metric, PLUGIN_DEFAULT_N)
    images = load_images(input, kind, n, restored, seed)
    n_images = int(images.shape[0])
    if uses_splits and n_images < splits:
        raise UsageError(f"{input} holds {n_images} images, fewer than --splits {splits}",
                         hint="score more images, or use fewer --splits")
    context = make_context(splits=splits, n=n_images, device=dev, dataset=dataset,
                           data_dir=str(data_dir) if data_dir else None, download=download,
                           inception_weights=inception_weights, retrain=retrain, seed=seed, pm=pm,
                           input=str(input), input_kind=kind, config=restored.config if restored else None)
    mean, std, out = score_images(registry[metric], images, context)
    result = {**base, "mean": mean, "std": std, "n": n_images, "splits": splits if uses_splits else None,
              "dataset": dataset}
    if kind == "checkpoint":
        result["seed"] = seed
    result.update(out)
    return result
