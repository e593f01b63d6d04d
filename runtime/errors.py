"""Exceptions that end a run with a one-line message instead of a traceback.

``UserInputError`` (exit status 2): the user gave us something we cannot use.
``TrainingDiverged`` (exit status 3): the loss stopped being a number.
``WorkerLost`` (exit status 4): another worker of a multi-worker job died or stopped answering.
Every other exception is a bug and keeps its traceback (see ``unet2d.main``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserInputError(Exception):
    """Bad flags, missing or malformed data, unusable output folders."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""

    def __init__(self, step: int, ce: float, dice: float, last_checkpoint: str | None) -> None:
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
        super().__init__(f"training diverged at step {step} (cross-entropy {ce}, dice loss {dice}); {kept}; "
                         "try a lower --learning_rate or --dtype fp32")


class WorkerLost(Exception):
    """A peer worker of a multi-worker job is gone, or never came: this worker stops too.

    ``phase`` says what this worker was doing ("building the model"), ``worker``
    which peer it lost when TensorFlow's error names it.
    """

    def __init__(self, phase: str, detail: str, worker: str | None = None) -> None:
        who = worker or "another worker"
        super().__init__(f"lost {who} while {phase} ({detail}); stopping. The chief's last checkpoint is kept: "
                         "restart the whole job (with --resume_training to continue training)")


class PeersMissing(WorkerLost):
    """Workers of the cluster that did not start in time (exit status 4, as a lost worker)."""

    def __init__(self, missing: list[str], waited: float) -> None:
        Exception.__init__(self, f"{', '.join(missing)} did not join the cluster within {waited:.0f} s "
                                 "(--cluster_timeout); stopping. Start every worker of TF_CONFIG's cluster, "
                                 "or check its addresses")


def exit_status(program: str, action: Callable[[], object]) -> int:
    """Run a command-line tool's work: 0, or its UserInputError as one line on stderr and status 2."""
    try:
        action()
    except UserInputError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    return 0
