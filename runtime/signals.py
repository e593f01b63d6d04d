"""Stopping training cleanly on SIGINT / SIGTERM.

The first signal only raises a flag: the loop finishes its step, writes a
checkpoint and exits with a message saying how to resume. The handlers are
then reset to the default, so a second signal ends the process at once.
"""

from __future__ import annotations

import signal
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
    """Context manager that turns the first stop signal into a flag."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for each in STOP_SIGNALS:  # a second signal: the default action, at once
            signal.signal(each, signal.SIG_DFL)

    def __enter__(self) -> StopRequest:
        for each in STOP_SIGNALS:
            self._previous[each] = signal.signal(each, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for each, handler in self._previous.items():
            signal.signal(each, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None
