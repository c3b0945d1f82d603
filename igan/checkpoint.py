"""safetensors checkpoints: every tensor of a run, and JSON metadata to rebuild it.

Layout of the tensor names::

    G.<param>  D.<param>                   model state dicts
    opt_G.<index>.<key>  opt_D.<index>.<key>  optimizer state (Adam moments, step counts)
    sampler.<key>                          data-order state (permutations, positions)
    rng.torch  rng.cuda                    random-number generator states
    plugin.<plugin name>.<key>             tensors from ``igan_checkpoint_tensors``

Metadata (safetensors allows only str -> str): ``format`` (an integer version), ``igan_version``,
``config`` (RunConfig JSON), ``model`` (registry name + kwargs), ``plugins`` (name -> version),
``opt_groups`` (optimizer hyperparameters), ``step``, ``epoch``.

Writes are atomic: a temporary file in the same folder is written, fsynced and renamed over the target,
so a crash mid-write leaves the previous checkpoint intact. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from igan.errors import IganError

__all__ = ["FORMAT_VERSION", "save_checkpoint", "copy_checkpoint", "load_checkpoint", "flatten_optimizer",
           "unflatten_optimizer", "prefixed"]

FORMAT_VERSION = 1


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


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write atomically: temp file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["format"] = str(FORMAT_VERSION)
    # safetensors refuses shared or non-contiguous storage: give it plain CPU copies.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(plain, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint file the way ``save_checkpoint`` writes one: temp file, fsync, rename, so
    ``dst`` is always either the previous copy or the complete new one."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(dst.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the OS allows it)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint straight onto ``device``; returns (tensors, metadata with JSON decoded)."""
    path = Path(path)
    if not path.is_file():
        raise IganError(f"checkpoint not found: {path}",
                        hint="pass the .safetensors file inside a run's checkpoints/ folder")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise IganError(f"{path} is not a readable safetensors checkpoint ({str(exc).splitlines()[0]})",
                        hint="the file may be truncated or not an igan checkpoint; use checkpoints/last.safetensors "
                             "of a run") from exc
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
    return tensors, meta
