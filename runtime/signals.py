"""Stopping training cleanly on SIGINT / SIGTERM.

The first signal only raises a flag: the loop finishes its step, writes a
checkpoint and exits with a message saying how to resume. A second signal
ends the process at once, even in the middle of a long step.

Python runs signal handlers in the main thread between bytecodes, so while
the main thread waits in a TensorFlow step (tens of seconds on a CPU) a
handler would run only after the step, and two signals in one step would
count as one. Python's C-level handler also writes each signal's number to
the "wakeup fd" immediately, whatever the main thread is doing; a small
thread reads it and acts on the second signal at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Raised by the loop after the checkpoint of an interrupted run is written."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (saving is off)"
        super().__init__(f"stopped by {name} after step {step}; wrote {where}; "
                         "run the same command with --resume_training to continue")
        self.exit_status = 128 + signum


class StopRequest:
    """Context manager that turns the first stop signal into a flag and the second into an exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def _record(self, signum: int, frame: FrameType | None = None) -> None:
        if self.signum is None:
            self.signum = signum

    def _watch(self, read_end: int) -> None:
        seen = 0
        while chunk := os.read(read_end, 64):
            for signum in chunk:
                if signum not in STOP_SIGNALS:
                    continue
                seen += 1
                if seen == 1:
                    self._record(signum)
                    continue
                name = signal.Signals(signum).name
                sys.stderr.write(f"unet2d.py: second {name}: exiting at once, without a checkpoint\n")
                sys.stderr.flush()
                os._exit(128 + signum)

    def __enter__(self) -> StopRequest:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for each in STOP_SIGNALS:
            self._previous_handlers[each] = signal.signal(each, self._record)
        self._watcher = threading.Thread(target=self._watch, args=(read_end,), name="stop-signals", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info) -> None:
        for each, handler in self._previous_handlers.items():
            signal.signal(each, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        read_end, write_end = self._pipe
        os.close(write_end)  # the watcher reads end-of-file and returns
        self._watcher.join(timeout=5)
        os.close(read_end)

    @property
    def requested(self) -> bool:
        return self.signum is not None
