"""A one-line live progress bar for training on a terminal; silent when output goes to a file."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

WIDTH = 24  # characters of the bar itself


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressBar:
    """Step, loss, images/s and time left, redrawn in place after every step.

    Log lines still print in full: the logger clears the bar before each line
    and the bar is redrawn below it.
    """

    def __init__(self, total_steps: int, start_step: int, images_per_step: int, stream: TextIO) -> None:
        self.total, self.images_per_step, self.stream = total_steps, images_per_step, stream
        self.step, self.loss = start_step, float("nan")
        self._seconds_per_step: float | None = None
        self._last = time.perf_counter()
        self._visible = False

    @staticmethod
    def for_stream(total_steps: int, start_step: int, images_per_step: int,
                   stream: TextIO | None = None) -> ProgressBar | None:
        """A bar if ``stream`` (default stdout) is a terminal, else None."""
        stream = stream or sys.stdout
        is_terminal = getattr(stream, "isatty", lambda: False)()
        return ProgressBar(total_steps, start_step, images_per_step, stream) if is_terminal else None

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        seconds = (now - self._last) / max(step - self.step, 1)
        self._last, self.step, self.loss = now, step, loss
        # The first step traces the graph; a moving average forgets it quickly.
        self._seconds_per_step = seconds if self._seconds_per_step is None or step <= 2 else (
            0.8 * self._seconds_per_step + 0.2 * seconds)
        self.redraw()

    def line(self) -> str:
        done = self.step / self.total if self.total else 1.0
        filled = int(round(WIDTH * done))
        text = f"[{'#' * filled}{'.' * (WIDTH - filled)}] step {self.step}/{self.total} loss {self.loss:.4f}"
        if self._seconds_per_step:
            speed = self.images_per_step / self._seconds_per_step
            left = (self.total - self.step) * self._seconds_per_step
            text += f" {speed:.2f} img/s {_clock(left)} left"
        return text[:shutil.get_terminal_size((100, 24)).columns - 1]

    def redraw(self) -> None:
        self._visible = True
        self.stream.write(f"\r\x1b[K{self.line()}")
        self.stream.flush()

    def clear(self) -> None:
        if self._visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def restore(self) -> None:
        """Draw the bar again after a log line, if it was showing."""
        if self._visible:
            self.redraw()

    def close(self) -> None:
        self.clear()
        self._visible = False


class BlockProgress:
    """Blocks done of all, voxels per second and time left for blockwise prediction: redrawn in place on a
    terminal, a line a minute otherwise (a log file, a batch job), and a summary line at the end."""

    def __init__(self, total: int, done: int, stream: TextIO | None = None, every: float = 60.0) -> None:
        self.total, self.done, self.skipped = total, done, done
        self.stream = stream or sys.stderr
        self.terminal = getattr(self.stream, "isatty", lambda: False)()
        self.voxels, self.every = 0, every
        self.started = self._printed = time.perf_counter()

    def update(self, voxels: int) -> None:
        self.done += 1
        self.voxels += voxels
        now = time.perf_counter()
        if self.terminal:
            self.stream.write(f"\r\x1b[K{self.line()}")
            self.stream.flush()
        elif now - self._printed >= self.every:
            self._printed = now
            print(self.line(), file=self.stream, flush=True)

    def rate(self) -> float:
        return self.voxels / max(time.perf_counter() - self.started, 1e-9)

    def line(self) -> str:
        computed = self.done - self.skipped
        seconds = time.perf_counter() - self.started
        left = (self.total - self.done) * seconds / computed if computed else 0.0
        return (f"blocks {self.done}/{self.total}, {self.rate() / 1e6:.2f} Mvoxel/s, "
                f"{_clock(left)} left")

    def close(self) -> str:
        """Clear the live line; the summary, for the caller's log."""
        if self.terminal:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        seconds = time.perf_counter() - self.started
        return (f"{self.done - self.skipped} blocks computed and {self.skipped} found done, of {self.total}, "
                f"in {_clock(seconds)} ({self.rate() / 1e6:.2f} Mvoxel/s)")
