"""What users see and keep: the progress bar, evaluation pictures and scores, learning curves, export and predict.

One short training run on the real data (module fixture) feeds every test here.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from common.quiet_start import NOISE
from runtime.inference.thinned import BEST_THRESHOLD_FILE, FINER_THRESHOLDS, THRESHOLDS
from runtime.parse_results import final_eval, read_log
from runtime.plot_curves import main as plot_main
from tests.conftest import ROOT, run_cli, run_main, run_predict, unet2d_command

STEPS = 3


def run_on_terminal(*args: str) -> tuple[int, str]:
    """unet2d.py with its stdout on a pseudo-terminal, as in an interactive shell."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "160"}
    process = subprocess.Popen(unet2d_command(*args), cwd=ROOT, env=env,
                               stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=600), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def trained(isbi_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    status, terminal = run_on_terminal(
        "--data_dir", str(isbi_dir), "--exec_mode", "train_and_evaluate", "--fold", "0", "--batch_size", "1",
        "--max_steps", str(STEPS), "--log_every", "1", "--evaluate_every", "2", "--overlays", "2",
        "--model_dir", str(out / "model"), "--log_dir", str(out / "fold0"))
    assert status == 0, terminal[-3000:]
    return out, terminal


@pytest.mark.slow
def test_progress_bar_on_a_terminal(trained):
    _, terminal = trained
    assert "\r\x1b[K[" in terminal  # redrawn in place
    assert f"step {STEPS}/{STEPS}" in terminal and "img/s" in terminal and "left" in terminal
    assert "(3, 3) train_ce_loss" in terminal  # the log lines still print in full


@pytest.mark.slow
def test_no_progress_bar_when_output_is_a_file(isbi_dir, tmp_path):
    result = run_cli("--synth_data", "--exec_mode", "train", "--max_steps", "2", "--batch_size", "1",
                     "--log_every", "1", "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "l"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stdout and "img/s" not in result.stdout
    assert "(2, 2) train_ce_loss" in result.stdout


@pytest.mark.slow
def test_evaluation_reports_challenge_scores_and_draws_pictures(trained, isbi_dir):
    out, _ = trained
    records = read_log(out / "fold0" / "log.json")
    result = final_eval(records)
    assert result["global_step"] == STEPS
    for key in ("eval_v_rand", "eval_v_info", "eval_mask_dice", "eval_v_rand_thinned", "eval_v_info_thinned"):
        assert 0.0 <= result[key] <= 1.0
    for key in ("eval_v_rand_thinned_threshold", "eval_v_info_thinned_threshold"):
        assert result[key] in THRESHOLDS
    pictures = sorted((out / "fold0" / "overlays").glob("*.png"))
    assert len(pictures) == 4  # 2 slices at step 2 and at step 3
    with Image.open(pictures[0]) as picture:
        assert picture.size == (512, 512) and picture.mode == "RGB"
        colours = np.asarray(picture).reshape(-1, 3)
    assert np.any(colours[:, 1] > colours[:, 0] + 60)  # green: some true membranes drawn


@pytest.mark.slow
def test_evaluate_alone_scores_the_checkpoint_at_its_step_with_tiles(trained, isbi_dir, tmp_path):
    out, _ = trained
    result = run_main("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0",
                      "--batch_size", "2", "--predict_strategy", "tile", "--overlays", "1",
                      "--model_dir", str(out / "model"), "--log_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    scores = final_eval(read_log(tmp_path / "log.json"))
    assert scores["global_step"] == STEPS and 0.0 <= scores["eval_v_rand"] <= 1.0
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == [f"eval_step{STEPS}_slice19.png"]


@pytest.mark.slow
def test_learning_curves_plot(trained, tmp_path):
    out, _ = trained
    second = tmp_path / "fold1"
    second.mkdir()
    (second / "log.json").write_bytes((out / "fold0" / "log.json").read_bytes())
    target = tmp_path / "curves.png"
    assert plot_main([str(out / "fold0" / "log.json"), str(second / "log.json"), "-o", str(target)]) == 0
    with Image.open(target) as picture:
        assert picture.format == "PNG" and picture.size == (1848, 396)
    assert plot_main([str(tmp_path / "missing.json"), "-o", str(target)]) == 2


def test_curves_are_named_by_what_they_hold_and_by_run_only_when_there_are_several():
    from runtime.plot_curves import PANELS, SERIES_NAMES, series_label

    assert {key for _, keys in PANELS for key, _ in keys} == set(SERIES_NAMES)
    assert series_label("train", "eval_mask_dice", several_runs=False) == "Dice of the masks"
    assert series_label("fold3", "eval_v_rand_thinned", several_runs=True) == "fold3: V_Rand, thinned (organisers')"


@pytest.fixture(scope="module")
def exported(trained):
    out, _ = trained
    model_dir = out / "model"
    result = run_main("--exec_mode", "export", "--model_dir", str(model_dir), "--log_dir", str(out / "export-logs"))
    assert result.returncode == 0, result.stderr[-2000:]
    return model_dir / "export"


@pytest.mark.slow
def test_export_load_and_predict_give_the_same_masks(trained, exported, isbi_dir, tmp_path):
    """predict.py runs as a user runs it once (a process, on the export folder); the other loads in this process."""
    out, _ = trained
    model_dir, export = out / "model", exported
    slices = np.asarray(tifffile.imread(isbi_dir / "test-volume.tif")[:2, :300, :450])
    folder = tmp_path / "my-slices"
    folder.mkdir()
    for index, image in enumerate(slices):
        Image.fromarray(image).save(folder / f"s{index}.png")

    assert (export / "unet2d.keras").is_file() and (export / "saved_model" / "saved_model.pb").is_file()

    for strategy in ("resize", "tile"):
        result = run_main("--exec_mode", "predict", "--dtype", "fp32", "--model_dir", str(model_dir),
                          "--predict_input", str(folder), "--predict_strategy", strategy, "--batch_size", "2",
                          "--log_dir", str(tmp_path / "l"))
        assert result.returncode == 0, result.stderr[-2000:]
        from_checkpoint = tifffile.imread(model_dir / "predictions" / "my-slices-masks.tif")
        assert from_checkpoint.shape == (2, 300, 450) and set(np.unique(from_checkpoint)) <= {0, 255}
        models = (export, export / "saved_model") if strategy == "resize" else (export / "saved_model",)
        for model in models:
            target = tmp_path / f"{strategy}-{model.name}.tif"
            flags = [str(model), str(folder), "-o", str(target), "--strategy", strategy]
            if model == export:
                quiet = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
                done = subprocess.run([sys.executable, str(ROOT / "predict.py"), *flags], cwd=ROOT,
                                      capture_output=True, text=True, env={**quiet, "CUDA_VISIBLE_DEVICES": ""},
                                      timeout=600)
                # as unet2d.py: none of TensorFlow's start-up lines (cuInit, cuDNN, oneDNN) on a machine without
                # a GPU, with TF_CPP_MIN_LOG_LEVEL unset
                assert not [line for line in done.stderr.splitlines() if NOISE.match(line)], done.stderr[:2000]
            else:
                done = run_predict(*flags)
            assert done.returncode == 0, done.stderr[-2000:]
            np.testing.assert_array_equal(tifffile.imread(target), from_checkpoint, err_msg=f"{strategy} {model}")
    assert len(list((model_dir / "predictions" / "overlays").glob("s*.png"))) == 2


@pytest.mark.slow
def test_tta_and_cell_labels_from_the_checkpoint_and_the_export_agree(trained, exported, isbi_dir, tmp_path):
    out, _ = trained
    model_dir = out / "model"
    stack = tmp_path / "two.tif"
    tifffile.imwrite(stack, np.asarray(tifffile.imread(isbi_dir / "test-volume.tif")[:2, :300, :450]))
    result = run_main("--exec_mode", "predict", "--dtype", "fp32", "--model_dir", str(model_dir), "--tta",
                      "--predict_input", str(stack), "--predict_strategy", "tile", "--overlays", "0",
                      "--cell_labels", "--log_dir", str(tmp_path / "l"))
    assert result.returncode == 0, result.stderr[-2000:]
    from_checkpoint = tifffile.imread(model_dir / "predictions" / "two-masks.tif")
    cells = tifffile.imread(model_dir / "predictions" / "two-cells.tif")
    assert cells.dtype == np.uint16 and cells.shape == from_checkpoint.shape
    np.testing.assert_array_equal(cells == 0, from_checkpoint == 0)  # ids on cells, 0 on membranes
    logged = [r["data"] for r in read_log(tmp_path / "l" / "log.json") if r.get("step") == "PREDICT"]
    assert logged[0]["cells"] == sum(int(s.max()) for s in cells)
    target = tmp_path / "exported.tif"
    done = run_predict(str(exported / "saved_model"), str(stack), "-o", str(target), "--strategy", "tile",
                       "--tta", "--cell_labels")
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(tifffile.imread(target), from_checkpoint)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "exported-cells.tif"), cells)
    evaluated = run_main("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0", "--tta",
                         "--finer_sweep", "--overlays", "0", "--model_dir", str(model_dir),
                         "--log_dir", str(tmp_path / "e"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scores = final_eval(read_log(tmp_path / "e" / "log.json"))
    assert 0.0 <= scores["eval_v_rand"] <= 1.0
    assert scores["eval_v_rand_thinned_threshold"] in THRESHOLDS  # the organisers' scores stay beside the finer
    assert scores["eval_v_rand_thinned_finer_threshold"] in FINER_THRESHOLDS
    assert scores["eval_v_rand_thinned_finer"] >= scores["eval_v_rand_thinned"]
    single_pass = final_eval(read_log(out / "fold0" / "log.json"))  # the same checkpoint, scored without --tta
    for key in ("eval_dice_score", "eval_ce_loss", "eval_mask_dice"):  # the recipe's scores follow --tta too
        assert 0.0 <= scores[key] and abs(scores[key] - single_pass[key]) > 1e-6, key
    kept = json.loads((model_dir / BEST_THRESHOLD_FILE).read_text())
    assert kept["cell_threshold"] == scores["eval_v_rand_thinned_finer_threshold"] and kept["step"] == STEPS

    # --cell_threshold best: the cells of P(cell) > the threshold that evaluation kept; the export agrees.
    best = run_main("--exec_mode", "predict", "--dtype", "fp32", "--model_dir", str(model_dir),
                    "--overlays", "0", "--predict_input", str(stack), "--predict_strategy", "tile", "--cell_labels",
                    "--cell_threshold", "best", "--log_dir", str(tmp_path / "b"))
    assert best.returncode == 0, best.stderr[-2000:]
    logged = [r["data"] for r in read_log(tmp_path / "b" / "log.json") if r.get("step") == "PREDICT"]
    assert logged[0]["cell_threshold"] == kept["cell_threshold"]
    by_threshold = tifffile.imread(model_dir / "predictions" / "two-cells.tif")
    done = run_predict(str(exported / "saved_model"), str(stack), "-o", str(tmp_path / "t.tif"),
                       "--strategy", "tile", "--cell_labels", "--cell_threshold", str(kept["cell_threshold"]))
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "t-cells.tif"), by_threshold)


def test_cell_threshold_best_without_an_evaluation_is_one_line_and_status_2(isbi_dir, tmp_path):
    """Checked before any training: no mode both evaluates and predicts, so the threshold must be there."""
    result = run_main("--synth_data", "--exec_mode", "train_and_predict", "--model_dir", str(tmp_path / "m"),
                      "--cell_labels", "--cell_threshold", "best", "--log_dir", str(tmp_path / "l"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "best_threshold.json does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_saved_model_serves_uint8_slices_of_any_count(exported):
    import tensorflow as tf

    serve = tf.saved_model.load(str(exported / "saved_model")).signatures["serving_default"]
    for count, height, width in ((1, 512, 512), (3, 200, 333)):
        outputs = serve(slices=tf.zeros((count, height, width), tf.uint8))
        assert outputs["masks"].shape == (count, height, width) and outputs["masks"].dtype == tf.uint8


def test_predict_cli_refuses_what_is_not_a_model(tmp_path):
    slices = tmp_path / "s.tif"
    tifffile.imwrite(slices, np.zeros((1, 8, 8), np.uint8))
    done = run_predict(str(tmp_path), str(slices))
    assert done.returncode == 2 and "not an exported model" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_ensemble_averages_its_models_and_refuses_mismatched_ones(trained, isbi_dir, tmp_path):
    """The mean of one model's probabilities taken twice is that model: the same masks, the same scores."""
    out, _ = trained
    model_dir = out / "model"
    stack = tmp_path / "pair.tif"
    tifffile.imwrite(stack, np.asarray(tifffile.imread(isbi_dir / "test-volume.tif")[:2]))
    alone = run_main("--exec_mode", "predict", "--model_dir", str(model_dir), "--predict_input", str(stack),
                     "--overlays", "0", "--log_dir", str(tmp_path / "a"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    twice = run_main("--exec_mode", "predict", "--model_dir", str(tmp_path / "e"), "--ensemble",
                     str(model_dir), str(model_dir), "--predict_input", str(stack), "--overlays", "0",
                     "--log_dir", str(tmp_path / "b"))
    assert twice.returncode == 0, twice.stderr[-2000:]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "e" / "predictions" / "pair-masks.tif"),
                                  tifffile.imread(model_dir / "predictions" / "pair-masks.tif"))
    restored = [r["data"] for r in read_log(tmp_path / "b" / "log.json") if r.get("step") == "CHECKPOINT"]
    assert len(restored[0]["ensemble"]) == 2 and restored[0]["step"] == STEPS

    scores = {}
    for name, extra in (("alone", ["--model_dir", str(model_dir)]),
                        ("twice", ["--model_dir", str(tmp_path / "e"), "--ensemble", str(model_dir), str(model_dir)])):
        done = run_main("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0",
                        "--overlays", "0", *extra, "--log_dir", str(tmp_path / f"eval_{name}"))
        assert done.returncode == 0, done.stderr[-2000:]
        scores[name] = final_eval(read_log(tmp_path / f"eval_{name}" / "log.json"))
    for key in ("eval_dice_score", "eval_ce_loss", "eval_v_rand", "eval_v_rand_thinned", "eval_mask_dice"):
        assert scores["twice"][key] == pytest.approx(scores["alone"][key], rel=1e-5), key

    wider = run_main("--exec_mode", "predict", "--model_dir", str(tmp_path / "e"), "--ensemble",
                     str(model_dir), "--predict_input", str(stack), "--base_filters", "16")
    assert wider.returncode == 2 and "holds a model of width 8 with 2 classes" in wider.stderr
    assert "Traceback" not in wider.stderr


@pytest.mark.slow
def test_predict_py_takes_several_models_as_an_ensemble(exported, isbi_dir, tmp_path):
    """The .keras file and the SavedModel of one export, averaged: the masks of either alone."""
    stack = tmp_path / "small.tif"
    tifffile.imwrite(stack, np.asarray(tifffile.imread(isbi_dir / "test-volume.tif")[:2, :200, :260]))
    outputs = {}
    for name, models in (("one", [exported / "unet2d.keras"]),
                         ("two", [exported / "unet2d.keras", exported / "saved_model"])):
        done = run_predict(*map(str, models), str(stack), "-o", str(tmp_path / f"{name}.tif"))
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = tifffile.imread(tmp_path / f"{name}.tif")
    np.testing.assert_array_equal(outputs["two"], outputs["one"])
