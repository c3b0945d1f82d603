"""The Inception-v3 network of the Inception Score and FID, as the TensorFlow graph computes it.

Salimans et al. (2016, §4) score samples with the 2015-12-05 TensorFlow Inception graph
(``inception-2015-12-05.tgz``); FID (Heusel et al. 2017) uses the same graph's 2048-d ``pool_3``
features. This module re-implements that graph in PyTorch so that igan's numbers can be compared with
the literature:

* the architecture is torchvision's Inception-v3 with the three differences of the TF graph, as ported
  for FID by pytorch-fid: the average pools of the A, C and E blocks exclude the zero padding
  (``count_include_pad=False``), the pool branch of the last E block (``Mixed_7c``) is a *max* pool,
  and the classifier has 1008 outputs (1000 classes plus unused legacy ones);
* its ``state_dict`` has exactly the layout of the standard converted file
  ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release, byte-identical to torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth``);
* the input pipeline is the graph's own: uint8 pixels cast to float, a TensorFlow-1 bilinear resize to
  299x299 (``align_corners=False`` *without* half-pixel centres, which ``torch.nn.functional
  .interpolate`` cannot express), then ``(x - 128) / 128``; this is what torch-fidelity does too;
* the outputs are ``pool`` (for FID), ``logits_unbiased`` = ``pool @ W.T`` without the bias (what the
  original IS code feeds to the softmax) and ``logits`` (with the bias).

The network always runs in float32 with autocast and TF32 off, in eval mode and without autograd:
it is a measuring instrument, and exactness comes first. Weights are loaded only with
``torch.load(..., weights_only=True)``, so a weights file can never run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from igan.errors import IganError

__all__ = [
    "InceptionV3TF",
    "InceptionOutputs",
    "tf1_bilinear_resize",
    "load_inception",
    "inception_outputs",
    "download_inception_weights",
    "hub_weights_path",
    "WEIGHTS_FILENAME",
    "WEIGHTS_URL",
    "WEIGHTS_SHA256",
    "WEIGHTS_ENV",
    "INPUT_SIZE",
]

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
# The file name ends in the first 8 hex digits of this digest (torch.hub's convention); the full digest
# (95,628,359 bytes) is pinned so that a truncated or altered download is caught, not just a wrong one.
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_ENV = "IGAN_INCEPTION_WEIGHTS"
INPUT_SIZE = 299

_BN_EPS = 0.001  # the TF graph's batch-norm epsilon (PyTorch's default is 1e-5)
_MAX_LISTED = 5  # how many layout mismatches an error message names


# --------------------------------------------------------------------------------------------------
# Preprocessing


def _tf1_source_coords(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Lower/upper source indices and the interpolation weight of each output index, as TF1 does.

    TF1's ``ResizeBilinear`` (align_corners=False, legacy scaler) maps output index ``i`` to source
    coordinate ``i * (in / out)`` with no half-pixel offset, all in float32; the upper neighbour is
    clamped to the last row/column, so the right/bottom edge repeats the last source pixel.
    """
    # float32 division, correctly rounded, exactly like TF's `in_size / static_cast<float>(out_size)`.
    f32 = torch.float32
    scale = torch.tensor(float(in_size), dtype=f32) / torch.tensor(float(out_size), dtype=f32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    floor = torch.floor(src)
    lower = floor.to(torch.long)
    upper = torch.clamp(lower + 1, max=in_size - 1)
    weight = src - floor
    return lower.to(device), upper.to(device), weight.to(device)


def tf1_bilinear_resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of a float NCHW tensor exactly as TensorFlow 1.x ``tf.image.resize_bilinear``.

    Semantics: ``align_corners=False`` and ``half_pixel_centers=False`` (the only mode TF1 had in 2015):
    output pixel ``i`` samples source coordinate ``i * in / out``, interpolating between ``floor`` and
    ``floor + 1`` (clamped at the edge). This differs from ``F.interpolate(..., align_corners=False)``,
    which samples at ``(i + 0.5) * in / out - 0.5``; the two disagree by up to a pixel's worth of shift,
    enough to move the Inception Score in the second decimal.

    The arithmetic order matches TF's kernel (``top = tl + (tr - tl) * dx``, likewise ``bottom``, then
    ``top + (bottom - top) * dy``), so float32 results agree with TF on CPU to the last bit.
    """
    if x.dim() != 4:
        raise ValueError(f"tf1_bilinear_resize expects an NCHW tensor, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"tf1_bilinear_resize expects a floating-point tensor, got {x.dtype}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be positive, got {(out_h, out_w)}")
    in_h, in_w = x.shape[2], x.shape[3]
    y_lo, y_hi, dy = _tf1_source_coords(in_h, out_h, x.device)
    x_lo, x_hi, dx = _tf1_source_coords(in_w, out_w, x.device)
    dx = dx.to(x.dtype).view(1, 1, 1, out_w)
    dy = dy.to(x.dtype).view(1, 1, out_h, 1)

    rows_lo = x.index_select(2, y_lo)
    rows_hi = x.index_select(2, y_hi)
    top_left, top_right = rows_lo.index_select(3, x_lo), rows_lo.index_select(3, x_hi)
    bottom_left, bottom_right = rows_hi.index_select(3, x_lo), rows_hi.index_select(3, x_hi)
    top = top_left + (top_right - top_left) * dx
    bottom = bottom_left + (bottom_right - bottom_left) * dx
    return top + (bottom - top) * dy


# --------------------------------------------------------------------------------------------------
# The network. Attribute names are those of the converted weights file, so that its state dict loads
# as is; the blocks below are named after the Inception paper's module types.


class _ConvBN(nn.Module):
    """Convolution (no bias) -> batch norm (eps 0.001) -> ReLU: every convolution of the graph."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        # track_running_stats stays on: the converted file carries `num_batches_tracked` for every BN.
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_same(x: Tensor) -> Tensor:
    # TF's SAME-padded average pool divides by the number of *real* pixels under the window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 module (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_same(x))
        return torch.cat([self.branch1x1(x), b5, b3, bp], dim=1)


