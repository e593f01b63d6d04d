"""End to end: unet2d.py on the real ISBI data, as a user runs it.

The runs the module's tests share (training, resuming) and the full-width run
are subprocesses, as a user starts them, and so are the runs about the process
itself (a debug dump, special files that could hang it). The others call
``unet2d.main`` in this process (``run_main``), which gives the same exit
status and output without a new TensorFlow start each. Few steps at batch 1 keep the full model affordable on
a 2-core CPU.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from data_loading.data_loader import fold_indices
from runtime.parse_results import merged_data, read_log
from tests.conftest import run_cli, run_main
from tests.test_data_loader import BAD_ISBI, break_isbi

pytestmark = pytest.mark.slow  # every test here runs unet2d.py

EVAL_KEYS = ("eval_ce_loss", "eval_dice_loss", "eval_total_loss", "eval_dice_score", "accuracy", "loss")


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(isbi_dir, tmp_path_factory):
    """Two bf16 steps of fold 0 with evaluation after each, TensorBoard on, old checkpoints present."""
    root = tmp_path_factory.mktemp("trained")
    model_dir, log_dir = root / "model", root / "logs"
    (model_dir / "model_checkpoint").mkdir(parents=True)
    (model_dir / "model_checkpoint" / "stale-checkpoint").write_text("old")
    (model_dir / "notes.txt").write_text("the user's own file")
    result = ok(run_cli("--data_dir", str(isbi_dir), "--fold", "0", "--max_steps", "2", "--batch_size", "1",
                        "--log_every", "1", "--evaluate_every", "1", "--tensorboard_logging",
                        "--model_dir", str(model_dir), "--log_dir", str(log_dir)))
    return model_dir, log_dir, result


@pytest.mark.slow
def test_the_recipes_model_end_to_end(isbi_dir, tmp_path):
    """The one CLI run of the full-width UNet (every other test runs its code paths narrower): a step, a
    checkpoint of the recipe's shapes, and the evaluation, in the precision --dtype auto picks."""
    model_dir = tmp_path / "model"
    ok(run_cli("--data_dir", str(isbi_dir), "--fold", "0", "--max_steps", "1", "--batch_size", "1",
               "--base_filters", "64", "--overlays", "0", "--model_dir", str(model_dir), "--log_dir", str(tmp_path)))
    records = read_log(tmp_path / "log.json")
    assert merged_data(records, "PARAMETER")["base_filters"] == 64
    assert merged_data(records, "SETUP")["precision"].startswith(("bf16 (auto: ", "fp32 (auto: "))
    assert set(EVAL_KEYS) | {"eval_v_rand", "eval_v_info"} <= merged_data(records, []).keys()
    import tensorflow as tf
    shapes = tf.train.load_checkpoint(str(model_dir / "model_checkpoint" / "checkpoint-1")).get_variable_to_shape_map()
    kernels = sorted(tuple(shape) for shape in shapes.values() if len(shape) == 4)
    assert (3, 3, 1, 64) in kernels and (3, 3, 1024, 1024) in kernels and (1, 1, 64, 2) in kernels


def test_training_logs_split_losses_and_metrics(trained):
    model_dir, log_dir, result = trained
    records = read_log(log_dir / "log.json")
    split = merged_data(records, "DATA")
    train, val = fold_indices(30, 0, 123)
    assert split["train_slices"] == train.tolist() and split["val_slices"] == val.tolist()
    assert f"val_slices : {val.tolist()}" in result.stdout
    assert merged_data(records, "SETUP")["device"].startswith("CPU")
    steps = [r["step"] for r in records if isinstance(r.get("step"), list) and len(r["step"]) == 2]
    assert steps == [[1, 2], [2, 2]]
    for record in records:
        if record.get("step") == [2, 2]:
            assert math.isfinite(record["data"]["train_total_loss"]) and record["data"]["IPS"] > 0
            assert 0.5 <= record["data"]["train_majority_share"] <= 1.0  # two classes: the larger has half or more
    evals = [r["data"] for r in records if r.get("step") == [] and "eval_dice_score" in r["data"]]
    assert len(evals) == 2  # after step 1 (--evaluate_every 1) and at the end
    for metrics in evals:
        assert set(EVAL_KEYS) <= metrics.keys()
        assert 0.0 <= metrics["eval_dice_score"] <= 1.0
        assert metrics["eval_total_loss"] == pytest.approx(metrics["eval_ce_loss"] + metrics["eval_dice_loss"])
    assert "DLL " in result.stdout and "eval_dice_score : " in result.stdout


