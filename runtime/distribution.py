"""Single worker or Horovod data parallelism, behind one small interface.

The training loop asks a ``Workers`` object for its rank and size, wraps its
gradient tape with it and broadcasts once after the first step; it never
imports Horovod itself.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from runtime.errors import UserInputError


class Workers:
    """One worker: rank 0 of 1."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def wrap_tape(self, tape: tf.GradientTape) -> Any:
        return tape

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        """Make every worker start from rank 0's values (no-op for one worker)."""

    def any(self, flag: bool) -> bool:
        """True on every worker if it is true on any: workers must stop at the same step."""
        return flag

    def describe(self) -> str:
        return "single worker"


class HorovodWorkers(Workers):
    """Horovod: gradients all-reduced, state broadcast from rank 0."""

    def __init__(self) -> None:
        try:
            self._hvd = importlib.import_module("horovod.tensorflow")
        except ImportError as error:
            raise UserInputError(
                f"--use_horovod needs Horovod ({error}); install it with "
                "'HOROVOD_WITH_TENSORFLOW=1 pip install horovod' on the TF 2.15 stack "
                "(scripts/setup_env.sh tf2.15), or habana-horovod on Gaudi") from None
        self._hvd.init()
        self.rank = self._hvd.rank()
        self.size = self._hvd.size()
        self.local_rank = self._hvd.local_rank()
        self.local_size = self._hvd.local_size()
        # For the test suite only: ranks keep their own gradients, to show that all-reduce matters.
        self._allreduce = os.environ.get("UNET2D_TEST_SKIP_ALLREDUCE") != "1"

    def wrap_tape(self, tape: tf.GradientTape) -> Any:
        return self._hvd.DistributedGradientTape(tape) if self._allreduce else tape

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        self._hvd.broadcast_variables(list(variables), root_rank=0)

    def any(self, flag: bool) -> bool:
        votes = self._hvd.allreduce(tf.constant(1.0 if flag else 0.0), op=self._hvd.Sum, name="stop_vote")
        return float(votes) > 0

    def describe(self) -> str:
        return f"Horovod worker {self.rank} of {self.size}"


def make_workers(use_horovod: bool) -> Workers:
    return HorovodWorkers() if use_horovod else Workers()
