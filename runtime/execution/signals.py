"""SIGINT and SIGTERM in every phase of a run: stop at once, or stop training cleanly after a step.

``unet2d.py`` installs one ``StopSignals`` for the whole process, before it
joins a cluster or reads anything. It has two modes:

* **at once** (every phase but training proper): the first signal ends the
  run with 128 + signal and one line naming the phase. In Python code the
  handler raises ``Interrupted``, so ``finally`` blocks (the model-dir lock)
  run. A main thread blocked in C++ (TensorFlow's cluster start, a long
  step, a collective waiting for a peer) never gets to run Python handlers,
  so a watcher thread ends the process itself if it is still there a few
  seconds later. No phase needs SIGKILL.
* **after the step** (training, once its first step is done): the first
  signal only raises a flag; the loop finishes the step, the workers vote,
  the chief writes a checkpoint and the run exits with a message saying how
  to resume. A second signal ends the process at once.

Python's C-level handler writes each signal's number to the "wakeup fd" the
moment it arrives, whatever the main thread is doing; the watcher thread
reads it there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from common.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long a signal "at once" waits for the main thread to unwind before the watcher ends the process.
UNWIND_SECONDS = 3.0


def _name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """The process's handler of SIGINT and SIGTERM; see the module docstring."""

    def __init__(self, program: str = "unet2d.py") -> None:
        self.program = program
        self.phase = "starting"
        self.signum: int | None = None  # the first signal seen while training is on
        self._after_step = False
        self._cleanups: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._reported = False
        self._previous_handlers: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    # What the run tells it ---------------------------------------------------

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """Name what the process is doing, for the stop line (and restore the outer name after)."""
        outer, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = outer

    @contextmanager
    def after_each_step(self) -> Iterator[None]:
        """Inside: the first signal is a request the training loop reads from ``requested``."""
        self._after_step = True
        try:
            yield
        finally:
            self._after_step = False

    def on_forced_exit(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` (e.g. releasing the model-dir lock) if the watcher has to end the process."""
        self._cleanups.append(cleanup)

    @contextmanager
    def holding_sigterm(self) -> Iterator[None]:
        """SIGTERM held pending in this thread (and every thread it starts meanwhile), delivered on the way out.

        Around TensorFlow's import: the threads it starts then keep SIGTERM
        blocked for good, so inside its cluster start, where TensorFlow puts
        its own SIGTERM handler (the preemption notifier) in place of ours, no
        thread can take a SIGTERM and it stays pending for us.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a pending one runs _handle now

    @contextmanager
    def around_blocking_call(self) -> Iterator[None]:
        """Keep signals working around a C++ call that holds the GIL for long (TensorFlow's cluster start).

        No thread of ours runs there, so a small helper process watches:
        * SIGINT: its byte arrives on the wakeup fd; the helper prints the stop
          line and sends it back, and the first delivery has reset its action
          to the default (SA_RESETHAND), so that one ends us with 128 + 2;
        * SIGTERM: held pending in every thread (``holding_sigterm``) because
          TensorFlow installs its own handler here. If the call returns, ours
          is back and takes it; if the call is still stuck 2 s later, the
          helper prints the stop line and ends us with SIGKILL.
        """
        if not (self._pipe and sys.platform.startswith("linux")):
            yield
            return
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", _HELPER, str(os.getpid()), str(read_end),
                                   f"{self.program}: stopped by {{name}} while {self.phase}"],
                                  pass_fds=(read_end,), stdin=subprocess.DEVNULL)
        os.close(read_end)
        outer_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            _reset_on_first_delivery(signal.SIGINT)
            yield
        finally:
            helper.kill()
            helper.wait()
            for each in STOP_SIGNALS:
                signal.signal(each, self._handle)  # ours again, in place of TensorFlow's; no SA_RESETHAND
            signal.set_wakeup_fd(outer_fd, warn_on_full_buffer=False)
            os.close(write_end)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # last: a pending one runs _handle now

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def report(self, line: str) -> None:
        """Print the run's last line once, whichever thread gets there first."""
        with self._lock:
            if self._reported:
                return
            self._reported = True
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    # Handlers ----------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """The main thread's handler, between two bytecodes."""
        if self._after_step:
            if self.signum is None:
                self.signum = signum
            return
        raise Interrupted(signum, self.phase)

    def _exit_now(self, signum: int, line: str) -> None:
        self.report(line)
        for cleanup in self._cleanups:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - on the way out; the kernel frees what is left
                pass
        os._exit(128 + signum)

    def _watch(self, read_end: int) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))  # signals go to the main thread, never here
        seen = 0
        while chunk := os.read(read_end, 64):
            for signum in chunk:
                if signum not in STOP_SIGNALS:
                    continue
                seen += 1
                if seen == 1 and self._after_step:
                    if self.signum is None:
                        self.signum = signum
                    continue
                if seen == 1:  # the main thread raises Interrupted if it can; otherwise we end it
                    phase = self.phase
                    threading.Thread(target=self._deadline, args=(signum, phase), daemon=True).start()
                    continue
                self._exit_now(signum, f"{self.program}: second {_name(signum)}: exiting at once, without a checkpoint")

    def _deadline(self, signum: int, phase: str) -> None:
        time.sleep(UNWIND_SECONDS)
        self._exit_now(signum, f"{self.program}: {Interrupted(signum, phase)}")

    def __enter__(self) -> StopSignals:
        self.signum, self._reported, self._cleanups = None, False, []
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for each in STOP_SIGNALS:
            self._previous_handlers[each] = signal.signal(each, self._handle)
        self._watcher = threading.Thread(target=self._watch, args=(read_end,), name="stop-signals", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for each, handler in self._previous_handlers.items():
            signal.signal(each, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        read_end, write_end = self._pipe
        os.close(write_end)  # the watcher reads end-of-file and returns
        self._watcher.join(timeout=5)
        os.close(read_end)


# The helper of around_blocking_call: argv = parent pid, pipe fd, stop line with {name}.
_HELPER = """
import os, select, signal, sys, time
parent, fd, line = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def stop(signum, how):
    sys.stderr.write(line.format(name=signal.Signals(signum).name) + "\\n")
    sys.stderr.flush()
    os.kill(parent, how)
    sys.exit(0)

def sigterm_pending():
    try:
        status = open(f"/proc/{parent}/status").read()
    except OSError:
        sys.exit(0)
    masks = [int(l.split()[1], 16) for l in status.splitlines() if l.startswith(("ShdPnd:", "SigPnd:"))]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)

held_since = None
while True:
    if select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 64)
        if not chunk:
            sys.exit(0)
        if signal.SIGINT in chunk:
            time.sleep(0.5)  # the call may have just returned: then the parent handles it and kills us first
            stop(signal.SIGINT, signal.SIGINT)
    if sigterm_pending():
        held_since = held_since or time.monotonic()
        if time.monotonic() - held_since > 2.0:  # still inside the call: TensorFlow's start is stuck
            stop(signal.SIGTERM, signal.SIGKILL)
"""


class _Sigaction(ctypes.Structure):
    """struct sigaction of glibc on Linux (x86_64, aarch64)."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


_SA_RESETHAND = 0x80000000


def _reset_on_first_delivery(signum: int) -> None:
    """Add SA_RESETHAND to the signal's current action: after one delivery, the default action again."""
    libc = ctypes.CDLL(None, use_errno=True)
    action = _Sigaction()
    if libc.sigaction(signum, None, ctypes.byref(action)) != 0:
        return
    action.flags = ctypes.c_int((action.flags & 0xFFFFFFFF) | _SA_RESETHAND).value
    libc.sigaction(signum, ctypes.byref(action), None)


# The process's one instance: unet2d.py installs it, the run loop asks it. Not installed (a library
# caller, a test), it never requests a stop and signals keep Python's defaults.
STOP = StopSignals()
