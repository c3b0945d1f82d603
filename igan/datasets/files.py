"""Where dataset files live, how they are checked, and how ``--download`` fetches them.

Every loader shares the same rules, so they live here once:

* ``default_data_dir(name)``: ``$IGAN_DATA_DIR/<name>`` when that variable is set, else the user
  cache (``$XDG_CACHE_HOME`` or ``~/.cache``) ``/igan/datasets/<name>``.
* ``download(url, dest, md5)``: streams into a temporary file beside ``dest``, checks the MD5,
  fsyncs and only then renames it into place, so an interrupted or corrupted download never
  leaves a file that a later run would mistake for the dataset.
* ``safe_extract(tar_path, dest, max_bytes=...)``: ``tarfile`` with the ``"data"`` filter, with every
  member checked before anything is written, so a hostile archive writes nothing at all.
* Decompression bombs (a 3 MB ``.gz`` can inflate to gigabytes): every format's decompressed size is
  known, so compressed data is read as a stream that stops past that size (``read_gzip``,
  ``capped_tar``) with an error naming the file, instead of filling memory or the disk.

Only the standard library is used (urllib, hashlib, tarfile): downloading four files does not
justify a dependency. Failures are raised as one-line ``IganError``s naming the file or URL.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import io
import logging
import lzma
import os
import tarfile
import zlib
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from igan.errors import IganError
from igan.fileio import fsync_dir

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
    "read_gzip",
    "capped_tar",
    "check_size",
    "TooLarge",
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
        # mkstemp creates the file private (0600); a dataset file gets the mode open() gives (umask).
        from igan.fileio import apply_new_file_mode

        apply_new_file_mode(tmp, dest)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
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


# bounded reading

class TooLarge(IganError):
    """Compressed data that inflates past what its format can hold."""


_NOT_OFFICIAL = "the file is not the official one (or is a decompression bomb); delete it and download it again"


def _too_large(path: Path | str, limit: int, what: str) -> TooLarge:
    return TooLarge(f"{path} inflates past the {limit:,} bytes of {what}; reading stopped there", hint=_NOT_OFFICIAL)


def check_size(path: Path, limit: int, what: str) -> None:
    """Refuse a file on disk larger than ``limit`` bytes before reading it into memory."""
    size = path.stat().st_size
    if size > limit:
        raise TooLarge(f"{path} is {size:,} bytes, more than {what} can be ({limit:,})", hint=_NOT_OFFICIAL)


def read_gzip(path: Path, limit: int, what: str) -> bytes:
    """The decompressed bytes of a ``.gz`` file, reading no more than ``limit`` + 1 bytes of output."""
    chunks, total = [], 0
    try:
        with gzip.open(path, "rb") as f:
            # in chunks: one read(limit + 1) would allocate the whole limit up front, even for a tiny file
            while total <= limit and (chunk := f.read(min(_CHUNK, limit + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise IganError(f"{path}: not a valid gzip file ({e})",
                        hint="the file is truncated or damaged; delete it and download it again") from None
    if total > limit:
        raise _too_large(path, limit, what)
    return b"".join(chunks)


class _Capped(io.RawIOBase):
    """A read-only stream that raises ``TooLarge`` once more than ``limit`` bytes were read from it."""

    def __init__(self, raw: io.BufferedIOBase, limit: int, path: Path, what: str) -> None:
        super().__init__()
        self.raw, self.limit, self.path, self.what, self.done = raw, limit, path, what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        # one byte more than allowed is enough to tell a file that is too large
        room = min(len(buffer), self.limit + 1 - self.done)
        if room <= 0:
            raise _too_large(self.path, self.limit, self.what)
        data = self.raw.read(room)
        buffer[:len(data)] = data
        self.done += len(data)
        if self.done > self.limit:
            raise _too_large(self.path, self.limit, self.what)
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _decompressed(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def capped_tar(path: Path, limit: int, what: str) -> tarfile.TarFile:
    """A tar archive (plain, gz, bz2 or xz) opened as a stream (``r|``: members in order, read once)
    that stops with ``TooLarge`` past ``limit`` bytes of decompressed tar data."""
    stream = io.BufferedReader(_Capped(_decompressed(path), limit, path, what), buffer_size=1 << 20)
    return tarfile.open(fileobj=stream, mode="r|")


# archives

MAX_EXTRACT_BYTES = 2 << 30  # safe_extract's default: callers pass their format's own size


def safe_extract(tar_path: Path, dest: Path, *, max_bytes: int = MAX_EXTRACT_BYTES) -> Path:
    """Extract ``tar_path`` into ``dest`` with tarfile's ``"data"`` filter; return ``dest``.

    The filter refuses absolute paths, ``..`` components, links pointing outside ``dest`` and
    device files. Every member is checked before the first one is written, so a refused archive
    leaves ``dest`` untouched. The archive is read as a stream of at most ``max_bytes`` decompressed
    bytes (twice: once to check, once to extract), so a decompression bomb stops early.
    """
    if not hasattr(tarfile, "data_filter"):  # added in 3.10.12 / 3.11.4
        raise IganError(f"cannot safely extract {tar_path}: this Python's tarfile has no 'data' filter",
                        hint="upgrade to Python 3.10.12, 3.11.4 or newer")
    dest = Path(dest)
    what = "an archive igan extracts"
    try:
        with capped_tar(tar_path, max_bytes, what) as archive:
            for member in archive:
                try:
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as e:
                    raise IganError(f"refusing to extract {tar_path}: member {member.name!r}: {e}",
                                    hint="the archive is damaged or malicious; delete it") from None
        dest.mkdir(parents=True, exist_ok=True)
        with capped_tar(tar_path, max_bytes, what) as archive:
            for member in archive:
                archive.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise IganError(f"cannot extract {tar_path}: {type(e).__name__}: {e}",
                        hint="the archive is truncated or not a tar file; delete it and download it again"
                        ) from None
    return dest
