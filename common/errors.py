"""How a run ends when it cannot go on: one line on stderr and an exit status, never a traceback.

=====  ===================  =====================================================
 exit  exception            meaning
=====  ===================  =====================================================
   2   UserInputError       the user gave us something we cannot use
   2   OSError of a write   no space, no quota, no permission, a read-only file
                            system, an I/O error: the file and the errno's words
   2   MemoryError          not enough memory, with what to try
   3   TrainingDiverged     the loss stopped being a number
   4   WorkerLost           another worker of a multi-worker job died, or never came
 128+N Interrupted,         signal N (SIGINT 130, SIGTERM 143) stopped the run,
       TrainingInterrupted  at once or, in training, after the step
=====  ===================  =====================================================

``exit_status`` applies this table for every command-line entry point
(``unet2d.py``, ``predict.py``, ``runtime/parse_results.py``, the plotting
tool). Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import signal
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

    def __init__(self, missing: list[str], timeout: float) -> None:
        Exception.__init__(self, f"{', '.join(missing)} did not join the cluster within {timeout:g} s "
                                 "(--cluster_timeout); stopping. Start every worker of TF_CONFIG's cluster, "
                                 "or check its addresses")


class Interrupted(BaseException):
    """A stop signal outside training proper (a BaseException, like KeyboardInterrupt: nobody catches it)."""

    def __init__(self, signum: int, phase: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} while {phase}")
        self.exit_status = 128 + signum


class TrainingInterrupted(Exception):
    """Raised by the training loop once the checkpoint of an interrupted run is written."""

    def __init__(self, signum: int, step: int, saved: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {saved}; "
                         "run the same command with --resume_training to continue")
        self.exit_status = 128 + signum


class DiskFull(UserInputError):
    """A write found no space left: one line naming the folder, status 2; what was whole before is kept."""


# The errnos of a write that the user can act on, in words; TensorFlow's errors carry only the C library's text.
WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system", errno.EIO: "input/output error"}
_C_LIBRARY_WORDS = {os.strerror(number): number for number in WRITE_ERRNOS}  # "No space left on device", ...
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")  # TensorFlow's graph noise before its message


def write_errno(error: BaseException) -> int | None:
    """The errno of a failed write, from an OSError or from a TensorFlow error's text; None if neither says."""
    number = getattr(error, "errno", None)
    if number in WRITE_ERRNOS:
        return number
    return next((found for words, found in _C_LIBRARY_WORDS.items() if words in str(error)), None)


def out_of_space(error: BaseException) -> bool:
    """Whether an OSError or a TensorFlow write error (``ResourceExhaustedError`` from SaveV2) is a full disk."""
    return write_errno(error) == errno.ENOSPC


def write_failure(what: str, folder: object, error: BaseException) -> UserInputError:
    """The one line for a write that failed: ``cannot write <what> in <folder>: <reason>``."""
    number = write_errno(error)
    if number == errno.ENOSPC:
        return DiskFull(f"cannot write {what} in {folder}: no space left on the device")
    if number is not None:
        return UserInputError(f"cannot write {what} in {folder}: {WRITE_ERRNOS[number]}")
    text = _FUNCTION_NODE.sub("", str(error)).strip()
    reason = getattr(error, "strerror", None) or (text.splitlines() or [type(error).__name__])[0]
    return UserInputError(f"cannot write {what} in {folder}: {reason}")


MEMORY_ADVICE = ("not enough memory: try --volume_loading stream for large stacks, a smaller --batch_size, or "
                 "predict.py with a .ome.zarr output (block by block)")


EXIT_STATUSES: dict[type[BaseException], int] = {UserInputError: 2, TrainingDiverged: 3, WorkerLost: 4}


def _print_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def exit_status(program: str, action: Callable[[], object], report: Callable[[str], None] = _print_line,
                before_report: Callable[[], None] | None = None) -> int:
    """Run a command-line tool's work; 0, or the table's status with its one line ``program: ...`` on stderr.

    ``report`` prints the line (unet2d.py's prints it once, whichever thread
    ends the run); ``before_report`` runs first (to silence TensorFlow's
    clean-up warnings after an error).
    """
    try:
        action()
    except (Interrupted, TrainingInterrupted) as stop:
        report(f"{program}: {stop}")
        return stop.exit_status
    except tuple(EXIT_STATUSES) as error:
        if before_report is not None:
            before_report()
        report(f"{program}: error: {error}")
        return next(status for kind, status in EXIT_STATUSES.items() if isinstance(error, kind))
    except OSError as error:  # a failed write without its own message: the file and the errno's words
        number = write_errno(error)
        if number is None:
            raise
        if before_report is not None:
            before_report()
        verb = "write" if number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"  # only writes meet these
        report(f"{program}: error: cannot {verb} {error.filename or 'a file'}: {WRITE_ERRNOS[number]}")
        return EXIT_STATUSES[UserInputError]
    except MemoryError:
        if before_report is not None:
            before_report()
        report(f"{program}: error: {MEMORY_ADVICE}")
        return EXIT_STATUSES[UserInputError]
    return 0
