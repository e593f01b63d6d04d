"""Multi-worker start-up faults: missing peers, signals while waiting, peers lost in each phase.

Workers are started here as a scheduler would (each with its own TF_CONFIG,
no launcher), on free 127.0.0.1 ports, at the test width. Every wait is
bounded, and only processes started here are signalled, by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.compat import KERAS_MAJOR
from tests.conftest import ROOT, run_cli, unet2d_command
from tests.signal_state import catches, main_thread_blocks, main_thread_waits, wait_until

pytestmark = pytest.mark.serial  # cluster start-up deadlines


def workers_test(test):
    """Starts unet2d.py workers: slow, and on the current stack only (TF 2.15 scales with Horovod)."""
    test = pytest.mark.slow(test)
    return pytest.mark.skipif(KERAS_MAJOR < 3, reason="multi_worker is the current stack's engine")(test)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def tf_config(ports: list[int], rank: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": rank}})


class Worker:
    """One unet2d.py worker process, its stderr read line by line with a deadline."""

    def __init__(self, ports: list[int], rank: int, flags: list[str]) -> None:
        env = {**os.environ, "TF_CONFIG": tf_config(ports, rank), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": "", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
        self.process = subprocess.Popen(unet2d_command(*flags, "--distribution", "multi_worker"), cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def read_until(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            self.lines.append(line)
            if re.search(pattern, line):
                return line
            assert time.monotonic() < deadline, f"no '{pattern}' within {timeout} s: {self.output[-2000:]}"
        raise AssertionError(f"ended before '{pattern}': {self.output[-2000:]}")

    def finish(self, timeout: float) -> int:
        rest, _ = self.process.communicate(timeout=timeout)
        self.lines.append(rest)
        return self.process.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def last_line(self) -> str:
        return [line for line in self.output.splitlines() if line.startswith("unet2d.py:")][-1]

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # by PID: only what this test started
            self.process.wait(timeout=30)


@contextmanager
def workers(*started: Worker) -> Iterator[None]:
    try:
        yield
    finally:
        for worker in started:
            worker.end()


def train_flags(data_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--exec_mode", "train", "--fold", "0", "--batch_size", "1",
            "--dtype", "fp32", "--max_steps", "4", "--model_dir", str(root / "model"), "--log_dir", str(root / "logs"),
            *extra]


@workers_test
def test_a_missing_peer_is_waited_for_visibly_then_named_with_status_4(isbi_dir, tmp_path):
    ports = free_ports(2)
    worker = Worker(ports, 0, train_flags(isbi_dir, tmp_path, "--cluster_timeout", "6"))
    with workers(worker):
        started = time.monotonic()
        waiting = worker.read_until(r"waiting for", 120)
        assert f"worker 1 (127.0.0.1:{ports[1]})" in waiting and "1 of 2 workers" in waiting
        status = worker.finish(timeout=60)
    assert status == 4 and time.monotonic() - started < 6 + 60
    assert re.match(rf"unet2d.py: error: worker 1 \(127.0.0.1:{ports[1]}\) did not join the cluster within 6 s",
                    worker.last_line()), worker.output[-2000:]
    assert "Traceback" not in worker.output


@workers_test
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_waiting_ends_the_worker_at_once(isbi_dir, tmp_path, signum):
    worker = Worker(free_ports(2), 0, train_flags(isbi_dir, tmp_path))
    with workers(worker):
        worker.read_until(r"waiting for", 120)
        worker.process.send_signal(signum)
        sent = time.monotonic()
        status = worker.finish(timeout=30)
    assert time.monotonic() - sent < 10
    assert status == 128 + signum
    assert worker.last_line() == f"unet2d.py: stopped by {signum.name} while waiting for the other workers"
    assert "Traceback" not in worker.output


@workers_test
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, -signal.SIGKILL)])
def test_a_stop_signal_inside_tensorflows_cluster_start_ends_the_worker(isbi_dir, tmp_path, signum, status):
    """A 'peer' that accepts connections but speaks no gRPC: our wait ends, TensorFlow's start blocks in C++.

    SIGINT comes back as itself (a shell shows 130). SIGTERM, which TensorFlow's own handler would take
    there, is held pending and, the start being stuck, ends the worker by SIGKILL after its line.
    """
    ports = free_ports(2)
    impostor = socket.socket()
    impostor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    impostor.bind(("127.0.0.1", ports[1]))
    impostor.listen(64)
    worker = Worker(ports, 0, train_flags(isbi_dir, tmp_path))
    try:
        with workers(worker):
            # Inside TensorFlow's start: the window's helper process is there, SIGTERM is held blocked, and the
            # main thread waits in C++ (no longer in the Python around the call).
            pid = worker.process.pid
            wait_until(lambda: _joining(pid) and main_thread_blocks(pid, signal.SIGTERM) and main_thread_waits(pid),
                       "inside TensorFlow's cluster start", alive=lambda: worker.process.poll() is None, hold=0.2)
            worker.process.send_signal(signum)
            sent = time.monotonic()
            returned = worker.finish(timeout=30)
    finally:
        impostor.close()
    assert time.monotonic() - sent < 10
    assert returned == status
    assert worker.last_line() == f"unet2d.py: stopped by {signum.name} while joining the cluster", \
        worker.output[-2000:]


def _joining(pid: int) -> bool:
    """True once ``pid`` has a child: the signal helper, alive only inside TensorFlow's cluster start."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return children.exists() and bool(children.read_text().split())


