#!/usr/bin/env python3
"""Start N local training workers with TF_CONFIG, as a cluster scheduler would on N machines.

    python scripts/launch_workers.py -n 2 -- unet2d.py --distribution multi_worker --data_dir ./data ...

Each worker is one process with its own ``TF_CONFIG`` (the same cluster of
free 127.0.0.1 ports, its own task index), its share of the CPU cores (its
thread pools sized to them, and pinned to them where the OS allows) and, with
``--gpu_per_worker``, its own GPU. Rank 0's output is shown (every rank's with
``--all_output``, each line prefixed by its rank). SIGINT and SIGTERM are
passed on to every worker, so they stop together at the same step. When one
worker fails, the others are ended (SIGTERM, then SIGKILL after a grace
period) and the launcher exits with the first failure's status; the output
of a failed worker that was not shown is printed at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRACE_SECONDS = 30.0  # after SIGTERM, before SIGKILL, for the other workers of a failed job
TAIL_LINES = 30  # lines of a hidden worker's output kept for its failure report


def free_ports(count: int) -> list[int]:
    """Ports the OS has just handed out on 127.0.0.1 (held together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def core_blocks(workers: int, threads: int | None) -> list[list[int] | None]:
    """The CPU cores each worker is pinned to: equal consecutive blocks of the cores we may use."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, thread counts only
        return [None] * workers
    per_worker = threads or max(1, len(cores) // workers)
    if per_worker * workers > len(cores):
        return [None] * workers  # more threads than cores: let the OS schedule them
    return [cores[i * per_worker:(i + 1) * per_worker] for i in range(workers)]


def worker_env(rank: int, ports: list[int], threads: int, gpu: bool) -> dict[str, str]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}}),
           "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(min(2, threads)),
           "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = str(rank)
    return env


class Worker:
    """One child process and the thread that copies its output."""

    def __init__(self, rank: int, command: list[str], env: dict[str, str], cores: list[int] | None,
                 show: bool, prefix: bool) -> None:
        self.rank = rank
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.shown = show
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        self.process = subprocess.Popen(command, cwd=os.getcwd(), env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=pin,
                                        start_new_session=True)  # a terminal's Ctrl-C reaches us only
        self._pump = threading.Thread(target=self._copy, args=(prefix,), daemon=True)
        self._pump.start()
        self.ended_at: float | None = None  # when it exited, to tell the first failure from its consequences
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        self.process.wait()
        self.ended_at = time.monotonic()

    def _copy(self, prefix: bool) -> None:
        for line in self.process.stdout:
            self.tail.append(line)
            if self.shown:
                sys.stdout.write(f"[{self.rank}] {line}" if prefix else line)
                sys.stdout.flush()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def finish_output(self) -> None:
        self._pump.join(timeout=10)


def exit_status(returncode: int) -> int:
    """A shell's convention: 128 + N for a worker ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def launch(count: int, command: list[str], all_output: bool, threads: int | None, gpu_per_worker: bool) -> int:
    ports = free_ports(count)
    blocks = core_blocks(count, threads)
    per_worker = threads or max(1, (os.cpu_count() or 1) // count)
    workers: list[Worker] = []
    stop: list[int] = []  # a signal that came while the workers were being started

    def forward(signum: int, frame: object) -> None:
        stop.append(signum)
        for worker in workers:
            worker.signal(signum)

    # Before the first worker starts: a signal at any moment reaches every worker, none is orphaned.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    for rank in range(count):
        env = worker_env(rank, ports, len(blocks[rank] or []) or per_worker, gpu_per_worker)
        workers.append(Worker(rank, command, env, blocks[rank], show=all_output or rank == 0, prefix=all_output))
        if stop:
            workers[-1].signal(stop[0])
    for worker, cores in zip(workers, blocks, strict=True):
        pinned = f", cores {','.join(map(str, cores))}" if cores else ""
        sys.stderr.write(f"launch_workers.py: worker {worker.rank} is process {worker.process.pid}{pinned}\n")
    first_failure: Worker | None = None
    ended_at: float | None = None
    while any(w.process.poll() is None for w in workers):
        failed = [w for w in workers if w.ended_at is not None and w.process.returncode != 0]
        if failed and first_failure is None:
            first_failure = min(failed, key=lambda w: w.ended_at)
            ended_at = time.monotonic()
            for worker in workers:
                worker.signal(signal.SIGTERM)
        if ended_at is not None and time.monotonic() - ended_at > GRACE_SECONDS:
            for worker in workers:
                worker.signal(signal.SIGKILL)
        time.sleep(0.2)
    for worker in workers:
        worker.finish_output()
    if first_failure is None:
        failed = [w for w in workers if w.process.returncode != 0]
        first_failure = min(failed, key=lambda w: w.ended_at or time.monotonic()) if failed else None
    if first_failure is None:
        return 0
    status = exit_status(first_failure.process.returncode)
    if not first_failure.shown:
        sys.stderr.write(f"launch_workers.py: worker {first_failure.rank} failed (status {status}); its last lines:\n")
        sys.stderr.writelines(f"[{first_failure.rank}] {line}" for line in first_failure.tail)
    sys.stderr.write(f"launch_workers.py: worker {first_failure.rank} failed with status {status}; "
                     "ended the other workers\n")
    return status


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch_workers.py",
        description="Run N local workers of a multi-worker job (TF_CONFIG on free loopback ports).",
        usage="%(prog)s -n N [options] -- unet2d.py FLAGS...")
    parser.add_argument("-n", "--num_workers", type=int, required=True, help="worker processes to start")
    parser.add_argument("--all_output", action="store_true", help="show every worker's output, prefixed by rank")
    parser.add_argument("--threads_per_worker", type=int, default=None,
                        help="CPU threads (and pinned cores) per worker (default: the cores divided evenly)")
    parser.add_argument("--gpu_per_worker", action="store_true",
                        help="give worker i only GPU i (CUDA_VISIBLE_DEVICES=i)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the script and its flags")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.num_workers < 1:
        parser.error(f"-n must be at least 1, got {args.num_workers}")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        parser.error(f"--threads_per_worker must be at least 1, got {args.threads_per_worker}")
    if not command:
        parser.error("no command: give it after --, e.g. -- unet2d.py --distribution multi_worker ...")
    if command[0].endswith(".py"):
        command = [sys.executable, *command]
    args.command = command
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return launch(args.num_workers, args.command, args.all_output, args.threads_per_worker, args.gpu_per_worker)


if __name__ == "__main__":
    sys.exit(main())
