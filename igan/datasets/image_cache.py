"""The decoded-image cache of ``--dataset folder``: decode every file once, reuse the pixels after.

Where: ``$XDG_CACHE_HOME/igan/image-cache/<folder>-<size>px-<mode>-<key>/`` (``~/.cache`` when unset),
or under ``--cache-dir``. ``key`` hashes the folder's resolved path with the decode settings, so each
(folder, size, mode) has its own cache. The cache never goes into the data folder: the folder may be
read-only, shared by several users, or under version control.

What: ``images-<id>.npy``, every readable image as uint8 [N, C, size, size] in file order, and
``manifest.json``: format version, settings, and one entry per file: relative path, size in bytes,
mtime in nanoseconds, its row in the array (-1 for an unreadable file), whether it is grey, and why it
was unreadable. Unreadable files are remembered too, so they are not decoded again every run.

Valid when the manifest's settings match and its (path, size, mtime) list equals the folder's, in the
same order; then the array is loaded as it is (its shape checked against the manifest). Any change (a
file touched, added, removed or renamed) rebuilds the cache; rows of unchanged files are copied from the
old array, so adding ten images to ten thousand decodes ten. Like ``make`` or ``rsync``, a file
rewritten with the same size and the same mtime is not noticed.

Atomic: the new array goes to a hidden ``.part`` file that is fsynced and renamed to a fresh
``images-<id>.npy``; only then is the manifest replaced (again write, fsync, rename). A crash or Ctrl-C
at any point leaves either the previous manifest with its complete array or no manifest, never a
manifest that points at a half-written array; leftovers of a build that died are removed by a later build
once they are an hour old. When the cache cannot be written (no space, read-only cache folder) the images
are decoded anyway, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from igan.console import TaskBar
from igan.datasets.decode import decode_image
from igan.fileio import fsync_dir

__all__ = ["CACHE_VERSION", "CACHE_DIR_NAME", "FileStat", "Decoded", "default_cache_root", "cache_folder",
           "load_or_build", "rgb_to_grey"]

CACHE_VERSION = 1
CACHE_DIR_NAME = "image-cache"
MANIFEST = "manifest.json"
_STALE_PART_S = 3600  # a .part file older than this belongs to a build that died


@dataclass(frozen=True)
class FileStat:
    """One candidate image: path relative to the folder (POSIX separators), size, mtime."""

    rel: str
    size: int
    mtime_ns: int


@dataclass
class Decoded:
    """What the cache hands back: the pixels of the readable files and what happened to each file."""

    pixels: np.ndarray  # uint8 [n_readable, C, S, S], rows in file order
    rows: list[int]  # per file: its row in ``pixels``, -1 when unreadable
    errors: dict[str, str]  # relative path -> why it could not be read
    path: Path | None  # the cache folder, None when nothing could be written
    status: str  # "reused", "built" (from scratch), "updated" (some rows reused), "uncached"
    decoded: int = 0  # files decoded by this call
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/igan/image-cache`` (``~/.cache`` when unset or relative)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "igan" / CACHE_DIR_NAME


def cache_folder(root: Path, size: int, mode: str, base: Path | None = None) -> Path:
    """The cache folder of one (data folder, size, mode)."""
    resolved = Path(root).resolve()
    key = hashlib.sha256(f"{resolved}|{size}|{mode}|v{CACHE_VERSION}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", resolved.name or "root")[:40]
    return (Path(base).expanduser() if base else default_cache_root()) / f"{name}-{size}px-{mode}-{key}"


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3, H, W] -> [..., 1, H, W] with Pillow's ``convert("L")`` luma (ITU-R 601-2, the
    same fixed-point rounding), so a grey image stays exactly what it was."""
    out = np.empty((*rgb.shape[:-3], 1, *rgb.shape[-2:]), dtype=np.uint8)
    flat_in, flat_out = rgb.reshape(-1, *rgb.shape[-3:]), out.reshape(-1, 1, *rgb.shape[-2:])
    for lo in range(0, flat_in.shape[0], 1024):  # in chunks: the uint32 temporaries stay small
        r, g, b = (flat_in[lo:lo + 1024, i].astype(np.uint32) for i in range(3))
        flat_out[lo:lo + 1024, 0] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return out