def test_only_the_checkpoint_folder_is_cleared(trained):
    model_dir, _, _ = trained
    assert (model_dir / "notes.txt").read_text() == "the user's own file"
    assert not (model_dir / "model_checkpoint" / "stale-checkpoint").exists()
    assert (model_dir / "model_checkpoint" / "checkpoint-2.index").exists()


def test_tensorboard_events(trained):
    import tensorflow as tf
    _, log_dir, _ = trained

    def tags(folder: Path) -> set[str]:
        found = set()
        for events in folder.glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                found.update(value.tag for value in event.summary.value)
        return found

    train_tags, eval_tags = tags(log_dir), tags(log_dir / "eval")
    assert {"train_ce_loss", "train_dice_loss", "IPS", "_hparams_/session_start_info"} <= train_tags
    assert {"eval_dice_score", "eval_ce_loss", "eval_start_timestamp", "eval_end_timestamp"} <= eval_tags


@pytest.fixture(scope="module")
def resumed(trained, isbi_dir, tmp_path_factory):
    model_dir, _, _ = trained
    log_dir = tmp_path_factory.mktemp("resumed")
    result = ok(run_cli("--data_dir", str(isbi_dir), "--exec_mode", "train_and_predict", "--resume_training",
                        "--max_steps", "3", "--batch_size", "1", "--log_every", "1",
                        "--model_dir", str(model_dir), "--log_dir", str(log_dir)))
    return model_dir, log_dir, result


def test_resume_continues_from_saved_step(resumed):
    model_dir, log_dir, _ = resumed
    records = read_log(log_dir / "log.json")
    restored = [r["data"] for r in records if r.get("step") == "CHECKPOINT" and "restored" in r["data"]]
    assert restored and restored[0]["step"] == 2
    steps = [r["step"] for r in records if isinstance(r.get("step"), list) and len(r["step"]) == 2]
    assert steps == [[3, 3]]
    assert (model_dir / "model_checkpoint" / "checkpoint-3.index").exists()


def test_prediction_tiff(resumed):
    model_dir, _, _ = resumed
    masks = tifffile.imread(model_dir / "predictions" / "test-masks.tif")
    assert masks.shape == (30, 512, 512) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 255}
    assert not list((model_dir / "predictions").glob("*.part"))


def test_evaluate_mode_restores_latest_checkpoint(resumed, isbi_dir, tmp_path):
    model_dir, _, _ = resumed
    ok(run_main("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0", "--batch_size", "2",
                "--dtype", "fp32", "--model_dir", str(model_dir), "--log_dir", str(tmp_path)))
    records = read_log(tmp_path / "log.json")
    restored = merged_data(records, "CHECKPOINT")["restored"]
    assert restored.endswith("checkpoint-3")
    assert set(EVAL_KEYS) <= merged_data(records, []).keys()


def test_checkpoint_of_another_width_names_the_flag(resumed, isbi_dir, tmp_path):
    model_dir, _, _ = resumed
    result = run_main("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0",
                      "--base_filters", "16", "--model_dir", str(model_dir), "--log_dir", str(tmp_path))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith("unet2d.py: error:") and "trained with another --base_filters: 8, this run 16" in last, last


def test_evaluate_without_checkpoint_is_an_error(isbi_dir, tmp_path):
    result = run_main("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0",
                      "--model_dir", str(tmp_path / "empty"), "--log_dir", str(tmp_path))
    assert result.returncode == 2 and "no checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_benchmark_without_data_dir(tmp_path):
    """Synthetic data, float32, timing after warm-up, debug dump; no checkpoint, model_dir untouched."""
    model_dir, dump = tmp_path / "model", tmp_path / "dump"
    ok(run_cli("--synth_data", "--exec_mode", "train", "--benchmark", "--dtype", "fp32", "--batch_size", "1",
               "--max_steps", "3", "--warmup_steps", "1", "--model_dir", str(model_dir),
               "--log_dir", str(tmp_path), "--dump_config", str(dump)))
    stats = merged_data(read_log(tmp_path / "log.json"), [])
    for key in ("throughput_train", "latency_train_mean", "latency_train_90", "latency_train_95", "latency_train_99"):
        assert stats[key] > 0, key
    assert not model_dir.exists()
    assert any(dump.rglob("*")), "the debug dump wrote nothing"


