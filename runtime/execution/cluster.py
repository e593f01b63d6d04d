"""Waiting for the other workers of a TF_CONFIG cluster, visibly, for a bounded time, in Python.

TensorFlow's own cluster start (inside ``MultiWorkerMirroredStrategy()``)
blocks in C++ until every task has registered with the coordination service:
it prints nothing, and Python signal handlers cannot run meanwhile. So each
worker first waits here, where it can say whom it waits for and stop on a
signal or a deadline, and enters TensorFlow's start only once every peer's
port answers, when that start takes a moment.

Each worker listens on its own TF_CONFIG port while it waits, so its peers
see it; it closes that socket just before TensorFlow's server binds the same
port. A peer probing in between is refused and simply probes again. No
TensorFlow here: this runs before the runtime is set up.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

from common.errors import PeersMissing, UserInputError

PROBE_SECONDS = 0.5  # between two rounds of connection attempts
CONNECT_SECONDS = 1.0  # one attempt's bound (a host that drops packets instead of refusing)
FIRST_NOTICE_SECONDS = 2.0  # a launcher's workers find each other sooner than this: no line then
NOTICE_EVERY_SECONDS = 30.0


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _answers(address: str) -> bool:
    try:
        with socket.create_connection(split_address(address), timeout=CONNECT_SECONDS):
            return True
    except OSError:
        return False


def _listen(address: str) -> socket.socket:
    """Our own port, held so peers see us; a one-line error if another program has it."""
    _, port = split_address(address)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise UserInputError(f"this worker's TF_CONFIG address {address} is taken: port {port} is in use by "
                                 "another program (pick free ports)") from None
        raise UserInputError(f"cannot listen on this worker's TF_CONFIG address {address}: {error.strerror}") \
            from None
    listener.listen(64)
    listener.setblocking(False)
    return listener


def _drain(listener: socket.socket) -> None:
    """Accept and close our peers' probes, so the queue never fills and later probes still get through."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.close()


def wait_for_peers(addresses: list[str], rank: int, timeout: float, say: Callable[[str], None]) -> None:
    """Return once every other worker's address answers; ``PeersMissing`` after ``timeout`` seconds."""
    peers = {index: address for index, address in enumerate(addresses) if index != rank}
    if not peers:
        return
    listener = _listen(addresses[rank])
    start = time.monotonic()
    next_notice = start + FIRST_NOTICE_SECONDS
    try:
        while True:
            _drain(listener)
            peers = {index: address for index, address in peers.items() if not _answers(address)}
            if not peers:
                return
            now = time.monotonic()
            missing = [f"worker {index} ({address})" for index, address in sorted(peers.items())]
            if now - start >= timeout:
                raise PeersMissing(missing, timeout)
            if now >= next_notice:
                say(f"waiting for {len(peers)} of {len(addresses)} workers: {', '.join(missing)}; "
                    f"{now - start:.0f} s of {timeout:.0f} s (--cluster_timeout)")
                next_notice = now + NOTICE_EVERY_SECONDS
            time.sleep(PROBE_SECONDS)
    finally:
        listener.close()