# ----------------------------------------------------------------------------------------------
# reading


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        return None
    return manifest


def _load_array(folder: Path, manifest: dict, mmap: bool = False) -> np.ndarray | None:
    """The manifest's array, or None when it is missing, truncated or of another shape than recorded."""
    name = manifest.get("images")
    if not isinstance(name, str) or "/" in name or not name.startswith("images-"):
        return None
    try:
        arr = np.load(folder / name, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.dtype != np.uint8 or list(arr.shape) != manifest.get("shape"):
        return None
    return arr


def _same_files(manifest: dict, files: Sequence[FileStat]) -> bool:
    entries = manifest.get("entries")
    if not isinstance(entries, list) or len(entries) != len(files):
        return False
    return all(e[0] == f.rel and e[1] == f.size and e[2] == f.mtime_ns for e, f in zip(entries, files))


def _settings(root: Path, size: int, mode: str) -> dict:
    return {"root": str(Path(root).resolve()), "image_size": size, "mode": mode}


# ----------------------------------------------------------------------------------------------
# building


class _Progress(TaskBar):
    """The decoding bar (``igan.console.TaskBar``); the build's summary line is printed either way."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__("decoding images", total, enabled)


def _decode_all(root: Path, rels: list[str], size: int, workers: int,
                on_done: Callable[[int, tuple], None], progress: _Progress) -> None:
    """Decode ``rels`` (in order) with ``workers`` threads: Pillow releases the GIL while it decodes
    and resizes, so threads use several cores without copying pixels between processes."""

    def one(rel: str):
        return decode_image(root / rel, size)

    if workers <= 1 or len(rels) < 2:
        for i, rel in enumerate(rels):
            on_done(i, one(rel))
            progress.advance()
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="igan-decode")
    try:
        for i, result in enumerate(pool.map(one, rels)):
            on_done(i, result)
            progress.advance()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not decode the rest first
        raise
    pool.shutdown()


def _fsync_write(path: Path, write: Callable) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _write(folder: Path, pixels: np.ndarray, manifest: dict) -> None:
    """Array first (``.part``, fsync, rename), manifest last (same): see the module docstring."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"images-{secrets.token_hex(6)}.npy"
    part = folder / f".{name}.part"
    try:
        _fsync_write(part, lambda f: np.save(f, pixels, allow_pickle=False))
        os.replace(part, folder / name)
    finally:
        part.unlink(missing_ok=True)
    manifest = {**manifest, "images": name}
    previous = _read_manifest(folder)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".part", dir=folder)
    os.close(fd)
    try:
        _fsync_write(Path(tmp), lambda f: f.write(json.dumps(manifest).encode("utf-8")))
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        (folder / name).unlink(missing_ok=True)  # never referenced: the old manifest stays in charge
        raise
    fsync_dir(folder)
    _remove_leftovers(folder, replaced=previous.get("images") if previous else None, keep=name)


def _remove_leftovers(folder: Path, replaced: str | None, keep: str) -> None:
    """Best effort: the array the new manifest replaced, and arrays and .part files that no manifest has
    referred to for an hour (builds that died). A younger unreferenced array may belong to a build still
    running in another process (torchrun ranks share the cache), so it is left alone."""
    now = time.time()
    for p in folder.iterdir():
        try:
            if p.name == keep:
                continue
            if p.name == replaced and p.name.startswith("images-"):
                p.unlink()
            elif (p.name.startswith("images-") and p.suffix == ".npy") or p.name.endswith(".part"):
                if now - p.stat().st_mtime > _STALE_PART_S:
                    p.unlink()
        except OSError:
            pass


