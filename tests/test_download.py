"""download_dataset.py against a real HTTP server on 127.0.0.1 serving the ISBI files.

The server's path prefix picks its behaviour: /good/ serves files with byte
ranges, /cut/ closes the connection half-way through the first response for
each file, /corrupt/ serves a copy with one pixel changed, anything else 404.
Where the real files are not on the machine, generated stacks of their shape
stand in, their pixel hashes in place of the published ones, so that every
path of the downloader runs everywhere.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile

import download_dataset
from data_loading.isbi import PIXEL_SHA256, SHAPE, pixel_sha256, verification_problem

NAMES = tuple(PIXEL_SHA256)


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    pixel_offset: dict[str, int] = {}
    log: list[tuple[str, str | None]] = []
    cut_done: set[str] = set()

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        _, mode, name = self.path.split("/", 2)
        range_header = self.headers.get("Range")
        self.log.append((self.path, range_header))
        if mode not in ("good", "cut", "corrupt") or name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        if mode == "corrupt":
            at = self.pixel_offset[name]  # first pixel of the first slice
            body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
        start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "cut" and name not in self.cut_done:
            self.cut_done.add(name)
            self.wfile.write(body[start:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture(scope="module")
def published(isbi_dir, tmp_path_factory):
    """The three files the downloader accepts: the real ones where they are here, else generated stacks of the
    same shape whose pixel hashes stand in for the published ones while this module runs."""
    if all(verification_problem(isbi_dir / name, name) is None for name in NAMES):
        yield isbi_dir
        return
    folder = tmp_path_factory.mktemp("published")
    generator = np.random.default_rng(2012)
    with pytest.MonkeyPatch.context() as patch:
        for name in NAMES:
            stack = generator.integers(0, 256, SHAPE, dtype=np.uint8)
            tifffile.imwrite(folder / name, stack)
            patch.setitem(PIXEL_SHA256, name, pixel_sha256(stack))
        yield folder


@pytest.fixture(scope="module")
def server(published):
    _Handler.files = {name: (published / name).read_bytes() for name in NAMES}
    for name in NAMES:
        with tifffile.TiffFile(published / name) as tif:
            _Handler.pixel_offset[name] = tif.pages[0].dataoffsets[0]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def fresh_log():
    _Handler.log.clear()
    _Handler.cut_done.clear()


def run(data_dir: Path, *mirrors: str) -> int:
    argv = ["--data_dir", str(data_dir), "--no_challenge_site", "--timeout", "5", "--retries", "2",
            "--backoff", "0.05"]
    for mirror in mirrors:
        argv += ["--mirror", mirror]
    return download_dataset.main(argv)


def assert_complete(folder: Path) -> None:
    for name in NAMES:
        assert verification_problem(folder / name, name) is None
    assert not list(folder.glob(".*.part"))


def test_clean_download(server, tmp_path, capsys):
    assert run(tmp_path, f"{server}/good") == 0
    assert_complete(tmp_path)
    assert "verified" in capsys.readouterr().err


def test_cut_connection_resumes_with_a_byte_range(server, tmp_path):
    assert run(tmp_path, f"{server}/cut") == 0
    assert_complete(tmp_path)
    for name in NAMES:
        ranges = [r for path, r in _Handler.log if path.endswith(name) and r]
        assert len(ranges) == 1, ranges  # one resumed request, from where the cut left the file
        start = int(ranges[0].removeprefix("bytes=").rstrip("-"))
        assert 0 < start <= len(_Handler.files[name]) // 2


def test_corrupted_file_is_rejected_then_next_mirror_used(server, tmp_path, capsys):
    assert run(tmp_path, f"{server}/corrupt") == 1
    assert not any(tmp_path.iterdir()), "nothing may be left behind"
    err = capsys.readouterr().err
    assert "pixel SHA-256 does not match" in err and "place the files by hand" in err
    assert run(tmp_path, f"{server}/corrupt", f"{server}/good") == 0
    assert_complete(tmp_path)


def test_404_on_first_mirror_then_second(server, tmp_path, capsys):
    assert run(tmp_path, f"{server}/missing", f"{server}/good") == 0
    assert_complete(tmp_path)
    assert "HTTP 404" in capsys.readouterr().err


def test_unreachable_server(tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert run(tmp_path, f"http://127.0.0.1:{port}") == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "gave up after 3 attempts" in err
    assert not any(tmp_path.iterdir())


def test_present_files_are_not_fetched_again(server, tmp_path):
    assert run(tmp_path, f"{server}/good") == 0
    _Handler.log.clear()
    assert run(tmp_path, f"{server}/good") == 0
    assert _Handler.log == []


def test_invalid_file_of_the_user_is_kept(server, tmp_path, capsys):
    (tmp_path / "train-volume.tif").write_bytes(b"mine")
    assert run(tmp_path, f"{server}/good") == 1
    assert (tmp_path / "train-volume.tif").read_bytes() == b"mine"
    assert "move it away" in capsys.readouterr().err


def test_folder_and_file_url_mirrors(published, tmp_path):
    assert run(tmp_path / "a", str(published)) == 0
    assert_complete(tmp_path / "a")
    assert run(tmp_path / "b", published.resolve().as_uri()) == 0
    assert_complete(tmp_path / "b")


def test_bad_mirror_spec(tmp_path, capsys):
    assert run(tmp_path, "ftp://example.invalid/x") == 2
    assert "must be an http(s)://" in capsys.readouterr().err


@pytest.mark.parametrize("synthetic", [False, True], ids=["download", "synthetic"])
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_data_dir_that_cannot_be_a_folder_is_one_line_and_status_2(tmp_path, capsys, synthetic, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    data_dir = blocker if where == "a file" else blocker / "data"
    flags = ["--synthetic", "--slices", "1", "--size", "32"] if synthetic else ["--no_challenge_site",
                                                                                "--mirror", str(tmp_path)]
    assert download_dataset.main([*flags, "--data_dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("download_dataset.py: error: ") and "--data_dir" in err[0], err
    assert blocker.read_text() == "mine"
