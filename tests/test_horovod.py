"""Two Horovod workers on the real data, under mpirun and horovodrun (TF 2.15 stack).

After a few steps the two ranks' weights (and Adam moments) must be identical,
and must differ when the ranks keep their own gradients (no all-reduce).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from runtime.parse_results import final_eval, merged_data, read_log
from tests.conftest import ROOT, run_cli, unet2d_command, write_source_checkpoint
from tests.horovod_support import MPIRUN, horovod_available, require_horovod

# every test here runs unet2d.py processes; serial: ranks under mpirun
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def launch(launcher, args, extra_env=None, timeout=600, program=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(extra_env or {})}
    command = [*launcher, *unet2d_command(*args)]
    if program is not None:  # the same command line, another program in unet2d.py's place
        command[len(launcher) + 1] = str(program)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def train_two_workers(launcher, isbi_dir, out, extra_env=None, extra_args=(), program=None):
    args = ["--data_dir", str(isbi_dir), "--exec_mode", "train", "--fold", "0", "--batch_size", "1",
            "--max_steps", "6", "--log_every", "1", "--dtype", "fp32", "--use_horovod", "--log_all_workers",
            "--model_dir", str(out), "--log_dir", str(out / "logs"), *extra_args]
    result = launch(launcher, args, extra_env, program=program)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def checkpoint_values(folder):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(folder))
    values = {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}
    return {name: value for name, value in values.items() if value.dtype.kind == "f"}


def assert_ranks(out, identical):
    first = checkpoint_values(out / "model_checkpoint" / "worker_0")
    second = checkpoint_values(out / "model_checkpoint" / "worker_1")
    assert first.keys() == second.keys() and len(first) > 46
    same = all(np.array_equal(first[name], second[name]) for name in first)
    assert same == identical


@pytest.fixture
def horovod():
    require_horovod()


def test_mpirun_ranks_stay_identical(horovod, isbi_dir, tmp_path):
    """Started from a trained model (--init_from) with the encoder frozen for the first 2 of 3 steps: every rank
    loads it, and the ranks stay identical across the switch from the frozen step to the whole one."""
    source, out = write_source_checkpoint(tmp_path / "source"), tmp_path / "run"
    train_two_workers(MPIRUN, isbi_dir, out, extra_args=("--init_from", source, "--freeze_encoder", "2"))
    assert_ranks(out, identical=True)
    for rank in (0, 1):
        records = read_log(out / "logs" / f"worker_{rank}" / "log.json")
        started = merged_data(records, "CHECKPOINT")
        assert started["initialised_from"] == source and started["fresh_layers"] == [], started
        steps = [r["step"] for r in records if isinstance(r.get("step"), list) and len(r["step"]) == 2]
        assert steps[-1] == [3, 3]  # max_steps 6 shared by 2 workers
        setup = merged_data(records, "SETUP")
        assert setup["distribution"] == f"Horovod worker {rank} of 2" and setup["engine"] == "horovod"
        assert setup["workers"] == 2 and setup["replicas"] == 2
        assert merged_data(records, [])["throughput_train"] > 0


def test_without_allreduce_ranks_drift_apart(horovod, isbi_dir, tmp_path):
    train_two_workers(MPIRUN, isbi_dir, tmp_path, program=ROOT / "tests" / "unet2d_without_allreduce.py")
    assert_ranks(tmp_path, identical=False)


def test_horovodrun_ranks_stay_identical(horovod, isbi_dir, tmp_path):
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    # With the U-Net paper's options, so they are shown to run under Horovod too.
    train_two_workers([horovodrun, "-np", "2", "--gloo"], isbi_dir, tmp_path,
                      extra_args=("--elastic", "--border_weights"))
    assert_ranks(tmp_path, identical=True)


def test_only_rank_zero_logs_without_log_all_workers(horovod, isbi_dir, tmp_path):
    args = ["--synth_data", "--exec_mode", "train", "--batch_size", "1", "--max_steps", "2", "--use_horovod",
            "--model_dir", str(tmp_path), "--log_dir", str(tmp_path / "logs")]
    result = launch(MPIRUN, args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "logs" / "log.json").is_file() and not (tmp_path / "logs" / "worker_1").exists()
    assert (tmp_path / "model_checkpoint" / "checkpoint-1.index").exists()
    assert result.stdout.count("SETUP device") == 1


def test_a_failing_rank_fails_the_job(horovod, isbi_copy, tmp_path):
    """Rank 1 gets a broken data dir: the job must end non-zero, not hang in an all-reduce."""
    broken = tmp_path / "broken"
    broken.mkdir()
    common = ["--exec_mode", "train", "--fold", "0", "--batch_size", "1", "--max_steps", "20", "--use_horovod",
              "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "l")]
    program = unet2d_command(*common)
    command = [*MPIRUN[:-2], "-np", "1", *program, "--data_dir", str(isbi_copy),
               ":", "-np", "1", *program, "--data_dir", str(broken)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert "data file not found" in result.stderr + result.stdout


@pytest.mark.skipif(horovod_available(), reason="checks the message for a missing Horovod")
def test_use_horovod_without_horovod_says_how_to_install(tmp_path):
    result = run_cli("--synth_data", "--use_horovod", "--log_dir", str(tmp_path))
    assert result.returncode == 2 and "--distribution horovod needs Horovod" in result.stderr
    assert "pip install horovod" in result.stderr


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(horovod, isbi_dir, tmp_path):
    """A scheduler's SIGTERM may reach one rank first: all ranks must still stop, save and exit together."""
    import tensorflow as tf
    args = ["--data_dir", str(isbi_dir), "--exec_mode", "train", "--fold", "0", "--batch_size", "1",
            "--max_steps", "60", "--log_every", "1", "--use_horovod", "--log_all_workers",
            "--checkpoint_every", "0", "--checkpoint_minutes", "0",
            "--model_dir", str(tmp_path), "--log_dir", str(tmp_path / "logs")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([*MPIRUN, *unet2d_command(*args)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "- (2, 30) " in line:
            ranks = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
            os.kill(int(ranks[-1]), signal.SIGTERM)
            break
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "--resume_training" in err
    saved = [tf.train.latest_checkpoint(str(tmp_path / "model_checkpoint" / f"worker_{rank}")) for rank in (0, 1)]
    assert all(saved) and saved[0].rsplit("-", 1)[1] == saved[1].rsplit("-", 1)[1]
    assert int(saved[0].rsplit("-", 1)[1]) < 30


def test_evaluate_with_tta_under_horovod_scores_as_one_process(horovod, isbi_dir, tmp_path):
    """Each rank scores its share of the validation batches in 8 views; the sums give one process's scores."""
    shared = ["--data_dir", str(isbi_dir), "--fold", "0", "--batch_size", "2", "--dtype", "fp32",
              "--model_dir", str(tmp_path / "model")]
    common = ["--exec_mode", "evaluate", "--tta", "--overlays", "0", *shared]
    trained = run_cli("--exec_mode", "train", "--max_steps", "2", *shared, "--log_dir", str(tmp_path / "train"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    single = run_cli(*common, "--log_dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-3000:]
    two = launch(MPIRUN, [*common, "--use_horovod", "--log_dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    scores = [final_eval(read_log(tmp_path / name / "log.json")) for name in ("two", "single")]
    assert merged_data(read_log(tmp_path / "two" / "log.json"), "SETUP")["replicas"] == 2
    for key in ("eval_dice_score", "eval_ce_loss", "eval_v_rand_thinned"):
        assert scores[0][key] == pytest.approx(scores[1][key], rel=1e-5), key
