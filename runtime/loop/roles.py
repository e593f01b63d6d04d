"""Which worker does what: who logs and who saves checkpoints.

The set-up (before the loop) and the loop itself both ask these questions;
they live here so the two agree and the loop never reaches up into the CLI layer.
"""

from __future__ import annotations

from pathlib import Path

from common.config import OutputConfig, TrainingConfig
from runtime.execution.distribution import Workers


def logs_here(outputs: OutputConfig, workers: Workers) -> bool:
    """Rank 0 logs and checkpoints; every rank does with --log_all_workers."""
    return workers.is_chief or outputs.log_all_workers


def worker_log_dir(outputs: OutputConfig, workers: Workers) -> Path:
    log_dir = outputs.log_dir
    return log_dir / f"worker_{workers.rank}" if outputs.log_all_workers and workers.size > 1 else log_dir


def saves_checkpoints(training: TrainingConfig, outputs: OutputConfig, workers: Workers) -> bool:
    return not (training.benchmark or training.disable_ckpt_saving) and logs_here(outputs, workers)
