"""Step timing and the throughput / latency figures the recipe reports."""

from __future__ import annotations

import os
import time

import numpy as np

_IMPORTED_AT = time.monotonic()


def seconds_since_process_start() -> float:
    """Wall time since this process was started (Linux: from /proc), so start-up and imports count too."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5): start time after boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED_AT  # elsewhere: since TensorFlow and this module were imported


class StepTimer:
    """Timestamps each finished step; the first ``warmup`` steps are left out of the figures."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self._stamps: list[float] = []
        self._steps = 0

    def start(self) -> None:
        """Call right before the first step: with no warm-up, the first step counts too."""
        if self.warmup == 0:
            self._stamps.append(time.perf_counter())

    def step_done(self) -> None:
        self._steps += 1
        if self._steps >= self.warmup:  # the stamp closing the last warm-up step opens the window
            self._stamps.append(time.perf_counter())

    @property
    def durations(self) -> np.ndarray:
        return np.diff(np.asarray(self._stamps))


def performance_stats(durations: np.ndarray, images_per_step: int, mode: str) -> dict[str, float]:
    """throughput_<mode> (mean of per-step images/s) and latency_<mode>_mean/90/95/99 in ms."""
    if len(durations) == 0:
        return {}
    latency_ms = 1000.0 * np.asarray(durations)
    stats = {f"throughput_{mode}": float(np.mean(images_per_step * 1000.0 / latency_ms)),
             f"latency_{mode}_mean": float(np.mean(latency_ms))}
    for level in (90, 95, 99):
        stats[f"latency_{mode}_{level}"] = float(np.percentile(latency_ms, level))
    return stats
