"""safetensors checkpoints: every tensor of a run, and JSON metadata to rebuild it.

Layout of the tensor names::

    G.<param>  D.<param>                   model state dicts
    opt_G.<index>.<key>  opt_D.<index>.<key>  optimizer state (Adam moments, step counts)
    sampler.<key>                          data-order state (permutations, positions)
    rng.torch  rng.cuda                    random-number generator states
    plugin.<plugin name>.<key>             tensors from ``igan_checkpoint_tensors``

Metadata (safetensors allows only str -> str): ``format`` (an integer version), ``igan_version``,
``config`` (RunConfig JSON), ``model`` (registry name + kwargs), ``plugins`` (name -> version),
``plugin_records`` (who owns each option and ``plugin.*`` tensor, ``igan.ownership``), ``opt_groups``
(optimizer hyperparameters), ``step``, ``epoch``, ``epochs_ended`` (the last epoch whose end hooks
fired), ``metrics`` (the last epoch-end metrics), ``segments`` (steps and seconds of each training
segment so far, one per resume), ``data`` (what turns outputs into pixels), and ``digest``: SHA-256 of
every tensor (name, dtype, shape, bytes) and of the other entries.

Writes are atomic: a temporary file in the same folder is written, fsynced and renamed over the target,
so a crash mid-write leaves the previous checkpoint intact. Loading never unpickles anything, verifies
the digest (damage is an error naming the file; checkpoints written before the digest existed load
unverified) and checks the metadata against its schema (``igan.metadata``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from igan.errors import IganError
from igan.fileio import atomic_write

__all__ = ["FORMAT_VERSION", "DIGEST_KEY", "save_checkpoint", "copy_checkpoint", "load_checkpoint",
           "checkpoint_metadata", "resolve_checkpoint", "run_dir_of", "tensor_digest", "write_safetensors",
           "flatten_optimizer", "unflatten_optimizer", "prefixed", "nonfinite"]

FORMAT_VERSION = 1
DIGEST_KEY = "digest"  # "sha256:<hex>" of the tensors and the other metadata entries (tensor_digest)


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list]:
    state = opt.state_dict()
    tensors = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"{prefix}.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def _sha256(t: torch.Tensor) -> bytes:
    t = t.detach()
    if t.device.type != "cpu" or not t.is_contiguous():
        t = t.to("cpu").contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).digest()


def tensor_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata (every entry but the digest) and, in name order, each tensor's name,
    dtype, shape and the SHA-256 of its bytes. safetensors keeps no checksum: a flipped bit in the data
    area or a dtype changed in the header (F32 to I32, same size) would otherwise load and be used.
    The tensors are hashed on a few threads (hashlib releases the GIL), which is most of the cost."""
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(tensors)
    workers = min(8, os.cpu_count() or 1, max(1, len(names)))
    with ThreadPoolExecutor(workers) as pool:
        hashes = list(pool.map(_sha256, (tensors[n] for n in names)))
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != DIGEST_KEY:
            h.update(json.dumps([key, metadata[key]]).encode())
    for name, digest in zip(names, hashes):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(digest)
    return "sha256:" + h.hexdigest()


def _safetensors_os_error(exc: SafetensorError, filename: str) -> OSError:
    """safetensors reports I/O failures as SafetensorError ("... No space left on device (os error 28)"):
    the OSError it stands for, so a full disk is reported like any other failed write."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code) if found else str(exc), filename)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write atomically (``igan.fileio.atomic_write``: temp file, fsync, rename, fsync the folder), with a
    digest of the tensors and metadata. I/O failures raise ``OSError``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["format"] = str(FORMAT_VERSION)
    # safetensors refuses shared or non-contiguous storage: give it plain CPU copies.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta[DIGEST_KEY] = tensor_digest(plain, meta)

    atomic_write(path, lambda tmp: write_safetensors(plain, tmp, meta))


def write_safetensors(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, with its I/O failures raised as the ``OSError`` they are."""
    try:
        save_file(tensors, filename, metadata=metadata)
    except SafetensorError as exc:
        raise _safetensors_os_error(exc, filename) from exc


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint file the way ``save_checkpoint`` writes one (``igan.fileio.atomic_write``), so
    ``dst`` is always either the previous copy or the complete new one."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the last checkpoint of a run directory (``checkpoints/last.safetensors``):
    every command that reads a checkpoint accepts either."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.safetensors"
        if not last.is_file():
            raise IganError(f"{path} is a folder without a checkpoint (no checkpoints/last.safetensors)",
                            hint="pass a run directory written by `igan train` / `igan semisup`, or a "
                                 ".safetensors file")
        return last
    return path


