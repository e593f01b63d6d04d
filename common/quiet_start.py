"""Keeping TensorFlow's C++ start-up lines out of a normal run's output.

Importing TensorFlow and listing its devices prints, straight to file
descriptor 2 and whatever TF_CPP_MIN_LOG_LEVEL says on TF 2.16+ (absl logs
before it is initialised): ``WARNING: All log messages before
absl::InitializeLog() ...``, ``I0000 ... oneDNN custom operations are on``,
``E0000 ... failed call to cuInit ... (303)`` on a machine without a GPU, and
on TF 2.15 the "Unable to register cuDNN factory" errors. A user reads E0000
as a failure. While TensorFlow starts, fd 2 goes through a pipe that drops
those known lines and passes every other line on, real errors included.

Not used when the user asked for TensorFlow's lines (``--tf_verbosity`` or
TF_CPP_MIN_LOG_LEVEL set). No TensorFlow import here.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

# Only what a CPU-only or GPU-less start prints: info and warning lines, and the known harmless errors.
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"  # absl info / warning: I0000 00:00:1796... 5652 port.cc:153]
    r"|E\d{4} [\d:.]+ +\d+ (cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\] "
    r"(failed call to cuInit|Unable to register)"
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IW] \S+:\d+\]"  # TF 2.15: 2026-12-02 09:43:22.37: I external/.../x.cc:31]
    r"|\d{4}-\d\d-\d\d [\d:.]+: E \S+/(cuda_dnn|cuda_fft|cuda_blas)\.cc:\d+\] Unable to register"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
)


def asked_for_tensorflow_lines(tf_verbosity: int | None) -> bool:
    return tf_verbosity is not None or "TF_CPP_MIN_LOG_LEVEL" in os.environ


def _pass_on(read_end: int, stderr: int) -> None:
    with os.fdopen(read_end, "rb") as lines:
        for line in lines:
            if not NOISE.match(line.decode("utf-8", "replace").strip()):
                os.write(stderr, line)


@contextmanager
def tensorflow_start_quietly(enabled: bool = True) -> Iterator[None]:
    """Inside: fd 2 without TensorFlow's start-up noise (see the module docstring)."""
    if not enabled:
        yield
        return
    stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_pass_on, args=(read_end, stderr), name="quiet-start", daemon=True)
    pump.start()
    try:
        yield
    finally:
        os.dup2(stderr, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        pump.join(timeout=5)
        os.close(stderr)


def quiet_unless_asked() -> AbstractContextManager[None]:
    """``tensorflow_start_quietly`` for later phases: grappler, which SavedModel export and tf2onnx run,
    starts TensorFlow sessions that print C++ info lines again; dropped unless TensorFlow's lines were asked
    for (``--tf_verbosity`` sets TF_CPP_MIN_LOG_LEVEL)."""
    return tensorflow_start_quietly(not asked_for_tensorflow_lines(None))
