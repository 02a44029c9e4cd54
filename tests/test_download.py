"""Downloader against a real HTTP server on 127.0.0.1 (with Range support), serving archives built here."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from prn_lightning.data.sources.btad import load_btad
from prn_lightning.data.sources.download import download_dataset, download_file, extract_archive
from prn_lightning.errors import DatasetError


class _Server:
    """Serves `files` (path -> bytes); answers `Range: bytes=N-` with 206 unless `ranges` is False."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if server.ranges and header and header.startswith("bytes="):
                    start = int(header[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _png(ext: str = ".png", value: int = 128) -> bytes:
    ok, data = cv2.imencode(ext, np.full((8, 8), value, np.uint8))
    assert ok
    return data.tobytes()


def _btad_zip() -> bytes:
    """A tiny BTAD archive: BTech_Dataset_transformed/{01,02,03}, with 01 complete."""
    top = "BTech_Dataset_transformed"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for i in range(3):
            bundle.writestr(f"{top}/01/train/ok/{i:04d}.bmp", _png(".bmp"))
        bundle.writestr(f"{top}/01/test/ok/0000.bmp", _png(".bmp"))
        bundle.writestr(f"{top}/01/test/ko/0001.bmp", _png(".bmp", 200))
        bundle.writestr(f"{top}/01/ground_truth/ko/0001.png", _png(".png", 255))
        for category in ("02", "03"):
            bundle.writestr(f"{top}/{category}/train/ok/0000.png", _png())
    return buffer.getvalue()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_checksum_and_extract(server, tmp_path):
    archive = _btad_zip()
    server.files["/btad.zip"] = archive
    root = download_dataset("btad", tmp_path, url=server.url("/btad.zip"), sha256=hashlib.sha256(archive).hexdigest())
    assert root == tmp_path / "btad"
    assert (root / "btad.zip").read_bytes() == archive
    assert not list(root.glob("*.part")) and not list(root.glob(".extract-*"))
    splits = load_btad(root, "01")
    assert len(splits.train) == 3 and [s.defect_type for s in splits.test] == ["good", "ko"]
    # Second call: already there, nothing fetched.
    server.requests.clear()
    assert download_dataset("btad", tmp_path, url=server.url("/btad.zip")) == root
    assert server.requests == []


def test_unknown_checksum_is_recorded(server, tmp_path):
    archive = _btad_zip()
    server.files["/btad.zip"] = archive
    dest = download_file(server.url("/btad.zip"), tmp_path / "btad.zip", sha256=None)
    recorded = (dest.parent / "btad.zip.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(archive).hexdigest()


def test_wrong_checksum_is_rejected_and_kept_aside(server, tmp_path):
    server.files["/btad.zip"] = _btad_zip()
    url = server.url("/btad.zip")
    with pytest.raises(DatasetError) as err:
        download_dataset("btad", tmp_path, url=url, sha256="0" * 64)
    message = str(err.value)
    assert url in message and "0" * 64 in message and hashlib.sha256(_btad_zip()).hexdigest() in message
    assert (tmp_path / "btad" / "btad.zip.rejected").is_file()
    assert not (tmp_path / "btad" / "btad.zip").exists() and not (tmp_path / "btad" / "01").exists()


def test_resume_partial_download(server, tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB
    server.files["/big.bin"] = payload
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(payload[:300_000])
    download_file(server.url("/big.bin"), dest, sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert server.requests == [("/big.bin", "bytes=300000-")]


def test_restart_when_server_ignores_range(server, tmp_path):
    payload = b"abcdefgh" * 10_000
    server.files["/f.bin"] = payload
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage-that-must-not-survive")
    download_file(server.url("/f.bin"), tmp_path / "f.bin", sha256=hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_unreachable_url_names_url_and_manual_route(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/btad.zip"
    with pytest.raises(DatasetError) as err:
        download_dataset("btad", tmp_path, url=url)
    message = str(err.value)
    assert url in message and "by hand" in message and str(tmp_path / "btad" / "btad.zip") in message
    assert "run the same command again" in message


def test_archive_placed_by_hand_is_used_offline(tmp_path):
    (tmp_path / "btad").mkdir()
    archive = _btad_zip()
    (tmp_path / "btad" / "btad.zip").write_bytes(archive)
    url = f"http://127.0.0.1:{_closed_port()}/btad.zip"
    root = download_dataset("btad", tmp_path, url=url, sha256=hashlib.sha256(archive).hexdigest())
    assert len(load_btad(root, "01").train) == 3


def test_tar_formats_extract(server, tmp_path):
    for mode, suffix in (("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz")):
        archive = tmp_path / f"dtd{suffix}"
        archive.write_bytes(_tar([_file("dtd/images/banded/a.jpg", b"jpg"), _file("dtd/labels/x.txt")], mode))
        target = extract_archive(archive, tmp_path / f"out{suffix}", ("images",))
        assert (target / "images" / "banded" / "a.jpg").read_bytes() == b"jpg"
    served = _tar([_file("dtd/images/banded/a.jpg", b"jpg")])
    server.files["/dtd.tar.gz"] = served
    root = download_dataset("dtd", tmp_path / "data", url=server.url("/dtd.tar.gz"),
                            sha256=hashlib.sha256(served).hexdigest())
    assert (root / "images" / "banded" / "a.jpg").is_file()


@pytest.mark.parametrize("members", [
    [_file("ok/a.txt"), _file("../evil.txt")],
    [_file("/tmp/prn-absolute-evil.txt")],
    [_file("ok/a.txt"), _link("ok/link", "../../evil.txt")],
    [_link("abs-link", "/etc/passwd")],
    [_file("ok/a.txt"), _link("ok/hard", "../evil.txt", tarfile.LNKTYPE)],
], ids=["dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out"])
def test_unsafe_tar_rejected(tmp_path, members):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar(members))
    target = tmp_path / "target"
    with pytest.raises(DatasetError, match="unsafe archive"):
        extract_archive(archive, target, ("ok",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "target"]
    assert list(target.iterdir()) == []
    assert not Path("/tmp/prn-absolute-evil.txt").exists()


def test_device_file_rejected(tmp_path):
    device = tarfile.TarInfo("ok/dev")
    device.type = tarfile.CHRTYPE
    archive = tmp_path / "dev.tar"
    archive.write_bytes(_tar([_file("ok/a.txt"), (device, None)], "w"))
    with pytest.raises(DatasetError, match="device or special file"):
        extract_archive(archive, tmp_path / "target", ("ok",))
    assert list((tmp_path / "target").iterdir()) == []


@pytest.mark.parametrize("name", ["../evil.txt", "/abs-evil.txt", "ok/../../evil.txt"])
def test_unsafe_zip_rejected(tmp_path, name):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("ok/a.txt", b"fine")
        bundle.writestr(zipfile.ZipInfo(name), b"evil")
    with pytest.raises(DatasetError, match="unsafe archive"):
        extract_archive(archive, tmp_path / "target", ("ok",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip", "target"]
    assert list((tmp_path / "target").iterdir()) == []


def test_archive_with_wrong_layout_is_an_error(tmp_path):
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("something/else.txt", b"x")
    with pytest.raises(DatasetError, match="expected layout.*something"):
        extract_archive(archive, tmp_path / "target", ("01", "02"))
    assert list((tmp_path / "target").iterdir()) == []


def test_dataset_without_url_explains_manual_route(tmp_path):
    with pytest.raises(DatasetError, match="no download URL is known for dagm.*data.url.*by hand"):
        download_dataset("dagm", tmp_path)
