"""Image files: sample grids (PNG, JPEG, WebP) and folders of PNGs (Pillow does the encoding), .npz
arrays of uint8."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["make_grid", "save_png", "save_image", "save_images", "grid_formats", "GRID_SUFFIXES"]

# The grid formats of `igan sample -o FILE`, by suffix. JPEG at quality 95 (Pillow's default 75 blurs
# 8x8 digits visibly); WebP lossless, so a grid is exact at about the size of the PNG.
GRID_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_SAVE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"lossless": True}}


def grid_formats() -> dict[str, str]:
    """The grid suffixes this Pillow can write (WebP needs Pillow built with libwebp)."""
    from PIL import features

    webp = bool(features.check("webp"))
    return {s: f for s, f in GRID_SUFFIXES.items() if f != "WEBP" or webp}


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


def save_image(array: np.ndarray, path: Path, upscale: int = 1, format: str = "PNG") -> None:
    """Write an [H, W, C] uint8 array as ``format`` (PNG, JPEG or WEBP), atomically (temp file + rename,
    ``igan.fileio``)."""
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    from igan.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: img.save(tmp, format=format, **_SAVE_OPTIONS.get(format, {})), suffix=".tmp")


def save_png(array: np.ndarray, path: Path, upscale: int = 1) -> None:
    """Write an [H, W, C] uint8 array as PNG, atomically (temp file + rename)."""
    save_image(array, path, upscale, "PNG")


def save_images(images: torch.Tensor, out: Path, start: int = 0, kind: str | None = None) -> None:
    """Save uint8 [N, C, H, W] as one grid image (``kind`` "grid": the format of ``out``'s suffix), a
    .npz ("npz": key ``images``, NHWC) or a folder of PNGs ("folder"). Without ``kind``, the suffix
    decides: a grid suffix, .npz, else a folder."""
    suffix = out.suffix.lower()
    kind = kind or ("grid" if suffix in GRID_SUFFIXES else "npz" if suffix == ".npz" else "folder")
    if kind == "grid":
        small = max(images.shape[-2:]) < 64
        save_image(make_grid(images), out, upscale=4 if small else 1, format=GRID_SUFFIXES[suffix])
    elif kind == "npz":
        from igan.fileio import atomic_write

        out.parent.mkdir(parents=True, exist_ok=True)
        arr = images.permute(0, 2, 3, 1).cpu().numpy()
        atomic_write(out, lambda tmp: np.savez_compressed(tmp, images=arr), suffix=".npz")
    else:
        out.mkdir(parents=True, exist_ok=True)
        arr = images.permute(0, 2, 3, 1).cpu().numpy()
        for i, img in enumerate(arr):
            save_png(img, out / f"{start + i:06d}.png")
