"""One training run per model dir, for the whole life of the run.

Two runs writing one model dir (a second terminal, a scheduler retrying a job
that is still alive) would clear and overwrite each other's checkpoints. A
run takes a POSIX record lock on ``<model_dir>/.unet2d.lock``: exclusive to
train, shared to read (evaluate, predict, export), so readers run together
but never beside a training run. The kernel drops the lock when its holder
dies, even by SIGKILL or a reboot, so a lock is never stale in itself; what a
killed holder leaves is its record in the file, which the next run reads to
warn that it takes over. Record locks (not ``flock``) also hold across hosts
on NFS and report the holder's PID (``F_GETLK``) for the refusal message.

No TensorFlow here: the lock is taken before any heavy work starts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

from common.errors import UserInputError

LOCK_FILE = ".unet2d.lock"
# struct flock on Linux (x86_64 and aarch64): type, whence, start, len, pid, padding to 32 bytes.
_FLOCK = "hhqqi4x"


def _holder_pid(fd: int, exclusive: bool) -> int | None:
    """The PID of a process whose lock stands in the way of ours (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    wanted = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(_FLOCK, wanted, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return None
    kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def _read_record(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict) -> str:
    parts = [record.get("mode", "a unet2d.py run")]
    if record.get("host"):
        parts.append(f"on {record['host']}")
    if record.get("since"):
        parts.append(f"since {record['since']}")
    return " ".join(parts)


class ModelDirLock:
    """Held from ``acquire`` until ``release`` or the end of the process."""

    def __init__(self, model_dir: Path, exclusive: bool, mode: str) -> None:
        self.path = Path(model_dir) / LOCK_FILE
        self.exclusive = exclusive
        self.mode = mode
        self.taken_over: str | None = None  # what a killed earlier holder left, for the log
        self._fd: int | None = None

    def acquire(self) -> ModelDirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if not self.exclusive:
                return self  # a folder we cannot write is one no training run of ours writes either
            raise UserInputError(f"cannot create the lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.lockf(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            pid = _holder_pid(fd, self.exclusive)
            record = _read_record(fd)
            os.close(fd)
            who = f"process {pid}" if pid else "another unet2d.py run"
            if pid and record.get("pid") == pid:
                who += f" ({_describe(record)})"
            elif self.exclusive:
                who += " (reading it: evaluate, predict or export)"
            raise UserInputError(f"--model_dir {self.path.parent} is in use by {who}; wait for it to end, "
                                 "or choose another --model_dir") from None
        self._fd = fd
        record = _read_record(fd)
        if record.get("pid") not in (None, os.getpid()):
            self.taken_over = (f"took over the lock on {self.path.parent} left by process {record['pid']} "
                               f"({_describe(record)}), which is no longer running")
        if self.exclusive:
            self._write({"pid": os.getpid(), "host": socket.gethostname(), "mode": self.mode,
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        elif record:
            self._write(None)  # the killed holder's record, now stale; no exclusive holder can be there
        return self

    def _write(self, record: dict | None) -> None:
        os.ftruncate(self._fd, 0)
        if record is not None:
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, (json.dumps(record) + "\n").encode())

    def release(self) -> None:
        """Clear our record (a clean end leaves nothing to take over) and drop the lock."""
        if self._fd is None:
            return
        if self.exclusive:
            self._write(None)
        os.close(self._fd)  # closing drops the record lock
        self._fd = None

    def __enter__(self) -> ModelDirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
