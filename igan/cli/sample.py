"""``igan sample``: write samples from a checkpoint: one grid image, an .npz, or a folder of PNGs.

``-o`` says what to write: a file named ``.png``, ``.jpg``/``.jpeg`` or ``.webp`` is one grid image in
that format, ``.npz`` a uint8 NHWC array, and a folder (a path ending in ``/``, an existing folder, or a
name without a suffix) one PNG per sample. Any other suffix is refused rather than guessed, and so is a
grid or ``.npz`` name that is an existing folder (``-o x.png/`` writes into it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from igan.config import SEED_MAX
from igan.errors import UsageError

__all__ = ["sample", "output_kind", "register"]

MAX_GRID = 4096


def output_kind(out: str) -> str:
    """``"grid"``, ``"npz"`` or ``"folder"`` for the ``-o`` value as typed (a trailing slash counts)."""
    from igan.images import GRID_SUFFIXES, grid_formats

    path = Path(out)
    if out.endswith(("/", "\\")):
        return "folder"
    suffix = path.suffix.lower()
    if path.is_dir():
        if suffix == ".npz" or suffix in GRID_SUFFIXES:  # a file was meant, but a folder is there
            raise UsageError(f"cannot write {out}: it is an existing folder, and a {suffix} file cannot replace it",
                             hint=f"name another file, or write {out}/ (a trailing slash) for one PNG per sample "
                                  "inside it")
        return "folder"
    if suffix == ".npz":
        return "npz"
    if suffix in grid_formats():
        return "grid"
    if suffix in GRID_SUFFIXES:  # WebP without libwebp
        raise UsageError(f"cannot write {out}: this Pillow has no {GRID_SUFFIXES[suffix]} support",
                         hint="use .png or .jpg, or install Pillow with libwebp")
    if suffix:
        kinds = ", ".join(grid_formats())
        raise UsageError(f"cannot write {out}: igan sample writes a grid image ({kinds}), an array (.npz) "
                         f"or a folder of PNGs, not {suffix}",
                         hint=f"name the file with one of {kinds} or .npz, or write {out}/ (a trailing slash) "
                              "for a folder of PNGs")
    return "folder"


def sample(
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT", help="a .safetensors checkpoint written by igan, or a run directory (its last checkpoint)",
                                               show_default=False)],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="number of images")] = 64,
    out: Annotated[str, typer.Option(
        "-o", "--out", metavar="PATH",
        help="grid.png / .jpg / .webp: one grid image; x.npz: a uint8 NHWC array; DIR/: a folder of PNGs")
    ] = "samples.png",
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="noise seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Write samples from a checkpoint: one grid image (PNG, JPEG, WebP), an .npz, or a folder of PNGs."""
    from igan.fileio import make_dirs, remove_created, writing
    from igan.images import save_images
    from igan.restore import restore_models

    kind = output_kind(out)  # before any work: a bad -o costs nothing
    if kind == "grid" and n > MAX_GRID:
        raise UsageError(f"a grid of {n} images is too large (at most {MAX_GRID})",
                         hint="write an .npz or a folder (DIR/) for many samples")
    path = Path(out)
    # before any work: a file where the folder goes, a read-only parent, ...
    created = make_dirs(path if kind == "folder" else path.parent, "-o folder")
    try:
        restored = restore_models(checkpoint, device)
        with writing(path):
            if kind in ("grid", "npz"):
                save_images(torch.cat(list(restored.generate(n, seed))), path, kind=kind)
            else:
                written = 0
                for chunk in restored.generate(n, seed):
                    save_images(chunk, path, start=written, kind="folder")
                    written += chunk.shape[0]
    except BaseException:
        remove_created(created)  # nothing half-made is left behind
        raise
    print(path)


def register(app: typer.Typer) -> None:
    app.command("sample", epilog="Examples: igan sample CKPT -o grid.jpg  ·  igan sample CKPT -n 50000 -o x.npz  ·  "
                "igan sample CKPT -n 100 -o imgs/")(sample)
