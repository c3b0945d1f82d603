"""Small image folders in the real formats, written with Pillow (plus a hand-written 16-bit RGB PNG, which
Pillow cannot write), and broken files of the kinds users have: truncated JPEG/PNG, text named .png, empty."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS.get(path.suffix.lower(), FORMATS[".png"])
    if fmt == "WEBP":
        kwargs.setdefault("lossless", True)
    if fmt == "JPEG":
        kwargs.setdefault("quality", 95)
    img.save(path, fmt, **kwargs)
    return path


def solid(path: Path, colour, size=(20, 16), mode="RGB") -> Path:
    """A single-colour image (exact after any resize) in the format of ``path``'s suffix."""
    return save(path, Image.new(mode, size, colour))


def noise(path: Path, seed: int, size=(24, 20)) -> Path:
    rng = np.random.default_rng(seed)
    return save(path, Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))


def png16_rgb(path: Path, rgb16: tuple[int, int, int], size=(8, 8)) -> Path:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written by hand."""
    w, h = size
    row = b"\x00" + struct.pack(">3H", *rgb16) * w
    raw = row * h

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def truncated(path: Path, fmt: str = "JPEG", seed: int = 0) -> Path:
    """A real image file cut short (Pillow opens it, then fails while decoding)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def class_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6, size=(24, 20)) -> Path:
    """root/<class>/<i>.<ext>: class k's images are solid grey-free colours (k-dependent), formats mixed."""
    exts = list(FORMATS)
    for k, name in enumerate(classes):
        for i in range(per_class):
            colour = (40 + 60 * k, 200 - 50 * k, 10 + 7 * i)
            solid(root / name / f"{i:02d}{exts[(i + k) % len(exts)]}", colour, size=size)
    return root


def flat_folder(root: Path, n: int = 12, size=(24, 20)) -> Path:
    exts = list(FORMATS)
    for i in range(n):
        noise(root / f"img{i:02d}{exts[i % len(exts)]}", seed=i, size=size)
    return root
