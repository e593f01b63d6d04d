"""Where checkpoints live and how they are written, found and cleared.

Checkpoints go to ``<model_dir>/model_checkpoint`` (``.../worker_N`` per
worker with --log_all_workers). Starting afresh clears that folder only, in
Python, never the model dir itself and never through a shell.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import tensorflow as tf

from runtime.errors import UserInputError

CHECKPOINT_FOLDER = "model_checkpoint"
KEEP_LAST = 3


def checkpoint_dir(model_dir: Path, worker: int | None = None) -> Path:
    folder = Path(model_dir) / CHECKPOINT_FOLDER
    return folder / f"worker_{worker}" if worker is not None else folder


def ensure_writable_dir(folder: Path, flag: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{flag} is not a folder: {folder}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"cannot create {flag} {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} is not writable: {folder}")


def clear_checkpoints(folder: Path) -> bool:
    """Delete the previous run's checkpoints; True if there were any."""
    if folder.is_symlink():
        raise UserInputError(f"refusing to clear {folder}: it is a symbolic link")
    if not folder.exists():
        return False
    if folder.name != CHECKPOINT_FOLDER and folder.parent.name != CHECKPOINT_FOLDER:
        raise AssertionError(f"only checkpoint folders are ever cleared, not {folder}")
    shutil.rmtree(folder)
    return True


def make_manager(checkpoint: tf.train.Checkpoint, folder: Path, keep: int = KEEP_LAST) -> tf.train.CheckpointManager:
    """Checkpoints named checkpoint-<step>, the newest ``keep`` kept.

    TensorFlow writes each checkpoint's files under temporary names and
    updates the small ``checkpoint`` index last, by an atomic rename: a crash
    mid-write leaves the previous checkpoint as the latest, intact.
    """
    return tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=keep, checkpoint_name="checkpoint")


class PeriodicSaver:
    """Decides when training writes its next checkpoint: every N steps or M minutes."""

    def __init__(self, every_steps: int, every_minutes: float) -> None:
        self.every_steps = every_steps
        self.every_seconds = 60.0 * every_minutes
        self._last = time.monotonic()

    def due(self, step: int) -> bool:
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_seconds > 0 and time.monotonic() - self._last >= self.every_seconds
        return by_steps or by_time

    def saved(self) -> None:
        self._last = time.monotonic()


def latest(folder: Path) -> str | None:
    return tf.train.latest_checkpoint(str(folder)) if folder.is_dir() else None


def restore(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
    """Load ``path`` into ``checkpoint``; a checkpoint of another model is the user's error, in one line."""
    try:  # Keras 2 may fail in restore() itself, Keras 3 in the assertion
        status = checkpoint.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"checkpoint {path} does not fit this model: {first_line}") from None


def restore_model(model: tf.keras.Model, folder: Path, step: tf.Variable | None = None) -> str:
    """Load the model weights (and the step it was trained to, if asked) of the latest checkpoint."""
    path = latest(folder)
    if path is None:
        raise UserInputError(f"no checkpoint in {folder}: train first, or point --model_dir at a trained model")
    parts = {"model": model} if step is None else {"model": model, "step": step}
    restore(tf.train.Checkpoint(**parts), path, partial=True)
    return path
