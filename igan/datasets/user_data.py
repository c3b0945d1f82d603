"""Built-in plugin: your own data. Registers ``--dataset folder`` (a folder of images, ``igan.datasets.folder``)
and ``--dataset npz`` (arrays in an .npz file, ``igan.datasets.npz``) with their options, through the same
hooks a third-party dataset plugin uses.

The default model follows the image size (``model_for_image``): 32 px -> ``cifar_conv`` (the paper's CIFAR
pair), 64 -> ``dcgan64_conv``, 128 -> ``dcgan128_conv`` (DCGAN-style, after the paper's ImageNet setting),
any other size (an .npz of 28x28 images, say) -> ``mnist_mlp``, whose MLPs take any shape.

The options carry their real defaults (so resuming without ``--image-size`` after a run with
``--image-size 64`` is the same setting); giving one with a dataset it does not apply to is a usage error.
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


# the options' defaults: igan.datasets.folder's (not imported here: it loads torch, and `igan --help` must stay fast)
DEFAULTS = {"image_size": 64, "image_mode": "auto", "test_fraction": 0.1, "strict": False, "cache_dir": None}


@hookimpl
def igan_addoption(parser):
    parser.add("image_size", int, DEFAULTS["image_size"], panel=PANEL,
               help="--dataset folder: resize + centre-crop every image to 32, 64 or 128 pixels")
    parser.add("image_mode", str, DEFAULTS["image_mode"], panel=PANEL, choices=("auto", "rgb", "grey"),
               help="--dataset folder: colour channels; auto = one grey channel when every image is grey")
    parser.add("test_fraction", float, DEFAULTS["test_fraction"], min=0.0, max=1.0, panel=PANEL,
               help="--dataset folder/npz without a test split: fraction of each class held out, seeded")
    parser.add("strict", bool, panel=PANEL, run_only=True,
               help="--dataset folder: refuse unreadable images instead of skipping them")
    parser.add("cache_dir", str, None, panel=PANEL, run_only=True,
               help="--dataset folder: where the decoded-image cache goes (default $XDG_CACHE_HOME/igan/image-cache)")


def _opt(config, name: str):
    """An option's value; its default without a run (``igan evaluate`` of a file) or in an old config."""
    value = config.opt(name) if config is not None else None
    return DEFAULTS[name] if value is None else value


def _load_folder(data_dir, download, config=None):
    from igan.datasets.folder import load_folder

    return load_folder(data_dir, download, image_size=_opt(config, "image_size"), mode=_opt(config, "image_mode"),
                       test_fraction=float(_opt(config, "test_fraction")), strict=bool(_opt(config, "strict")),
                       cache_dir=_opt(config, "cache_dir"),
                       require_labels=config is not None and config.command == "semisup")


def _load_npz(data_dir, download, config=None):
    from igan.datasets.npz import load_npz

    return load_npz(data_dir, download, test_fraction=float(_opt(config, "test_fraction")),
                    require_labels=config is not None and config.command == "semisup")


@hookimpl
def igan_register_datasets(register):
    register(DatasetSpec(FOLDER, _load_folder, model_for_image,
                         "a folder of PNG/JPEG/WebP/BMP images; class sub-folders give labels"))
    register(DatasetSpec(NPZ, _load_npz, model_for_image,
                         "uint8 images x (NHWC or NCHW) and optional labels y in an .npz file"))


def _set(config, name: str) -> bool:
    """Typed on the command line, or set to something else than the default (through the Python API)."""
    return config.is_given(name) or _opt(config, name) != DEFAULTS[name]


@hookimpl
def igan_configure(config, pm):
    # the options of one dataset given with another are mistakes (runs after the data are loaded)
    for name in FOLDER_ONLY:
        if _set(config, name) and config.dataset != FOLDER:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} applies to --dataset folder, not --dataset {config.dataset}",
                             hint=f"drop {flag}" + (" (npz arrays are used at their own size)"
                                                    if config.dataset == NPZ and name == "image_size" else ""))
    if _set(config, "test_fraction") and config.dataset not in (FOLDER, NPZ):
        raise UsageError(f"--test-fraction applies to --dataset folder and npz, not --dataset {config.dataset}",
                         hint="drop --test-fraction: this dataset has its own test split")