def data_without_labels(isbi_dir: Path, tmp_path: Path) -> Path:
    """A data folder with the ISBI volumes linked in and no labels yet: each test puts its bad ones there."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-volume.tif", "test-volume.tif"):
        (bad / name).symlink_to(isbi_dir / name)
    return bad


@workers_test
def test_a_bad_input_fails_alone_before_joining(isbi_dir, tmp_path):
    """Worker 1's data folder holds a FIFO: it exits 2 at once, never listens; worker 0 names it missing."""
    bad = data_without_labels(isbi_dir, tmp_path)
    os.mkfifo(bad / "train-labels.tif")
    ports = free_ports(2)
    chief = Worker(ports, 0, train_flags(isbi_dir, tmp_path / "w0", "--cluster_timeout", "20"))
    peer = Worker(ports, 1, train_flags(bad, tmp_path / "w1", "--cluster_timeout", "20"))
    with workers(chief, peer):
        assert peer.finish(timeout=120) == 2
        assert "train-labels.tif" in peer.last_line() and "waiting for" not in peer.output
        assert chief.finish(timeout=120) == 4
    assert "worker 1" in chief.last_line() and "did not join" in chief.last_line()


@workers_test
def test_a_peer_failing_while_the_model_is_built_is_one_line_and_status_4(isbi_dir, tmp_path):
    """Worker 1's labels are cut short: their header passes the check before joining, reading them fails."""
    import tifffile

    bad = data_without_labels(isbi_dir, tmp_path)
    labels = tifffile.imread(isbi_dir / "train-labels.tif")
    tifffile.imwrite(bad / "train-labels.tif", labels)
    size = (bad / "train-labels.tif").stat().st_size
    os.truncate(bad / "train-labels.tif", size // 2)
    ports = free_ports(2)
    chief = Worker(ports, 0, train_flags(isbi_dir, tmp_path / "w0"))
    peer = Worker(ports, 1, train_flags(bad, tmp_path / "w1"))
    with workers(chief, peer):
        assert peer.finish(timeout=300) == 2, peer.output[-2000:]
        assert chief.finish(timeout=300) == 4, chief.output[-2000:]
    assert re.match(r"unet2d.py: error: lost (worker 1|another worker) while (building the model|reading the data)",
                    chief.last_line()), chief.output[-3000:]
    assert "Traceback" not in chief.output


@workers_test
def test_a_peer_killed_during_evaluation_is_one_line_and_status_4(isbi_dir, tmp_path):
    assert run_cli(*train_flags(isbi_dir, tmp_path, "--max_steps", "1")).returncode == 0
    flags = ["--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0", "--batch_size", "1",
             "--dtype", "fp32", "--overlays", "0", "--model_dir", str(tmp_path / "model"),
             "--log_dir", str(tmp_path / "eval")]
    ports = free_ports(2)
    chief, peer = Worker(ports, 0, flags), Worker(ports, 1, flags)
    with workers(chief, peer):
        chief.read_until(r"CHECKPOINT restored", 300)
        peer.process.kill()  # by PID, while both evaluate
        killed = time.monotonic()
        assert chief.finish(timeout=300) == 4, chief.output[-3000:]
    assert time.monotonic() - killed < 200
    assert chief.last_line().startswith("unet2d.py: error: lost worker 1 while evaluating") or \
        chief.last_line().startswith("unet2d.py: error: lost another worker while evaluating"), chief.output[-3000:]
    assert "Traceback" not in chief.output


@pytest.mark.parametrize("message, rank, has_chief, expected", [
    ("{{function_node x_device_/job:worker/replica:0/task:0/device:CPU:0}} Collective ops is aborted by: Error "
     "reported from /job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):\n"
     "/job:worker/replica:0/task:1", 0, False, "worker 1"),
    ("The following tasks are unhealthy: /job:worker/replica:0/task:0", 0, True, "worker 1"),
    ("failed to connect to all addresses", 0, False, None),
    ("/job:worker/replica:0/task:0 only names us", 0, False, None),
])
def test_the_lost_worker_is_read_from_tensorflows_message(message, rank, has_chief, expected):
    from runtime.execution.distribution import lost_worker

    assert lost_worker(message, rank, has_chief) == expected


def test_the_wait_returns_once_every_peer_answers_and_holds_our_port_meanwhile():
    from runtime.execution.cluster import wait_for_peers

    ports = free_ports(2)
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    peer.bind(("127.0.0.1", ports[1]))
    peer.listen(8)
    said: list[str] = []
    with peer:
        wait_for_peers([f"127.0.0.1:{port}" for port in ports], 0, 10, said.append)
    assert said == []


def test_the_wait_names_the_missing_and_refuses_a_taken_port():
    from common.errors import PeersMissing, UserInputError
    from runtime.execution.cluster import wait_for_peers

    ports = free_ports(3)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    said: list[str] = []
    with pytest.raises(PeersMissing, match=rf"worker 1 \(127.0.0.1:{ports[1]}\), worker 2 .* within 3 s"):
        wait_for_peers(addresses, 0, 3, said.append)
    assert said and said[0].startswith(f"waiting for 2 of 3 workers: worker 1 (127.0.0.1:{ports[1]})")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[0]))
        squatter.listen(1)
        with pytest.raises(UserInputError, match=f"port {ports[0]} is in use"):
            wait_for_peers(addresses, 0, 3, said.append)


