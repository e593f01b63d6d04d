"""One training run per model dir: a second is refused at once, readers share, a killed holder's lock is taken over.

Holders are separate processes (record locks never conflict within one
process): small Python helpers for the rules, real training runs for the CLI.
Every wait is bounded, and only the processes started here are ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import UserInputError
from runtime.execution.model_dir_lock import LOCK_FILE, ModelDirLock
from runtime.loop import checkpoints
from runtime.parse_results import read_log
from tests.conftest import ROOT, run_main, unet2d_command

HOLDER = """
import sys
from runtime.execution.model_dir_lock import ModelDirLock
lock = ModelDirLock(sys.argv[1], exclusive=sys.argv[2] == "exclusive", mode="train").acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
lock.release()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the model dir's lock; ended when the test ends."""
    started: list[subprocess.Popen] = []

    def start(kind: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), kind], cwd=ROOT,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_training_run_holds_the_dir_alone(tmp_path, holder):
    trainer = holder("exclusive")
    for exclusive in (True, False):
        with pytest.raises(UserInputError, match=rf"in use by process {trainer.pid} \(train on .* since "):
            ModelDirLock(tmp_path, exclusive=exclusive, mode="train").acquire()


def test_readers_share_the_dir_but_not_with_training(tmp_path, holder):
    reader = holder("shared")
    with ModelDirLock(tmp_path, exclusive=False, mode="evaluate") as second_reader:
        assert second_reader.taken_over is None
    with pytest.raises(UserInputError, match=rf"in use by process {reader.pid} \(reading it"):
        ModelDirLock(tmp_path, exclusive=True, mode="train").acquire()


def test_a_killed_holders_lock_is_taken_over_with_a_warning(tmp_path, holder):
    trainer = holder("exclusive")
    trainer.kill()
    trainer.wait(timeout=30)
    lock = ModelDirLock(tmp_path, exclusive=True, mode="train").acquire()
    assert f"left by process {trainer.pid}" in lock.taken_over and "no longer running" in lock.taken_over
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean end leaves nothing to take over
    with ModelDirLock(tmp_path, exclusive=True, mode="train") as again:
        assert again.taken_over is None


def test_a_cleanly_ended_holder_leaves_no_warning(tmp_path, holder):
    trainer = holder("exclusive")
    trainer.stdin.close()
    assert trainer.wait(timeout=30) == 0
    with ModelDirLock(tmp_path, exclusive=True, mode="train") as lock:
        assert lock.taken_over is None


def train_args(data_dir: Path, root: Path, steps: int, *extra: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--exec_mode", "train", "--fold", "0", "--batch_size", "1",
            "--max_steps", str(steps), "--log_every", "1", "--checkpoint_every", "2",
            "--model_dir", str(root / "model"), "--log_dir", str(root / "logs"), *extra]


def start_training(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(unet2d_command(*args), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(process: subprocess.Popen, step: int, steps: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if f"- ({step}, {steps}) " in line:
            return
        assert time.monotonic() < deadline, "training did not reach the step in time"
    raise AssertionError(f"training ended before step {step}: {process.stderr.read()[-2000:]}")


@pytest.mark.slow
@pytest.mark.serial  # two runs racing for one model dir
def test_a_second_run_on_a_training_dir_is_refused_and_the_first_carries_on(isbi_dir, tmp_path):
    # More steps than the test lets it run: it trains while two more processes start and are refused, takes
    # a step more to show it was not disturbed, and is then killed (the takeover of its lock: the next test).
    steps = 100_000
    first = start_training(train_args(isbi_dir, tmp_path / "first", steps, "--checkpoint_every", "1"))
    try:
        wait_for_step(first, 1, steps)
        begun = time.monotonic()
        same_dir = ["--model_dir", str(tmp_path / "first" / "model")]
        second = run_main(*train_args(isbi_dir, tmp_path / "second", steps, *same_dir))
        assert time.monotonic() - begun < 60
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and f"in use by process {first.pid}" in lines[-1] and "Traceback" not in \
            second.stderr and lines[-1].startswith("unet2d.py: error:"), \
            second.stderr[-2000:]
        # A reader needs a checkpoint to read (checked before the lock): step 1's is saved after its log line.
        wait_for_step(first, 2, steps)
        reader = run_main("--exec_mode", "evaluate", "--data_dir", str(isbi_dir), "--fold", "0",
                          "--model_dir", str(tmp_path / "first" / "model"), "--log_dir", str(tmp_path / "r"))
        assert reader.returncode == 2 and f"in use by process {first.pid}" in reader.stderr
        assert first.poll() is None, "the first run ended before the others were refused: the test proves nothing"
        logged = read_log(tmp_path / "first" / "logs" / "log.json")
        last_step = max(r["step"][0] for r in logged if isinstance(r.get("step"), list) and len(r["step"]) == 2)
        wait_for_step(first, last_step + 1, steps)
    finally:
        first.kill()
        first.wait(timeout=30)
    newest = checkpoints.latest(tmp_path / "first" / "model" / "model_checkpoint")
    assert newest and int(newest.rsplit("-", 1)[1]) >= last_step  # it kept checkpointing while the others were refused


@pytest.mark.slow
@pytest.mark.serial  # a run killed mid-training, then its successor
def test_a_sigkilled_runs_lock_is_taken_over_by_the_resumed_run(isbi_dir, tmp_path):
    args = train_args(isbi_dir, tmp_path, 3)
    killed = start_training(args)
    try:
        wait_for_step(killed, 2, 3)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(timeout=30)
    assert f'"pid": {killed.pid}' in (tmp_path / "model" / LOCK_FILE).read_text()
    resumed = run_main(*args, "--resume_training")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"left by process {killed.pid}" in resumed.stdout and "no longer running" in resumed.stdout
