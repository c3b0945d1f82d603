"""Built-in plugin: your own data. Registers ``--dataset folder`` (a folder of images, ``igan.datasets.folder``)
and ``--dataset npz`` (arrays in an .npz file, ``igan.datasets.npz``) with their options, through the same
hooks a third-party dataset plugin uses.

The default model follows the image size (``model_for_image``): 32 px -> ``cifar_conv`` (the paper's CIFAR
pair), 64 -> ``dcgan64_conv``, 128 -> ``dcgan128_conv`` (DCGAN-style, after the paper's ImageNet setting),
any other size (an .npz of 28x28 images, say) -> ``mnist_mlp``, whose MLPs take any shape.

Every option defaults to None (or off), so the config of a run on another dataset holds nothing that
only this plugin understands.
"""

from __future__ import annotations

from igan.datasets.base import DatasetSpec, ImageDataset
from igan.errors import UsageError
from igan.plugins import hookimpl

PANEL = "Dataset"
FOLDER, NPZ = "folder", "npz"
MODEL_BY_SIZE = {32: "cifar_conv", 64: "dcgan64_conv", 128: "dcgan128_conv"}
FALLBACK_MODEL = "mnist_mlp"
FOLDER_ONLY = ("image_size", "image_mode", "strict", "cache_dir")


def model_for_image(dataset: ImageDataset) -> str:
    """The model pair for the dataset's image size (see the module docstring)."""
    _, h, w = dataset.image_shape
    return MODEL_BY_SIZE.get(h, FALLBACK_MODEL) if h == w else FALLBACK_MODEL


@hookimpl
def igan_addoption(parser):
    parser.add("image_size", int, None, panel=PANEL,
               help="--dataset folder: resize + centre-crop every image to 32, 64 or 128 pixels (default 64)")
    parser.add("image_mode", str, None, panel=PANEL, choices=("auto", "rgb", "grey"),
               help="--dataset folder: colour channels; auto = one grey channel when every image is grey "
                    "(default auto)")
    parser.add("test_fraction", float, None, min=0.0, max=1.0, panel=PANEL,
               help="--dataset folder/npz without a test split: fraction of each class held out, seeded "
                    "(default 0.1)")
    parser.add("strict", bool, panel=PANEL, run_only=True,
               help="--dataset folder: refuse unreadable images instead of skipping them")
    parser.add("cache_dir", str, None, panel=PANEL, run_only=True,
               help="--dataset folder: where the decoded-image cache goes (default $XDG_CACHE_HOME/igan/image-cache)")


def _load_folder(data_dir, download, config=None):
    from igan.datasets.folder import DEFAULT_SIZE, DEFAULT_TEST_FRACTION, load_folder

    opt = config.opt if config is not None else (lambda name, default=None: default)
    return load_folder(data_dir, download, image_size=opt("image_size") or DEFAULT_SIZE,
                       mode=opt("image_mode") or "auto",
                       test_fraction=_fraction(opt("test_fraction"), DEFAULT_TEST_FRACTION),
                       strict=bool(opt("strict")), cache_dir=opt("cache_dir"),
                       require_labels=config is not None and config.command == "semisup")


def _load_npz(data_dir, download, config=None):
    from igan.datasets.folder import DEFAULT_TEST_FRACTION
    from igan.datasets.npz import load_npz

    fraction = _fraction(config.opt("test_fraction") if config is not None else None, DEFAULT_TEST_FRACTION)
    return load_npz(data_dir, download, test_fraction=fraction,
                    require_labels=config is not None and config.command == "semisup")


def _fraction(value, default: float) -> float:
    return default if value is None else float(value)


@hookimpl
def igan_register_datasets(register):
    register(DatasetSpec(FOLDER, _load_folder, model_for_image,
                         "a folder of PNG/JPEG/WebP/BMP images; class sub-folders give labels"))
    register(DatasetSpec(NPZ, _load_npz, model_for_image,
                         "uint8 images x (NHWC or NCHW) and optional labels y in an .npz file"))


@hookimpl
def igan_configure(config, pm):
    # the options of one dataset given with another are mistakes (runs after the data are loaded)
    for name in FOLDER_ONLY:
        if config.opt(name) not in (None, False) and config.dataset != FOLDER:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} applies to --dataset folder, not --dataset {config.dataset}",
                             hint=f"drop {flag}" + (" (npz arrays are used at their own size)"
                                                    if config.dataset == NPZ and name == "image_size" else ""))
    if config.opt("test_fraction") is not None and config.dataset not in (FOLDER, NPZ):
        raise UsageError(f"--test-fraction applies to --dataset folder and npz, not --dataset {config.dataset}",
                         hint="drop --test-fraction: this dataset has its own test split")
