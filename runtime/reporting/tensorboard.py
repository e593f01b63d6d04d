"""TensorBoard events: train scalars in <log_dir>, eval scalars in <log_dir>/eval, hyper-parameters."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tensorflow as tf

from common.errors import write_failure


@contextmanager
def _written_in(folder: Path) -> Iterator[None]:
    """TensorFlow's event writer fails in C++ (a full disk is a ResourceExhaustedError whose text carries the
    C library's words, behind graph noise): one line naming the folder, as every other write."""
    try:
        yield
    except (tf.errors.OpError, OSError) as error:
        raise write_failure("the TensorBoard events", folder, error) from None


class TensorBoardWriters:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        with _written_in(self.log_dir):
            self.train = tf.summary.create_file_writer(str(self.log_dir))
            self.eval = tf.summary.create_file_writer(str(self.log_dir / "eval"))

    def hyperparameters(self, params: Mapping[str, Any]) -> None:
        """Record the run's flags with TensorBoard's HParams plugin."""
        from tensorboard.plugins.hparams import api as hparams_api

        simple = {key: (value if isinstance(value, (bool, int, float, str)) else str(value))
                  for key, value in params.items()}
        with _written_in(self.log_dir), self.train.as_default():
            hparams_api.hparams(simple)
            self.train.flush()

    def scalars(self, writer: tf.summary.SummaryWriter, step: int, values: Mapping[str, float]) -> None:
        with _written_in(self.log_dir), writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, float(value), step=step)
            writer.flush()

    def train_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.scalars(self.train, step, values)

    def eval_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.scalars(self.eval, step, values)

    def eval_time(self, step: int, event: str) -> None:
        """Wall-clock time of an evaluation's start or end: time-to-train analysis."""
        self.scalars(self.eval, step, {f"eval_{event}_timestamp": time.time()})

    def close(self) -> None:
        with _written_in(self.log_dir):
            self.train.close()
            self.eval.close()
