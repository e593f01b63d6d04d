"""Fetching the ISBI 2012 files from the challenge site or mirrors, verified and atomic.

Every file is written under a hidden ``.<name>.part`` name, resumed with HTTP
byte ranges after a cut connection, checked against the published pixel
hashes and only then renamed to its final name. A source that answers 404 or
delivers wrong pixels is skipped for the next one; transient errors are
retried with exponential back-off.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from data_loading.isbi import PIXEL_SHA256, verification_problem

CHUNK = 1 << 16


class FetchError(Exception):
    """A source could not deliver a file; ``transient`` errors are worth retrying."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Progress:
    """A one-line progress bar per file on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str, stream=None) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self.done, self.total = 0, None
        self._last_draw = 0.0
        self._tty = self.stream.isatty()

    def start(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._tty and now - self._last_draw > 0.1:
            self._last_draw = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def _line(self) -> str:
        megabytes = f"{self.done / 1e6:6.1f} MB"
        if not self.total:
            return f"{self.label:40s} {megabytes}"
        fraction = min(self.done / self.total, 1.0)
        bar = "#" * int(30 * fraction)
        return f"{self.label:40s} [{bar:30s}] {100 * fraction:5.1f}% {megabytes} of {self.total / 1e6:.1f} MB"

    def finish(self, outcome: str) -> None:
        self.stream.write(("\r" if self._tty else "") + f"{self._line()}  {outcome}\n")
        self.stream.flush()


@dataclass
class HttpSource:
    base_url: str
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0

    @property
    def label(self) -> str:
        return self.base_url

    def fetch(self, name: str, part: Path, progress: Progress) -> None:
        url = self.base_url.rstrip("/") + "/" + name
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                self._fetch_once(url, part, progress)
                return
            except FetchError as error:
                if not error.transient:
                    raise
                last_error = str(error)
            except requests.RequestException as error:
                last_error = f"{type(error).__name__}: {error}"
        raise FetchError(f"gave up after {self.retries + 1} attempts: {last_error}", transient=True)

    def _fetch_once(self, url: str, part: Path, progress: Progress) -> None:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            status = response.status_code
            if status == 416 and offset:  # we already hold every byte; verification decides
                return
            if status in (408, 429) or status >= 500:
                raise FetchError(f"HTTP {status}", transient=True)
            if status >= 400:
                raise FetchError(f"HTTP {status} {response.reason}", transient=False)
            resumed = status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            if not resumed:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            progress.start(offset, total)
            with open(part, "ab" if resumed else "wb") as out:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    progress.advance(len(chunk))
        size = part.stat().st_size
        if total is not None and size < total:
            raise FetchError(f"connection cut at {size} of {total} bytes", transient=True)


@dataclass
class FolderSource:
    """A local folder (or file:// URL) holding copies placed there by hand."""

    folder: Path

    @property
    def label(self) -> str:
        return str(self.folder)

    def fetch(self, name: str, part: Path, progress: Progress) -> None:
        source = self.folder / name
        if not source.is_file():
            raise FetchError(f"no file {source}", transient=False)
        progress.start(0, source.stat().st_size)
        try:
            shutil.copyfile(source, part)
        except OSError as error:
            raise FetchError(f"cannot copy {source}: {error.strerror}", transient=False) from None
        progress.advance(source.stat().st_size)


def make_source(spec: str, timeout: float, retries: int, backoff: float) -> HttpSource | FolderSource:
    parsed = urlparse(spec)
    if parsed.scheme in ("http", "https"):
        return HttpSource(spec, timeout, retries, backoff)
    if parsed.scheme == "file":
        return FolderSource(Path(unquote(parsed.path)))
    if parsed.scheme == "" and Path(spec).is_dir():
        return FolderSource(Path(spec))
    raise ValueError(f"a mirror must be an http(s):// or file:// URL or an existing folder: {spec}")


@dataclass
class Report:
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)  # file -> what each source said


def fetch_all(data_dir: Path, sources: list, stream=None) -> Report:
    """Bring every ISBI file into ``data_dir``; half-fetched files never keep their final name."""
    stream = stream or sys.stderr
    data_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    for name in PIXEL_SHA256:
        final = data_dir / name
        if final.exists():
            problem = verification_problem(final, name)
            if problem is None:
                report.present.append(name)
                stream.write(f"{name}: already present and verified\n")
                continue
            # Never overwrite or delete what the user put there.
            report.failed[name] = [f"{final} exists but fails verification: {problem}; move it away and rerun"]
            continue
        attempts = []
        part = data_dir / f".{name}.part"
        for source in sources:
            part.unlink(missing_ok=True)  # bytes from another source must not be resumed
            progress = Progress(name, stream)
            try:
                source.fetch(name, part, progress)
            except FetchError as error:
                progress.finish(f"failed: {error}")
                attempts.append(f"{source.label}: {error}")
                continue
            problem = verification_problem(part, name)
            if problem is not None:
                progress.finish("rejected")
                attempts.append(f"{source.label}: {problem}")
                continue
            os.replace(part, final)
            progress.finish("verified")
            report.fetched.append(name)
            break
        else:
            report.failed[name] = attempts or ["no source to fetch from"]
        part.unlink(missing_ok=True)
    return report