def run_dir_of(path: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.safetensors`` -> ``<run>``); a
    folder is returned as it is."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.parent.name == "checkpoints":
        return path.parent.parent
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", require: tuple[str, ...] = ()
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint onto ``device``; returns (tensors, metadata with JSON decoded).

    The digest written with the file is verified (files written before igan stored one load without
    the check), and the metadata is checked against its schema (``igan.metadata``) before anything is
    built from it; ``require`` names entries that must be present (``data`` to rebuild the models,
    ``opt_groups`` and ``step`` to resume)."""
    path = Path(path)
    raw_meta = _raw_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")  # verified on the CPU, then moved
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from exc
    meta = _decode(path, raw_meta)
    if DIGEST_KEY in raw_meta and tensor_digest(tensors, raw_meta) != raw_meta[DIGEST_KEY]:
        raise IganError(f"{path} is damaged: its contents do not match the digest igan wrote with them",
                        hint="the file changed after it was written (a disk or copy error, or an edit); use "
                             "another copy or an earlier checkpoint of the run")
    from igan.metadata import check_metadata

    check_metadata(meta, path, require)
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def checkpoint_metadata(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """A checkpoint's metadata (JSON decoded, schema-checked) and its tensor names, without reading any
    tensor (so without verifying the digest: ``load_checkpoint`` does that)."""
    path = Path(path)
    raw_meta = _raw_metadata(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from exc
    meta = _decode(path, raw_meta)
    from igan.metadata import check_metadata

    check_metadata(meta, path, ())
    return meta, keys


def _unreadable(path: Path, exc: BaseException) -> IganError:
    return IganError(f"{path} is not a readable safetensors checkpoint ({str(exc).splitlines()[0]})",
                     hint="the file may be truncated or not an igan checkpoint; use checkpoints/last.safetensors "
                          "of a run")


def _raw_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise IganError(f"checkpoint not found: {path}",
                        hint="pass the .safetensors file inside a run's checkpoints/ folder, or the run directory")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from exc


def _decode(path: Path, raw_meta: dict[str, str]) -> dict[str, Any]:
    if "format" not in raw_meta or "config" not in raw_meta:
        raise IganError(f"{path} is a safetensors file but not an igan checkpoint (no igan metadata)",
                        hint="pass a checkpoint written by `igan train` or `igan semisup`")
    try:
        version = int(raw_meta["format"])
    except ValueError:
        version = 0
    if version < 1:
        raise IganError(f"{path} has an invalid checkpoint format {raw_meta['format']!r}",
                        hint="the metadata was edited or damaged; use another checkpoint of the run")
    if version > FORMAT_VERSION:
        raise IganError(f"{path} has checkpoint format {version}, this igan reads format "
                        f"{FORMAT_VERSION}", hint="upgrade igan (pip install -U igan) to read it")
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


def nonfinite(tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("G.", "D.")) -> list[str]:
    """Names of the floating-point tensors under ``prefixes`` that hold NaN or infinity."""
    names = [k for k, v in tensors.items() if k.startswith(prefixes) and v.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([tensors[k].isfinite().all() for k in names]).tolist()  # one host sync
    return [k for k, ok in zip(names, finite) if not ok]