def load_or_build(root: Path, files: Sequence[FileStat], size: int, mode: str, base: Path | None = None,
                  workers: int | None = None, progress: bool = True,
                  check_memory: Callable[[int], None] | None = None) -> Decoded:
    """The pixels of ``files`` (below ``root``) at ``size`` px in ``mode`` ("auto", "rgb", "grey"):
    from the cache when it is valid, else decoded (reusing unchanged rows) and written to the cache.

    ``check_memory(nbytes)`` is called before anything large is allocated (it raises to refuse).
    """
    from igan.console import warn

    root = Path(root)
    files = list(files)
    folder = cache_folder(root, size, mode, base)
    settings = _settings(root, size, mode)
    old = _read_manifest(folder)
    if old is not None and {k: old.get(k) for k in settings} != settings:
        old = None
    if old is not None and _same_files(old, files):
        if check_memory is not None:
            check_memory(int(np.prod(old.get("shape", [0]))))
        pixels = _load_array(folder, old)
        if pixels is not None:
            rows = [int(e[3]) for e in old["entries"]]
            errors = {e[0]: e[5] for e in old["entries"] if e[3] < 0}
            return Decoded(pixels, rows, errors, folder, "reused")
        warn(f"the image cache {folder} is damaged; rebuilding it")
        old = None

    t0 = time.perf_counter()
    n = len(files)
    if check_memory is not None:
        check_memory(n * 3 * size * size)  # the decode buffer: 3 channels until the mode is known
    buffer = np.empty((n, 3, size, size), dtype=np.uint8)
    grey = [False] * n
    errors: dict[str, str] = {}
    ok = [False] * n

    # rows of unchanged files come from the previous array (read lazily through a memory map)
    todo: list[int] = []
    old_arr = _load_array(folder, old, mmap=True) if old is not None else None
    previous = {e[0]: e for e in old["entries"]} if old_arr is not None else {}
    for i, f in enumerate(files):
        e = previous.get(f.rel)
        if e is None or e[1] != f.size or e[2] != f.mtime_ns:
            todo.append(i)
        elif e[3] < 0:
            errors[f.rel] = e[5]
        else:
            buffer[i] = old_arr[e[3]]  # broadcasts a 1-channel row onto 3 channels (exact for grey rows)
            grey[i], ok[i] = bool(e[4]), True
    del old_arr

    def done(j: int, result: tuple) -> None:
        i = todo[j]
        pixels, is_grey, reason = result
        if pixels is None:
            errors[files[i].rel] = reason
        else:
            buffer[i], grey[i], ok[i] = pixels, is_grey, True

    with _Progress(len(todo), progress and len(todo) > 0) as bar:
        _decode_all(root, [files[i].rel for i in todo], size, workers or min(8, os.cpu_count() or 1), done, bar)

    keep = np.flatnonzero(ok)
    rows = [-1] * n
    for r, i in enumerate(keep):  # close the gaps of unreadable files in place (no second buffer)
        rows[i] = int(r)
        if r != i:
            buffer[r] = buffer[i]
    good = buffer[:len(keep)]
    if mode == "grey":
        pixels = rgb_to_grey(good)
    elif mode == "auto" and len(keep) and all(grey[i] for i in keep):
        pixels = np.ascontiguousarray(good[:, :1])
    else:
        pixels = good
    del good
    buffer = None  # frees the 3-channel buffer when only a 1-channel copy is kept
    seconds = time.perf_counter() - t0
    status = "updated" if len(todo) < n else "built"
    manifest = {"version": CACHE_VERSION, **settings, "shape": list(pixels.shape),
                "entries": [[f.rel, f.size, f.mtime_ns, rows[i], int(grey[i]), errors.get(f.rel)]
                            for i, f in enumerate(files)],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "decoder": _decoder()}
    try:
        _write(folder, pixels, manifest)
        path: Path | None = folder
    except OSError as exc:
        warn(f"could not write the image cache at {folder}: {exc.strerror or exc}; the images will be decoded "
             "again next time", hint="pass --cache-dir with a writable folder")
        path, status = None, "uncached"
    return Decoded(pixels, rows, errors, path, status, decoded=len(todo), seconds=seconds)


def _decoder() -> str:
    import PIL

    return f"Pillow {PIL.__version__}"
