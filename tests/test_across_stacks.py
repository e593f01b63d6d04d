"""One model, both stacks: a checkpoint or export written on TF 2.15 (Keras 2) reads on current TensorFlow
(Keras 3), and back: evaluate, resume and export of the other stack's checkpoint both ways, and predict.py
of both stacks on one export.

The two Kerases save the same tensors under different object graphs; runtime/loop/portable.py reads either
by structure. The current stack runs in this process, the TF 2.15 stack in subprocesses of the Python that
``scripts/run_tests.sh`` names in UNET2D_TF215_PYTHON (the test skips without it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import ROOT, TEST_WIDTH, run_main, run_predict

from common.compat import KERAS_MAJOR
from runtime.parse_results import read_log

pytestmark = [pytest.mark.slow, pytest.mark.one_stack]  # both directions in one run, from the current stack

EVAL_KEYS = ("eval_ce_loss", "eval_dice_loss")


def tf215_python() -> str:
    python = os.environ.get("UNET2D_TF215_PYTHON")
    if KERAS_MAJOR < 3 or not python:
        pytest.skip("needs the current stack in this process and UNET2D_TF215_PYTHON (scripts/run_tests.sh sets "
                    "it when it runs both stacks)")
    return python


def on_tf215(python: str, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    extra = TEST_WIDTH if script == "unet2d.py" else ()
    return subprocess.run([python, str(ROOT / script), *args, *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def records(log_dir: Path, key: str) -> list[dict]:
    return [r["data"] for r in read_log(log_dir / "log.json") if key in r.get("data", {})]


def eval_losses(log_dir: Path) -> np.ndarray:
    return np.array([records(log_dir, "eval_ce_loss")[-1][key] for key in EVAL_KEYS])


@pytest.fixture
def stacks_data(isbi_dir, tmp_path):
    python = tf215_python()
    stack = tmp_path / "slices.tif"
    tifffile.imwrite(stack, tifffile.imread(isbi_dir / "test-volume.tif")[:2])
    common = ["--data_dir", str(isbi_dir), "--fold", "0", "--batch_size", "1", "--dtype", "fp32", "--overlays", "0"]
    return python, stack, common


def test_a_model_trained_on_tf215_evaluates_resumes_exports_and_predicts_on_current(stacks_data, tmp_path):
    python, stack, common = stacks_data
    model, logs = tmp_path / "model", tmp_path / "logs"
    trained = on_tf215(python, "unet2d.py", *common, "--exec_mode", "train_and_evaluate", "--max_steps", "2",
                       "--model_dir", str(model), "--log_dir", str(logs / "train"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Keras 2" in json.loads((model / "model_checkpoint" / "written_by.json").read_text())["checkpoint-2"]

    evaluated = run_main(*common, "--exec_mode", "evaluate", "--model_dir", str(model), "--log_dir",
                         str(logs / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    np.testing.assert_allclose(eval_losses(logs / "eval"), eval_losses(logs / "train"), atol=1e-5)
    assert "written by TensorFlow 2.15" in records(logs / "eval", "across_stacks")[0]["across_stacks"]

    exported = run_main(*common, "--exec_mode", "export", "--model_dir", str(model), "--log_dir",
                        str(logs / "train"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    predicted = run_predict(str(model / "export"), str(stack), "-o", str(tmp_path / "current.tif"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert tifffile.imread(tmp_path / "current.tif").shape == (2, 512, 512)

    resumed = run_main(*common, "--exec_mode", "train", "--resume_training", "--max_steps", "4", "--log_every", "1",
                       "--model_dir", str(model), "--log_dir", str(logs / "resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    across = records(logs / "resume", "across_stacks")[0]["across_stacks"]
    assert "Adam's moments and iteration count, and the step" in across and "dropout" in across, across
    assert records(logs / "resume", "saved")[-1]["step"] == 4


def test_a_model_trained_on_current_evaluates_predicts_resumes_and_exports_on_tf215(stacks_data, tmp_path):
    python, stack, common = stacks_data
    model, logs = tmp_path / "model", tmp_path / "logs"
    trained = run_main(*common, "--exec_mode", "train_and_evaluate", "--max_steps", "2", "--model_dir", str(model),
                       "--log_dir", str(logs / "train"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    exported = run_main(*common, "--exec_mode", "export", "--model_dir", str(model), "--log_dir",
                        str(logs / "train"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    ours = run_predict(str(model / "export"), str(stack), "-o", str(tmp_path / "current.tif"))
    assert ours.returncode == 0, ours.stderr[-2000:]

    evaluated = on_tf215(python, "unet2d.py", *common, "--exec_mode", "evaluate", "--model_dir", str(model),
                         "--log_dir", str(logs / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    np.testing.assert_allclose(eval_losses(logs / "eval"), eval_losses(logs / "train"), atol=1e-5)
    theirs = on_tf215(python, "predict.py", str(model / "export"), str(stack), "-o", str(tmp_path / "215.tif"))
    assert theirs.returncode == 0 and "Traceback" not in theirs.stderr, theirs.stderr[-3000:]
    agree = np.mean(tifffile.imread(tmp_path / "current.tif") == tifffile.imread(tmp_path / "215.tif"))
    assert agree >= 0.9999, agree

    resumed = on_tf215(python, "unet2d.py", *common, "--exec_mode", "train", "--resume_training", "--max_steps",
                       "4", "--log_every", "1", "--model_dir", str(model), "--log_dir", str(logs / "resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    across = records(logs / "resume", "across_stacks")[0]["across_stacks"]
    assert re.search(r"written by TensorFlow 2\.(1[6-9]|[2-9]\d)\.\d+ with Keras 3", across), across
    assert "Adam's moments and iteration count, and the step" in across, across
    exported = on_tf215(python, "unet2d.py", *common, "--exec_mode", "export", "--model_dir", str(model),
                        "--log_dir", str(logs / "resume"))
    assert exported.returncode == 0 and (model / "export" / "saved_model" / "saved_model.pb").is_file(), \
        exported.stderr[-3000:]
    writers = json.loads((model / "model_checkpoint" / "written_by.json").read_text())
    assert "Keras 3" in writers["checkpoint-2"] and "Keras 2" in writers["checkpoint-4"], writers
