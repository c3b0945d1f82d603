"""One run per folder: an exclusive lock on the run directory for the life of a run.

Two ``igan train --out SAME`` at once would interleave ``metrics.jsonl`` and leave ``config.json`` of
one beside the checkpoint of the other. A run therefore holds ``flock(LOCK_EX)`` on ``<run>/.igan.lock``
(which records its PID) from before anything is loaded until it ends; a second run on the folder is
refused at once with an error naming the holder's PID. The operating system releases the lock when the
process ends, however it ends (``kill -9`` included), so a crashed run never leaves the folder locked.

The lock file is removed when the run ends. Someone opening it just then could lock a file that is no
longer the folder's lock, so after locking, the file is checked to still be the one at the path, and
the attempt is repeated if not. A folder that the lock created is removed again if the run wrote
nothing into it (a refused command line leaves no empty run directory behind).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from igan.errors import IganError
from igan.fileio import make_dirs, os_hint, remove_created

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second run
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = ".igan.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "a process that has not written its PID yet"


class RunLock:
    """``with RunLock(run_dir):`` holds the folder's lock (creating the folder if needed); ``active=False``
    does nothing (the ranks of a distributed job other than rank 0, which write nothing)."""

    def __init__(self, run_dir: str | os.PathLike[str], active: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.active = active and fcntl is not None
        self.fd: int | None = None
        self.created: list[Path] = []

    def __enter__(self) -> "RunLock":
        if self.active:
            self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        self.created = make_dirs(self.run_dir, "run directory")
        try:
            while True:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                except OSError as exc:
                    raise IganError(f"cannot write to the run directory {self.run_dir}: {exc.strerror}",
                                    hint=os_hint(exc)) from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise IganError(f"{self.run_dir} is in use by another igan run ({_holder(self.path)})",
                                        hint="wait for that run to end, or choose another --out; one run at a time "
                                             "writes a run directory") from None
                    raise IganError(f"cannot lock the run directory {self.run_dir}: {exc.strerror}",
                                    hint="this file system does not support locks; choose a run directory on a "
                                         "local disk") from exc
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # the previous holder removed it between our open and our lock: again
            self.fd = fd
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            except OSError:  # a full disk: the PID is only for the message of a second run
                pass
        except BaseException:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            remove_created(self.created)
            raise

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the lock
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        remove_created(self.created)  # only the folders it made, and only if the run left them empty
