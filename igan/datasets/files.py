"""Where dataset files live, how they are checked, and how ``--download`` fetches them.

Every loader shares the same rules, so they live here once:

* ``default_data_dir(name)``: ``$IGAN_DATA_DIR/<name>`` when that variable is set, else the user
  cache (``$XDG_CACHE_HOME`` or ``~/.cache``) ``/igan/datasets/<name>``.
* ``download(url, dest, md5)``: streams into a temporary file beside ``dest``, checks the MD5,
  fsyncs and only then renames it into place, so an interrupted or corrupted download never
  leaves a file that a later run would mistake for the dataset.
* ``safe_extract(tar_path, dest)``: ``tarfile`` with the ``"data"`` filter, with every member
  checked before anything is written, so a hostile archive writes nothing at all.

Only the standard library is used (urllib, hashlib, tarfile): downloading four files does not
justify a dependency. Failures are raised as one-line ``IganError``s naming the file or URL.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from igan.errors import IganError

__all__ = [
    "DATA_DIR_ENV",
    "DOWNLOAD_TIMEOUT_S",
    "default_data_dir",
    "resolve_data_dir",
    "md5_bytes",
    "md5_file",
    "check_md5",
    "checksum_error",
    "missing_files_error",
    "download",
    "download_files",
    "safe_extract",
]

DATA_DIR_ENV = "IGAN_DATA_DIR"
# Seconds without any bytes before a download is abandoned (urllib's socket timeout, per read).
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


# locations

def default_data_dir(name: str) -> Path:
    """The folder a dataset is read from (and downloaded to) when no ``data_dir`` is given."""
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return Path(root).expanduser() / name
    # The XDG spec says a relative $XDG_CACHE_HOME is invalid and must be ignored.
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "igan" / "datasets" / name


def resolve_data_dir(name: str, data_dir: Path | str | None) -> Path:
    """``data_dir`` as a ``Path`` (``~`` expanded), or the default folder of ``name``."""
    return default_data_dir(name) if data_dir is None else Path(data_dir).expanduser()


# checksums

def md5_bytes(data: bytes) -> str:
    # usedforsecurity=False keeps this working on FIPS builds: MD5 here detects corruption, the
    # official lists only publish MD5s.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    """MD5 of a file, read in chunks so a 180 MB .mat file is not held twice."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, expected: str, dataset: str, url: str | None = None) -> None:
    """Raise an ``IganError`` naming ``path`` when its MD5 is not ``expected``."""
    actual = md5_file(path)
    if actual != expected:
        raise checksum_error(path, actual, expected, dataset, url)


def checksum_error(path: Path, actual: str, expected: str, dataset: str,
                   url: str | None = None) -> IganError:
    where = f" from {url}" if url else ""
    return IganError(
        f"{path}: MD5 {actual} does not match the official {dataset} file ({expected})",
        hint=f"the file is corrupt or not the official release; delete it and fetch it again{where} "
             f"(or rerun with --download)")


# messages

def missing_files_error(dataset: str, folder: Path, expected: Sequence[str], source: str) -> IganError:
    """The error for a dataset that is not on disk: what was expected, where, and how to get it."""
    return IganError(
        f"{dataset} not found in {folder}: expected {', '.join(expected)}",
        hint=f"download them from {source} into {folder}, or rerun with --download to fetch them")


# downloading

def download(url: str, dest: Path, md5: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest`` atomically, checking its MD5; return ``dest``.

    The bytes go to a hidden temporary file in ``dest``'s folder (same file system, so the final
    ``os.replace`` is atomic); the temporary file is removed on any failure, including Ctrl-C.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise IganError(f"cannot write to {dest.parent}: {e.strerror}",
                        hint=f"choose a writable data folder, or set {DATA_DIR_ENV}") from None
    tmp = Path(tmp_name)
    log.info("downloading %s -> %s", url, dest)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
            # http.client does not always raise when the server closes early, so compare the
            # byte count with the announced length ourselves for a clearer message than the MD5's.
            if length is not None and length.isdigit() and received != int(length):
                raise IganError(f"download of {url} was cut off after {received} of {length} bytes",
                                hint="the connection dropped; rerun to try again")
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != md5:
            raise IganError(f"download of {url}: MD5 {actual} does not match the expected {md5}",
                            hint="the server sent a different or damaged file; rerun later or fetch "
                                 f"it by hand into {dest.parent}")
        # mkstemp creates the file private (0600); a dataset file is readable like any download.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return dest
    except IganError:
        raise
    except urllib.error.HTTPError as e:
        raise IganError(f"download of {url} failed: HTTP {e.code} {e.reason}",
                        hint=f"fetch the file by hand into {dest.parent}") from None
    except urllib.error.URLError as e:
        raise IganError(f"download of {url} failed: {e.reason}",
                        hint=f"check the network connection, or fetch the file by hand into "
                             f"{dest.parent}") from None
    except (http.client.HTTPException, OSError) as e:  # IncompleteRead, reset, timeout, disk full
        raise IganError(f"download of {url} failed: {type(e).__name__}: {e}",
                        hint="the connection dropped or the disk is full; rerun to try again") from None
    finally:
        # On success the file was renamed away; on any failure this removes the partial bytes.
        tmp.unlink(missing_ok=True)


def download_files(base_url: str, files: Mapping[str, str], dest_dir: Path, *,
                   timeout: float = DOWNLOAD_TIMEOUT_S) -> list[Path]:
    """Download each ``name -> md5`` in ``files`` from ``base_url`` that ``dest_dir`` lacks."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    fetched = []
    for name, md5 in files.items():
        dest = Path(dest_dir) / name
        if not dest.exists():
            fetched.append(download(base + name, dest, md5, timeout=timeout))
    return fetched


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
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


# archives

def safe_extract(tar_path: Path, dest: Path) -> Path:
    """Extract ``tar_path`` into ``dest`` with tarfile's ``"data"`` filter; return ``dest``.

    The filter refuses absolute paths, ``..`` components, links pointing outside ``dest`` and
    device files. Every member is checked before the first one is written, so a refused archive
    leaves ``dest`` untouched.
    """
    if not hasattr(tarfile, "data_filter"):  # added in 3.10.12 / 3.11.4
        raise IganError(f"cannot safely extract {tar_path}: this Python's tarfile has no 'data' filter",
                        hint="upgrade to Python 3.10.12, 3.11.4 or newer")
    dest = Path(dest)
    try:
        with tarfile.open(tar_path) as archive:
            members = archive.getmembers()
            for member in members:
                try:
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as e:
                    raise IganError(f"refusing to extract {tar_path}: member {member.name!r}: {e}",
                                    hint="the archive is damaged or malicious; delete it") from None
            dest.mkdir(parents=True, exist_ok=True)
            archive.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise IganError(f"cannot extract {tar_path}: {type(e).__name__}: {e}",
                        hint="the archive is truncated or not a tar file; delete it and download it again"
                        ) from None
    return dest
