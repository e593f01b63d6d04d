"""runtime/parse_results.py: 5-fold averages from the JSON logs, and clear messages for bad ones."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtime.parse_results import average_folds
from tests.conftest import ROOT


def write_fold(folder, dice, ce, extra_eval_first=True):
    folder.mkdir(parents=True)
    lines = []
    if extra_eval_first:  # an --evaluate_every result before the final one
        lines.append({"type": "LOG", "step": [], "data": {"eval_dice_score": 0.1, "eval_ce_loss": 9.0}})
    lines.append({"type": "LOG", "step": [10, 10], "data": {"train_ce_loss": 1.0}})
    lines.append({"type": "LOG", "step": [], "data": {"eval_dice_score": dice, "eval_ce_loss": ce}})
    (folder / "log.json").write_text("".join(f"DLLL {json.dumps(line)}\n" for line in lines))


def test_average_of_final_evaluations(tmp_path):
    write_fold(tmp_path / "bf16_1hpu_fold0", 0.8, 0.3)
    write_fold(tmp_path / "bf16_1hpu_fold1", 0.9, 0.1)
    write_fold(tmp_path / "fp32_1hpu_fold0", 0.0, 5.0)
    summary = average_folds(tmp_path, "bf16_1hpu")
    assert summary["folds"] == 2
    assert summary["eval_dice_score"] == pytest.approx(0.85)
    assert summary["eval_ce_loss"] == pytest.approx(0.2)


def test_cli_reports_corrupt_and_missing_logs(tmp_path):
    write_fold(tmp_path / "bf16_1hpu_fold0", 0.8, 0.3)
    (tmp_path / "bf16_1hpu_fold1").mkdir()
    (tmp_path / "bf16_1hpu_fold1" / "log.json").write_text("DLLL {broken\n")
    (tmp_path / "bf16_1hpu_fold2").mkdir()
    (tmp_path / "bf16_1hpu_fold2" / "log.json").write_text("")
    script = [sys.executable, "-m", "runtime.parse_results", "--model_dir", str(tmp_path)]
    result = subprocess.run([*script, "--env", "bf16_1hpu"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    assert "Evaluation dice score: 0.8 (average of 1 folds)" in result.stdout
    assert "not a valid DLLL record" in result.stderr and "no evaluation result" in result.stderr
    missing = subprocess.run([*script, "--env", "fp32_8hpu"], capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "no log.json" in missing.stderr


def test_only_the_folds_asked_for_are_averaged(tmp_path):
    for fold, dice in enumerate((0.8, 0.9, 0.1)):
        write_fold(tmp_path / f"bf16_1hpu_fold{fold}", dice, 0.2)
    summary = average_folds(tmp_path, "bf16_1hpu", folds=[0, 1])
    assert summary["folds"] == 2 and summary["eval_dice_score"] == pytest.approx(0.85)
    assert average_folds(tmp_path, "bf16_1hpu", folds=[2])["eval_dice_score"] == pytest.approx(0.1)
    script = [sys.executable, "-m", "runtime.parse_results", "--model_dir", str(tmp_path), "--env", "bf16_1hpu",
              "--folds"]
    absent = subprocess.run([*script, "4"], capture_output=True, text=True, cwd=ROOT)
    assert absent.returncode == 2 and "no log.json of a bf16_1hpu_fold{4} run" in absent.stderr
    out_of_range = subprocess.run([*script, "5"], capture_output=True, text=True, cwd=ROOT)
    assert out_of_range.returncode == 2 and "invalid choice: 5" in out_of_range.stderr
