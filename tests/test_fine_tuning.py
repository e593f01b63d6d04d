"""--init_from: a run starts from a trained model's weights (any kind this project writes), with another class
count, optionally with its encoder fixed; bad sources are one line and status 2, and the source is never touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.compat import keras
from common.errors import UserInputError
from model.unet import build_unet
from runtime.inference.export import export_model
from runtime.loop import warm_start
from runtime.loop.checkpoints import checkpoint_dir, latest
from runtime.parse_results import read_log
from tests.conftest import TEST_BASE_FILTERS, layer_weights, run_main

SHORT = ("--synth_data", "--exec_mode", "train", "--batch_size", "1", "--dtype", "fp32", "--log_every", "1")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A model dir trained for two steps with two classes: what a user would start from."""
    root = tmp_path_factory.mktemp("source")
    done = run_main(*SHORT, "--max_steps", "2", "--model_dir", str(root / "model"), "--log_dir", str(root / "logs"))
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "model"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def new_records(log: Path, since: int) -> list[dict]:
    return read_log(log)[since:]


@pytest.mark.slow  # short trainings in this process
def test_another_class_count_with_the_encoder_frozen_then_resumed(source, tmp_path):
    """Every layer but the output layer comes from the source; the frozen encoder's weights come out
    byte-identical; resuming takes the run's own checkpoint (its own checkpoints win over --init_from)."""
    before = snapshot(source)
    target = ("--num_classes", "3", "--init_from", str(source), "--freeze_encoder",
              "--model_dir", str(tmp_path / "model"), "--log_dir", str(tmp_path / "logs"))
    done = run_main(*SHORT, "--max_steps", "2", *target)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_log(tmp_path / "logs" / "log.json")
    started = [r["data"] for r in records if r.get("step") == "CHECKPOINT" and "initialised_from" in r["data"]]
    assert len(started) == 1 and started[0]["fresh_layers"] == ["output_logits"], started
    assert started[0]["source_classes"] == 2 and "output_logits" not in started[0]["loaded"]
    assert [tuple(r["step"]) for r in records if isinstance(r.get("step"), list) and r["step"]][0] == (1, 2)

    original = layer_weights(latest(checkpoint_dir(source)), 2)
    tuned = layer_weights(latest(checkpoint_dir(tmp_path / "model")), 3)
    assert latest(checkpoint_dir(tmp_path / "model")).endswith("checkpoint-2")
    encoder = [name for name in tuned if warm_start.is_encoder(name)]
    assert len(encoder) == 8 and set(started[0]["loaded"]) == set(tuned) - {"output_logits"}
    for name in encoder:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(original[name], tuned[name], strict=True)), name
    decoder = [name for name in tuned if not warm_start.is_encoder(name) and name != "output_logits"]
    assert all(any(not np.array_equal(a, b) for a, b in zip(original[name], tuned[name], strict=True))
               for name in decoder)

    logged = len(records)
    done = run_main(*SHORT, "--max_steps", "3", "--resume_training", *target)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = [r["data"] for r in new_records(tmp_path / "logs" / "log.json", logged) if r.get("step") == "CHECKPOINT"]
    assert any(r.get("restored", "").endswith("checkpoint-2") and r.get("step") == 2 for r in resumed), resumed
    assert not any("initialised_from" in r for r in resumed)
    assert snapshot(source) == before


@pytest.mark.slow  # short trainings in this process
def test_frozen_for_the_first_steps_only(source, tmp_path):
    done = run_main(*SHORT, "--max_steps", "2", "--init_from", str(source), "--freeze_encoder", "1",
                              "--model_dir", str(tmp_path / "model"), "--log_dir", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr[-2000:]
    original = layer_weights(latest(checkpoint_dir(source)), 2)
    tuned = layer_weights(latest(checkpoint_dir(tmp_path / "model")), 2)
    assert not np.array_equal(original["input_conv1"][0], tuned["input_conv1"][0])  # step 2 trained the encoder


@pytest.mark.slow  # short trainings in this process
def test_every_kind_of_source_gives_the_same_weights(source, tmp_path):
    """A model dir, a checkpoint prefix, an export folder, its .keras file and its SavedModel."""
    prefix = latest(checkpoint_dir(source))
    trained = build_unet(0, 2, base_filters=TEST_BASE_FILTERS)
    tf.train.Checkpoint(model=trained).restore(prefix).expect_partial()
    export = tmp_path / "export"
    export_model(trained, export)
    expected = [v.numpy() for v in trained.weights]
    for given in (source, Path(prefix), export, export / "unet2d.keras", export / "saved_model"):
        found = warm_start.find_source(str(given), tmp_path / "run", TEST_BASE_FILTERS, pytest.fail)
        assert (found.width, found.classes) == (TEST_BASE_FILTERS, 2), given
        model = build_unet(1, 2, base_filters=TEST_BASE_FILTERS)
        loaded, fresh = warm_start.initialise(model, found, 1)
        assert fresh == [] and len(loaded) == 23, given
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(expected, model.weights, strict=True)), given


@pytest.mark.slow  # the source is a short training
@pytest.mark.parametrize("case", ["missing", "inside the model dir", "damaged", "another width", "no UNet",
                                  "not a model"])
def test_a_bad_source_is_one_line_and_status_2_and_left_as_it_was(source, tmp_path, case):
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    model_dir, width = tmp_path / "run", str(TEST_BASE_FILTERS)
    given, message = copy, ""
    if case == "missing":
        given, message = tmp_path / "nowhere", "no such file"
    elif case == "inside the model dir":
        model_dir, message = copy, "inside this run's --model_dir"
    elif case == "damaged":
        for data in (copy / "model_checkpoint").glob("*.data-*"):
            data.write_bytes(data.read_bytes()[:100])
        message = "is damaged"
    elif case == "another width":
        width, message = "16", f"holds a UNet of width {TEST_BASE_FILTERS}; this run builds width 16"
    elif case == "no UNet":
        dense = keras.layers.Dense(3)
        dense.build((None, 4))
        given = Path(tf.train.Checkpoint(model=dense).write(str(tmp_path / "other" / "ckpt")))
        message = "holds no UNet"
    elif case == "not a model":
        given = tmp_path / "empty"
        given.mkdir()
        message = "not a trained model"
    before = snapshot(copy)
    done = run_main(*SHORT, "--max_steps", "1", "--init_from", str(given), "--base_filters", width,
                              "--model_dir", str(model_dir), "--log_dir", str(tmp_path / "logs"))
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("unet2d.py: warning:")]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("unet2d.py: error: --init_from"), \
        done.stderr
    assert message in lines[0], lines[0]
    assert snapshot(copy) == before
    assert not (model_dir / "model_checkpoint").exists() or model_dir == copy


@pytest.mark.parametrize("argv, message", [
    (["--exec_mode", "evaluate", "--fold", "0", "--init_from", "x"], "--exec_mode evaluate does not train"),
    (["--freeze_encoder"], "give --init_from too"),
    (["--init_from", "x", "--freeze_encoder", "0"], "must be 'all' or a number of steps of at least 1"),
])
def test_flag_errors(argv, message):
    done = run_main("--synth_data", *argv)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr


def test_find_source_refuses_what_is_not_there(tmp_path):
    with pytest.raises(UserInputError, match="no such file"):
        warm_start.find_source(str(tmp_path / "x"), tmp_path / "run", 8, print)
