"""One image file -> uint8 pixels of a fixed square size, with Pillow (``--dataset folder``).

Every file goes through the same steps, so a folder of mixed formats, modes and sizes gives one
consistent array:

1. ``Image.draft`` lets the JPEG decoder shrink by 1/2, 1/4 or 1/8 while decoding (never below the
   target size): a 2000x1200 JPEG read for 64 px decodes about 4x faster, and the result differs by at most
   1 in 255 after the final resampling.
2. The EXIF orientation is applied (phone photos are often stored sideways).
3. The mode becomes RGB: 16-bit grey (``I;16``, ``I``) is scaled to 8 bits (Pillow's own conversion
   clips everything above 255 to white); alpha (RGBA, LA, palette or RGB with a transparent colour)
   is composited over white, as the image shows on a white page; CMYK, palette, 1-bit and the rest
   use Pillow's conversion.
4. ``ImageOps.fit``: the largest centred square is cropped and resized to ``size`` x ``size``
   (bicubic, antialiased when shrinking); this equals torchvision's Resize(size) + CenterCrop(size)
   up to rounding.

``decode_image`` reports whether the image is grey (a grey mode, or R = G = B everywhere), so a
folder of grey scans can become a 1-channel dataset. Failures are returned as a short reason, not
raised: the caller decides whether to skip the file or refuse the folder (``--strict``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "to_rgb"]

# What the folder loader reads; other files are ignored (and counted, for the error on a folder of
# non-images). Pillow reads each of these in its standard build.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _scale_16bit(img):
    """``I;16`` / ``I`` (16-bit PNG grey) -> ``L``, 0..65535 mapped linearly onto 0..255."""
    from PIL import Image

    arr = np.asarray(img).astype(np.float64)
    top = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img):
    """Any Pillow image -> mode RGB (alpha composited over white, 16-bit grey scaled, not clipped)."""
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        img = _scale_16bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(path: Path | str, size: int) -> tuple[np.ndarray | None, bool, str | None]:
    """``(pixels uint8 [3, size, size], is_grey, None)``, or ``(None, False, reason)`` when the file
    cannot be read (not an image, truncated, unsupported, too large, unreadable)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # a huge image warns first and fails beyond twice the limit; the failure is what we report
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                grey = img.mode in _GREY_MODES
                img.draft(None, (size, size))  # JPEG only: decode at a reduced scale >= size
                img = ImageOps.exif_transpose(img)  # also loads the pixels: truncation raises here
                img.load()
                rgb = to_rgb(img)
                square = ImageOps.fit(rgb, (size, size), Image.Resampling.BICUBIC)
    except UnidentifiedImageError:
        return None, False, "not an image Pillow can read"
    except Image.DecompressionBombError:
        return None, False, "too large (Pillow's decompression-bomb limit)"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated, damaged, unreadable
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return None, False, reason.splitlines()[0]
    arr = np.asarray(square, dtype=np.uint8)  # [H, W, 3]
    if not grey:
        grey = bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), grey, None