@workers_test
def test_the_launcher_passes_a_signal_on_before_the_first_step(isbi_dir, tmp_path):
    """SIGTERM to the launcher while its workers start: each ends at once with its line, the launcher with 143."""
    import sys

    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "launch_workers.py"), "-n", "2", "--all_output", "--",
         *unet2d_command(*train_flags(isbi_dir, tmp_path), "--distribution", "multi_worker")[1:]],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    try:
        while len(pids) < 2:
            line = launcher.stderr.readline()
            assert line, "the launcher ended before naming its workers"
            pids += [int(pid) for pid in re.findall(r"worker \d is process (\d+)", line)]
        for pid in pids:  # past Python's start-up: each worker's own stop handler is in place
            wait_until(lambda pid=pid: catches(pid, signal.SIGTERM), f"worker process {pid} handling SIGTERM",
                       alive=lambda: launcher.poll() is None)
        launcher.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, _ = launcher.communicate(timeout=60)
    finally:
        for pid in [*pids, launcher.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.wait(timeout=30)
    assert time.monotonic() - sent < 15
    assert launcher.returncode == 128 + signal.SIGTERM, out[-2000:]
    for rank in (0, 1):
        assert re.search(rf"^\[{rank}\] unet2d.py: stopped by SIGTERM while ", out, re.MULTILINE), out[-2000:]
    assert "Traceback" not in out
