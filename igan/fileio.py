"""Writing files: atomically, with the mode ``open()`` would give, and OS failures as one-line errors.

* ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary file in the target's folder (same file
  system, so the rename is atomic), which is fsynced, given its mode and renamed over ``path``; the
  folder is fsynced so the rename itself survives a crash. On any failure (Ctrl-C included) the
  temporary file is removed and ``path`` is left as it was.
* Modes: ``tempfile.mkstemp`` creates files 0600 whatever the umask, so a checkpoint or a sample grid
  would be private to its owner while every other file of a run is not. ``new_file_mode(path)`` is what
  ``open(path, "w")`` gives: an existing file keeps its mode, a new one gets 0666 minus the umask.
* ``writing(path)``: turns an ``OSError`` raised while writing ``path`` (disk full, read-only file
  system, permissions) into an ``IganError`` naming the file, with a hint that fits the errno.
* ``make_dirs(path, what)``: creates an output folder; a path that is a file or lies under one is a
  usage error naming it, any other failure an ``IganError``. Returns the folders it created, so a
  command that fails before writing anything can remove them again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from igan.errors import IganError, UsageError

__all__ = ["atomic_write", "write_text", "current_umask", "new_file_mode", "apply_new_file_mode", "fsync_dir", "writing",
           "write_error", "os_hint", "make_dirs", "remove_created"]


def current_umask() -> int:
    """The process umask. Read from /proc where it is shown (Linux 4.7+): setting it to read it, the
    only portable way, leaves a moment in which another thread would create files with umask 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike[str]) -> int:
    """The permission bits ``open(path, "w")`` would leave ``path`` with."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~current_umask()


def apply_new_file_mode(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Give a temporary file (mkstemp: 0600) the mode ``target`` gets from ``open()``, before the rename."""
    os.chmod(tmp, new_file_mode(target))


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened like this everywhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], *, suffix: str = ".tmp") -> None:
    """Replace ``path`` with what ``write(tmp_name)`` writes, atomically (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        apply_new_file_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``Path.write_text``, atomically: a full disk leaves the previous file, never a truncated one."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def os_hint(exc: OSError, default: str = "") -> str:
    """What to do about a failed write, by errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or choose a folder on another disk)"
    if exc.errno == errno.EROFS:
        return "the file system is mounted read-only; choose a folder on a writable one"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "you lack permission to write there; choose another folder or fix its permissions"
    return default or "check that the folder exists, is writable and has free space"


def write_error(path: str | os.PathLike[str], exc: OSError, hint: str | None = None) -> IganError:
    reason = exc.strerror or str(exc)
    return IganError(f"could not write {path}: {reason}", hint=" ".join(h for h in (os_hint(exc), hint) if h))


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], hint: str | None = None) -> Iterator[None]:
    """An ``OSError`` inside the block is reported as ``could not write PATH: <reason>`` + hint."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc, hint) from exc


def make_dirs(path: str | os.PathLike[str], what: str = "output folder") -> list[Path]:
    """Create ``path`` (and missing parents); returns the folders created, outermost first."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is an existing file, not a folder",
                         hint="choose another path, or move the file away")
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {path} lies under {p}, which is a file", hint="choose another path")
    missing.reverse()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:  # raced with something creating a file there
        raise UsageError(f"cannot create {what} {path}: {exc.strerror}", hint="choose another path") from exc
    except OSError as exc:
        raise IganError(f"cannot create {what} {path}: {exc.strerror or exc}", hint=os_hint(exc)) from exc
    return missing


def remove_created(created: list[Path]) -> None:
    """Remove folders ``make_dirs`` created, innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return
