"""``igan sample``: write samples from a checkpoint (a PNG grid, an .npz, or a folder of PNGs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from igan.errors import UsageError

__all__ = ["sample", "register"]


def sample(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint written by igan")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="number of images")] = 64,
    out: Annotated[Path, typer.Option("-o", "--out", help="grid.png, images.npz, or a folder for PNGs")] = Path(
        "samples.png"),
    seed: Annotated[int, typer.Option("--seed", help="noise seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda")] = "auto",
) -> None:
    """Write samples from a checkpoint: a PNG grid, an .npz of uint8 NHWC images, or a folder of PNGs."""
    from igan.images import save_images
    from igan.restore import restore_models

    restored = restore_models(checkpoint, device)
    if out.suffix.lower() == ".png" and n > 4096:
        raise UsageError(f"a grid of {n} images is too large", hint="write an .npz or a folder for many samples")
    if out.suffix.lower() in (".png", ".npz"):
        save_images(torch.cat(list(restored.generate(n, seed))), out)
    else:
        written = 0
        for chunk in restored.generate(n, seed):
            save_images(chunk, out, start=written)
            written += chunk.shape[0]
    print(out)


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
