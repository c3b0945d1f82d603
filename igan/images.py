"""Image files: sample grids and folders of PNGs (Pillow does the encoding), .npz arrays of uint8."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["make_grid", "save_png", "save_images"]


def make_grid(images: torch.Tensor, pad: int = 1) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 [H', W', C] image, about square, with ``pad`` pixels between."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_png(array: np.ndarray, path: Path, upscale: int = 1) -> None:
    """Write an [H, W, C] uint8 array as PNG, atomically (temp file + rename, ``igan.fileio``)."""
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    from igan.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), suffix=".png")


def save_images(images: torch.Tensor, out: Path, start: int = 0) -> None:
    """Save uint8 [N, C, H, W] as a .png grid, a .npz (key ``images``, NHWC) or a folder of PNGs."""
    if out.suffix.lower() == ".png":
        small = max(images.shape[-2:]) < 64
        save_png(make_grid(images), out, upscale=4 if small else 1)
    elif out.suffix.lower() == ".npz":
        from igan.fileio import atomic_write

        out.parent.mkdir(parents=True, exist_ok=True)
        arr = images.permute(0, 2, 3, 1).cpu().numpy()
        atomic_write(out, lambda tmp: np.savez_compressed(tmp, images=arr), suffix=".npz")
    else:
        out.mkdir(parents=True, exist_ok=True)
        arr = images.permute(0, 2, 3, 1).cpu().numpy()
        for i, img in enumerate(arr):
            save_png(img, out / f"{start + i:06d}.png")