class _BlockB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _BlockC(nn.Module):
    """17x17 module with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_same(x))
        return torch.cat([self.branch1x1(x), b7, bd, bp], dim=1)


class _BlockD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _BlockE(nn.Module):
    """8x8 module with expanded 1x3/3x1 outputs (Mixed_7b, Mixed_7c).

    ``max_pool=True`` for Mixed_7c: the TF graph's last pool branch is a max pool, not the average
    pool that the Inception paper and torchvision use (pytorch-fid's FIDInceptionE_2).
    """

    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], dim=1)


@dataclass(frozen=True)
class InceptionOutputs:
    """What one forward pass returns (float32, on the model's device)."""

    pool: Tensor  # [N, 2048] pool_3 features: the FID features
    logits_unbiased: Tensor  # [N, 1008] pool @ fc.weight.T, no bias: what the IS softmax uses
    logits: Tensor  # [N, 1008] logits_unbiased + fc.bias


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """Disable autocast and, on CUDA, TF32 convolutions/matmuls for the duration of a forward pass.

    cuDNN runs float32 convolutions in TF32 (10 mantissa bits) by default on Ampere and newer GPUs,
    which perturbs every layer at about the 1e-3 relative level; the reference numbers are full float32.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
        if device.type == "cuda":
            conv = getattr(torch.backends.cudnn, "conv", None)
            if conv is not None and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
                # PyTorch >= 2.9: the per-operator precision API, which replaces allow_tf32.
                saved = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)

                def restore() -> None:
                    conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved

                conv.fp32_precision = "ieee"
                torch.backends.cuda.matmul.fp32_precision = "ieee"
            else:
                saved_legacy = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)

                def restore() -> None:
                    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_legacy

                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            stack.callback(restore)
        yield


class InceptionV3TF(nn.Module):
    """Inception-v3 as in the 2015-12-05 TF graph (FID/IS variant); input uint8 NCHW images, any size.

    Built with random weights; use :func:`load_inception` for the real ones. The module always stays
    in eval mode (``train(True)`` is ignored) and its parameters never require grad.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, c7=128)
        self.Mixed_6c = _BlockC(768, c7=160)
        self.Mixed_6d = _BlockC(768, c7=160)
        self.Mixed_6e = _BlockC(768, c7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionV3TF:
        # Batch norm must always use the stored TF statistics; batch statistics would make the
        # features depend on what else is in the batch.
        return super().train(False)

    def forward(self, images: Tensor) -> InceptionOutputs:
        """uint8 [N, 3, H, W] in [0, 255] -> :class:`InceptionOutputs`."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError("InceptionV3TF expects uint8 RGB images [N, 3, H, W], got "
                             f"{images.dtype} {tuple(images.shape)}")
        if self.fc.weight.dtype != torch.float32:
            raise ValueError(f"InceptionV3TF runs in float32 only, but its weights are "
                             f"{self.fc.weight.dtype}")
        with torch.no_grad(), _exact_float32(images.device):
            x = tf1_bilinear_resize(images.to(torch.float32), INPUT_SIZE)
            x = (x - 128) / 128
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 147x147
            x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73x73
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71x71
            x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35x35
            for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                          self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                          self.Mixed_7c):
                x = block(x)  # ends at 2048 x 8x8
            pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
            logits_unbiased = pool.mm(self.fc.weight.t())
            logits = logits_unbiased + self.fc.bias
        return InceptionOutputs(pool=pool, logits_unbiased=logits_unbiased, logits=logits)


# --------------------------------------------------------------------------------------------------
# Weights: finding, downloading, loading


def hub_weights_path() -> Path:
    """Where torch.hub (and so pytorch-fid) caches the weights: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _places_text() -> str:
    return (f"(1) a file given with --inception-weights PATH (from Python: load_inception(path)), "
            f"(2) the environment variable {WEIGHTS_ENV}, "
            f"(3) the torch hub cache {hub_weights_path()}")


def download_inception_weights(dest: Path | None = None, *, url: str = WEIGHTS_URL,
                               sha256: str = WEIGHTS_SHA256, timeout: float = 60.0) -> Path:
    """Fetch the weights into ``dest`` (default: the torch hub cache) and verify their SHA-256.

    The bytes go to a temporary file beside ``dest`` and are moved into place with ``os.replace`` only
    once the digest matches, so an interrupted or corrupted download never leaves a file that a later
    run would trust.
    """
    dest = Path(dest) if dest is not None else hub_weights_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            raise IganError(f"could not download the Inception weights from {url}: {exc}",
                            hint=f"download {WEIGHTS_FILENAME} by hand and put it at one of: "
                                 f"{_places_text()}") from exc
        if digest.hexdigest() != sha256:
            raise IganError(f"the downloaded Inception weights have SHA-256 {digest.hexdigest()}, "
                            f"expected {sha256}; the file was discarded",
                            hint="the download was truncated or altered; try again, or fetch "
                                 f"{url} by hand and check its SHA-256")
        from igan.fileio import apply_new_file_mode

        apply_new_file_mode(tmp, dest)  # mkstemp made it 0600; a download gets the mode open() gives
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _resolve_weights(path: str | os.PathLike[str] | None, download: bool) -> Path:
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise IganError(f"Inception weights file not found: {candidate}",
                            hint=f"point --inception-weights at {WEIGHTS_FILENAME}; without it igan looks in "
                                 f"{WEIGHTS_ENV}, then {hub_weights_path()}")
        return candidate
    env = os.environ.get(WEIGHTS_ENV, "")
    if env:
        candidate = Path(env).expanduser()
        if not candidate.is_file():
            # An explicit setting that points nowhere is a mistake to report, not a cue to fall back.
            raise IganError(f"{WEIGHTS_ENV}={env} but there is no file there",
                            hint=f"fix or unset {WEIGHTS_ENV}; the torch hub cache {hub_weights_path()} "
                                 "is used when it is unset")
        return candidate
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    if download:
        return download_inception_weights(cached)
    raise IganError(f"Inception weights {WEIGHTS_FILENAME} not found; searched {_places_text()}",
                    hint=f"put the file ({WEIGHTS_URL}) at one of those places, "
                         "or run with --download to fetch it into the torch hub cache")


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    end = text.find(". ")
    text = text[: end + 1] if end != -1 else text
    return text if len(text) <= 160 else text[:157] + "..."


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the outcome below says enough.
            warnings.simplefilter("ignore")
            # weights_only=True: tensors and plain containers only, so the file cannot execute code.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if blocked:
            raise IganError(f"{path} was refused: it holds objects other than tensors ({blocked[0]})",
                            hint=f"igan loads weights with torch.load(weights_only=True), which never runs "
                                 f"code from a file; use the original {WEIGHTS_FILENAME}") from exc
        raise IganError(f"{path} is not a readable PyTorch weights file (not a tensor-only pickle)",
                        hint=f"it may be truncated or in another format; replace it with "
                             f"{WEIGHTS_FILENAME} (--download fetches it)") from exc
    except Exception as exc:  # torch.load raises many types for a file that is not a checkpoint
        raise IganError(f"{path} is not a readable PyTorch weights file ({_first_sentence(exc)})",
                        hint=f"it may be truncated or in another format; replace it with "
                             f"{WEIGHTS_FILENAME} (--download fetches it)") from exc
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                               for k, v in obj.items()):
        raise IganError(f"{path} does not hold a state dict (a mapping of names to tensors) but a "
                        f"{type(obj).__name__}", hint=f"use {WEIGHTS_FILENAME}")
    return obj


def _layout_mismatches(expected: Mapping[str, Tensor], got: Mapping[str, Tensor]) -> list[str]:
    """Every difference between two state-dict layouts, the most telling first.

    Wrong shapes/dtypes come first (a near miss such as a 1000-class classifier), then unexpected
    keys, then missing ones (a different network altogether).
    """
    wrong: list[str] = []
    missing: list[str] = []
    for key, ref in expected.items():
        if key not in got:
            # num_batches_tracked is bookkeeping that eval mode never reads; a file without it is fine.
            if not key.endswith("num_batches_tracked"):
                missing.append(f"missing {key}")
        elif tuple(got[key].shape) != tuple(ref.shape):
            wrong.append(f"{key} has shape {list(got[key].shape)}, expected {list(ref.shape)}")
        elif got[key].dtype != ref.dtype:
            wrong.append(f"{key} is {got[key].dtype}, expected {ref.dtype}")
    unexpected = [f"unexpected {key}" for key in got if key not in expected]
    return wrong + unexpected + missing


def load_inception(path: str | os.PathLike[str] | None = None, *, download: bool = False,
                   device: str | torch.device = "cpu") -> InceptionV3TF:
    """The TF Inception-v3 with its real weights, in eval mode on ``device``.

    The weights file is looked for at ``path``, then at ``$IGAN_INCEPTION_WEIGHTS``, then in the torch
    hub cache; with ``download=True`` a missing file is fetched into the hub cache and checksummed.
    A missing, unreadable or wrong-architecture file raises :class:`IganError`.
    """
    weights = _resolve_weights(path, download)
    state = _read_state_dict(weights)
    model = InceptionV3TF()
    expected = model.state_dict()
    problems = _layout_mismatches(expected, state)
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise IganError(f"{weights} is not the Inception-v3 FID/IS weights file: {shown}{more}",
                        hint=f"expected {WEIGHTS_FILENAME} ({len(expected)} tensors, SHA-256 "
                             f"{WEIGHTS_SHA256[:8]}...); --download fetches it")
    # Missing num_batches_tracked entries keep the model's own (unused) counters.
    model.load_state_dict({**expected, **state}, strict=True)
    return model.to(device)


def inception_outputs(model: InceptionV3TF, images_uint8: Tensor, batch_size: int = 200,
                      device: str | torch.device | None = None, *,
                      progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Run ``model`` over uint8 images in batches: ``(pool [N, 2048], logits_unbiased [N, 1008])``.

    Both come back as float64 on the CPU, ready for :func:`igan.metrics.scores.feature_statistics` and
    :func:`igan.metrics.scores.inception_score`. ``device`` defaults to the model's device; images are
    moved there one batch at a time, so the full set may stay on the CPU. ``progress(done, total)`` is
    called after each batch.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
        raise ValueError("inception_outputs expects uint8 RGB images [N, 3, H, W], got "
                         f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    target = torch.device(device) if device is not None else model.fc.weight.device
    if model.fc.weight.device != target:
        model = model.to(target)
    total = images_uint8.shape[0]
    pools: list[Tensor] = []
    logits: list[Tensor] = []
    for start in range(0, total, batch_size):
        out = model(images_uint8[start:start + batch_size].to(target))
        pools.append(out.pool.to("cpu", torch.float64))
        logits.append(out.logits_unbiased.to("cpu", torch.float64))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    if not pools:
        return torch.empty(0, 2048, dtype=torch.float64), torch.empty(0, 1008, dtype=torch.float64)
    return torch.cat(pools), torch.cat(logits)