def test_predict_benchmark_with_xla(tmp_path):
    ok(run_main("--synth_data", "--exec_mode", "predict", "--benchmark", "--xla", "--batch_size", "2",
                "--max_steps", "3", "--warmup_steps", "1", "--model_dir", str(tmp_path / "m"),
                "--log_dir", str(tmp_path)))
    stats = merged_data(read_log(tmp_path / "log.json"), [])
    assert stats["throughput_test"] > 0 and stats["latency_test_99"] > 0


def test_predict_benchmark_times_the_trained_weights_of_the_model_dir(tmp_path):
    """Its checkpoint is looked for where training writes it (<model_dir>/model_checkpoint)."""
    model_dir = tmp_path / "m"
    ok(run_main("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--model_dir", str(model_dir),
                "--log_dir", str(tmp_path / "train")))
    ok(run_main("--synth_data", "--exec_mode", "predict", "--benchmark", "--batch_size", "1",
                "--max_steps", "2", "--warmup_steps", "1", "--model_dir", str(model_dir),
                "--log_dir", str(tmp_path / "bench")))
    restored = merged_data(read_log(tmp_path / "bench" / "log.json"), "CHECKPOINT")["restored"]
    assert restored == str(model_dir / "model_checkpoint" / "checkpoint-1")


@pytest.mark.parametrize("case", ["size differs", "truncated TIFF"])
def test_bad_data_is_one_line_status_2_and_nothing_deleted(isbi_copy, tmp_path, case):
    """One problem found from the headers, one from the pixels; every other kind is checked at the loader
    (tests/test_data_loader.py), whose error is what the CLI prints."""
    break_isbi(isbi_copy, case)
    model_dir = tmp_path / "model"
    (model_dir / "model_checkpoint").mkdir(parents=True)
    (model_dir / "model_checkpoint" / "keep").write_text("x")
    before = {p.name: p.read_bytes() for p in isbi_copy.iterdir()}
    result = run_main("--data_dir", str(isbi_copy), "--fold", "0", "--max_steps", "1",
                      "--model_dir", str(model_dir), "--log_dir", str(tmp_path / "logs"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert re.search(BAD_ISBI[case], lines[-1]) and lines[-1].startswith("unet2d.py: error:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in isbi_copy.iterdir()} == before  # inputs are only read
    assert (model_dir / "model_checkpoint" / "keep").exists()


def test_bad_output_paths_and_config(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = run_main("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--model_dir", str(a_file),
                      "--log_dir", str(tmp_path))
    assert result.returncode == 2 and "--model_dir is not a folder" in result.stderr
    assert a_file.read_text() == "x"
    squatted = tmp_path / "squatted"  # a file where the checkpoint folder goes: refused, never cleared
    squatted.mkdir()
    (squatted / "model_checkpoint").write_text("mine")
    result = run_main("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--model_dir", str(squatted),
                      "--log_dir", str(tmp_path / "squatted-logs"))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "model_checkpoint is a file" in last and "Traceback" not in result.stderr, last
    assert (squatted / "model_checkpoint").read_text() == "mine"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    result = run_main("--synth_data", "--bf16_config_path", str(bad_json),
                      "--log_dir", str(tmp_path))
    assert result.returncode == 2 and "not valid JSON" in result.stderr


SPECIAL = {"fifo": "is a FIFO (named pipe)", "device": "is a character device",
           "dangling link": "is a dangling symbolic link"}


@pytest.mark.parametrize("flag, kind", [
    ("--predict_input", "fifo"), ("--predict_input", "device"), ("--predict_input", "dangling link"),
    ("--bf16_config_path", "fifo"), ("--data_dir", "fifo"),
])
def test_special_files_as_input_are_refused_without_hanging(tmp_path, flag, kind):
    message = SPECIAL[kind]
    if kind == "fifo":
        path = tmp_path / "pipe.tif"
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    elif kind == "device":
        path = Path("/dev/zero")  # reading it never ends
    else:
        path = tmp_path / "gone.tif"
        path.symlink_to(tmp_path / "deleted.tif")
    if flag == "--predict_input":
        argv = ["--exec_mode", "predict", "--predict_input", str(path)]
    elif flag == "--bf16_config_path":
        argv = ["--synth_data", "--exec_mode", "train", "--bf16_config_path", str(path)]
    else:
        argv = ["--exec_mode", "predict", "--data_dir", str(path)]
    result = run_cli(*argv, "--model_dir", str(tmp_path / "model"), "--log_dir", str(tmp_path / "logs"), timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and message in lines[-1] and flag.lstrip("-").replace("_", " ") in \
        lines[-1].replace("_", " "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
