"""``--download`` and archive extraction against a local HTTP server: nothing leaves 127.0.0.1.

A download must be all or nothing: a good file appears atomically under its final name, while a
wrong checksum, an HTTP error or a connection dropped mid-file leaves neither the final file nor
the temporary one behind.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from igan.datasets import cifar10, mnist
from igan.datasets.files import download, download_files, safe_extract
from igan.errors import IganError

GOOD = bytes(range(256)) * 64  # 16 KiB, several reads of the server's buffer


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/dropped.bin":
            # Announce the whole file, send a quarter of it, then hang up.
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 4])
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # A proxy configured in the environment must not see (or break) requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    Handler.files = {"/good.bin": GOOD}
    Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_good_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "good.bin"
    assert download(server + "good.bin", dest, md5(GOOD), timeout=5) == dest
    assert dest.read_bytes() == GOOD
    assert [p.name for p in dest.parent.iterdir()] == ["good.bin"]  # no temporary file left
    assert dest.stat().st_mode & 0o777 == 0o644 or os.name != "posix"


def test_download_wrong_checksum_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(IganError, match="MD5 .* does not match the expected 0{32}") as e:
        download(server + "good.bin", tmp_path / "good.bin", "0" * 32, timeout=5)
    assert server + "good.bin" in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_download_dropped_connection_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(IganError, match="dropped.bin") as e:
        download(server + "dropped.bin", tmp_path / "dropped.bin", md5(GOOD), timeout=5)
    assert "\n" not in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_download_http_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(IganError, match="HTTP 404"):
        download(server + "absent.bin", tmp_path / "absent.bin", md5(GOOD), timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_download_failure_keeps_existing_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "good.bin"
    dest.write_bytes(b"previous")
    with pytest.raises(IganError):
        download(server + "good.bin", dest, "0" * 32, timeout=5)
    assert dest.read_bytes() == b"previous"  # the rename never happened


def test_download_files_skips_present_ones(server: str, tmp_path: Path) -> None:
    Handler.files["/other.bin"] = b"other"
    (tmp_path / "good.bin").write_bytes(b"already here")
    fetched = download_files(server.rstrip("/"), {"good.bin": md5(GOOD), "other.bin": md5(b"other")},
                             tmp_path, timeout=5)
    assert fetched == [tmp_path / "other.bin"] and Handler.requests == ["/other.bin"]
    assert (tmp_path / "good.bin").read_bytes() == b"already here"


def idx_gz(array: np.ndarray, magic: int) -> bytes:
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    return gzip.compress(raw)


def test_load_mnist_downloads(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([4, 0, 9], np.uint8)
    for name in mnist.MNIST_FILES:
        body = idx_gz(images, 2051) if "images" in name else idx_gz(labels, 2049)
        Handler.files[f"/mnist/{name}.gz"] = body
        # Stand-in checksums: the synthetic files play the official ones.
        monkeypatch.setitem(mnist.MNIST_GZ_MD5, name, md5(body))
    data_dir = tmp_path / "mnist"
    ds = mnist.load_mnist(data_dir, True, base_url=server + "mnist/")
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.y_test.tolist() == [4, 0, 9]
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(f"{n}.gz" for n in mnist.MNIST_FILES)
    # A second load finds the files and downloads nothing.
    count = len(Handler.requests)
    mnist.load_mnist(data_dir, True, base_url=server + "mnist/")
    assert len(Handler.requests) == count


def test_load_cifar10_download_failure(server: str, tmp_path: Path) -> None:
    with pytest.raises(IganError, match="HTTP 404"):
        cifar10.load_cifar10(tmp_path, True, url=server + "cifar-10-python.tar.gz")
    assert list(tmp_path.iterdir()) == []


# safe_extract

def make_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            data = b"payload" if info.isfile() else b""
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def symlink_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def test_safe_extract_good_archive(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "ok.tar.gz", [file_member("folder/a.bin"), file_member("b.bin")])
    dest = safe_extract(archive, tmp_path / "out")
    assert (dest / "folder" / "a.bin").read_bytes() == b"payload"
    assert (dest / "b.bin").read_bytes() == b"payload"


@pytest.mark.parametrize("members", [
    [file_member("fine.bin"), file_member("../evil")],
    [symlink_member("link", "../../evil")],
], ids=["dotdot", "symlink"])
def test_safe_extract_refuses_escapes(tmp_path: Path, members: list[tarfile.TarInfo]) -> None:
    archive = make_tar(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "out"
    with pytest.raises(IganError, match="refusing to extract") as e:
        safe_extract(archive, dest)
    assert str(archive) in e.value.message
    assert not (tmp_path / "evil").exists()
    assert not dest.exists()  # checked before anything was written, even "fine.bin"


def test_safe_extract_strips_absolute_paths(tmp_path: Path) -> None:
    # The "data" filter turns /x/y into x/y inside dest rather than refusing it.
    name = f"{tmp_path}/absolute-evil"
    archive = make_tar(tmp_path / "abs.tar.gz", [file_member(name)])
    dest = safe_extract(archive, tmp_path / "out")
    assert (dest / name.lstrip("/")).read_bytes() == b"payload"
    assert not Path(name).exists()


def test_safe_extract_damaged_archive(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "ok.tar.gz", [file_member("a.bin")])
    archive.write_bytes(archive.read_bytes()[:20])
    with pytest.raises(IganError, match="cannot extract") as e:
        safe_extract(archive, tmp_path / "out")
    assert str(archive) in e.value.message


def test_safe_extract_stops_at_its_limit(tmp_path: Path) -> None:
    # a member of 8 MiB of zeros (a few KB compressed) against a limit of 1 MiB: nothing is written
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 8 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 64 << 10
    dest = tmp_path / "out"
    with pytest.raises(IganError, match="inflates past the 1,048,576 bytes") as e:
        safe_extract(archive, dest, max_bytes=1 << 20)
    assert str(archive) in e.value.message
    assert not dest.exists()
    assert (safe_extract(archive, dest, max_bytes=16 << 20) / "zeros.bin").stat().st_size == 8 << 20
