"""What the kernel says of a process's signals (/proc/<pid>/status), so that tests wait on the event itself.

A test that signals a process at a chosen moment needs to know where the
process is: whether it has put its own handler in place yet, whether it
holds SIGTERM blocked (as unet2d.py does inside TensorFlow's cluster start),
whether a signal sent is still pending or has been taken. Linux only.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def _mask(pid: int, field: str, thread: int | None = None) -> int:
    """A signal mask of /proc: SigCgt (caught), SigBlk (blocked), ShdPnd (pending for the process)."""
    path = Path(f"/proc/{pid}/task/{thread}/status" if thread else f"/proc/{pid}/status")
    for line in path.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise KeyError(field)


def _has(mask: int, signum: int) -> bool:
    return bool(mask & (1 << (signum - 1)))


def catches(pid: int, signum: int) -> bool:
    """The process has its own handler for ``signum`` (unet2d.py's stop handler is in place)."""
    return _has(_mask(pid, "SigCgt"), signum)


def main_thread_blocks(pid: int, signum: int) -> bool:
    """The process's main thread holds ``signum`` blocked."""
    return _has(_mask(pid, "SigBlk", thread=pid), signum)


def main_thread_waits(pid: int) -> bool:
    """The process's main thread sleeps in the kernel (state S or D): inside a blocking call, not running
    Python between two of its instructions, where a Python-level signal handler could still run."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "SD"


def pending(pid: int, signum: int) -> bool:
    """``signum`` was sent to the process and no thread has taken it yet."""
    return _has(_mask(pid, "ShdPnd"), signum) or _has(_mask(pid, "SigPnd"), signum)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120,
               alive: Callable[[], bool] = lambda: True, hold: float = 0.0) -> None:
    """Poll ``condition`` until it holds (without a break for ``hold`` s, where a passing moment would not
    do); fail naming ``what`` after ``timeout`` s, or as soon as the process it watches (``alive``) is gone."""
    deadline = time.monotonic() + timeout
    since = None
    while True:
        if condition():
            since = since or time.monotonic()
            if time.monotonic() - since >= hold:
                return
        else:
            since = None
        assert alive(), f"the process ended before {what}"
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(0.01)


def send_and_see_taken(pid: int, signum: int, timeout: float = 10) -> None:
    """Send ``signum`` and return once the process has taken it: a second one sent after is not merged
    with it by the kernel, which keeps one pending signal of each kind."""
    os.kill(pid, signum)
    wait_until(lambda: not pending(pid, signum), f"{signal.Signals(signum).name} taken by process {pid}", timeout)
