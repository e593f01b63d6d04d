"""Which worker does what: who logs, who saves checkpoints, and whether a run keeps any state at all.

The set-up (before the loop) and the loop itself both ask these questions;
they live here so the two agree and the loop never reaches up into the CLI layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.execution.distribution import Workers


def logs_here(args: argparse.Namespace, workers: Workers) -> bool:
    """Rank 0 logs and checkpoints; every rank does with --log_all_workers."""
    return workers.is_chief or args.log_all_workers


def worker_log_dir(args: argparse.Namespace, workers: Workers) -> Path:
    log_dir = Path(args.log_dir)
    return log_dir / f"worker_{workers.rank}" if args.log_all_workers and workers.size > 1 else log_dir


def saves_checkpoints(args: argparse.Namespace, workers: Workers) -> bool:
    return not (args.benchmark or args.disable_ckpt_saving) and logs_here(args, workers)


def is_training_benchmark(args: argparse.Namespace) -> bool:
    """Training benchmarks time steps only: no checkpoint is read, written or cleared, no lock is taken."""
    return args.benchmark and "train" in args.exec_mode
