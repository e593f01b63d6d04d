"""A run that learns nothing is said: a loss that never left its start, masks of one class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.loop.collapse import FIRST_CHECK, WINDOW, CollapseWatch, majority_share, one_class_warning
from tests.conftest import TEST_BASE_FILTERS, run_cli


def said(watch: CollapseWatch, losses, shares) -> list[tuple[int, str]]:
    return [(step, message) for step, (loss, share) in enumerate(zip(losses, shares, strict=True), 1)
            if (message := watch.add(loss, share)) is not None]


def test_a_run_stuck_at_one_class_is_said_once_and_a_slow_starter_never():
    noise = np.random.default_rng(0).normal(0, 0.05, 400)
    flat, one_class, two_classes = 2.25 - 0.0003 * np.arange(400) + noise, np.ones(400), np.full(400, 0.8)
    stuck = said(CollapseWatch(True), flat, one_class)  # 2.255 -> 2.152 at step 400, one class: as seen
    assert len(stuck) == 1 and stuck[0][0] == FIRST_CHECK
    assert f"over steps 1-{WINDOW}" in stuck[0][1] and "one class on 100.0%" in stuck[0][1]
    # a slow start predicting one class, then learning: the loss moves before the judging ends
    assert not said(CollapseWatch(True), np.linspace(1.065, 0.544, 400) + noise, two_classes)
    slow = np.concatenate([np.full(30, 2.25), np.linspace(2.25, 1.4, 370)]) + noise
    assert not said(CollapseWatch(True), slow, np.concatenate([np.ones(30), np.full(370, 0.8)]))
    assert not said(CollapseWatch(True), flat, two_classes)  # a flat loss alone is a slow starter
    assert not said(CollapseWatch(False), flat, one_class)  # resumed or warm-started runs are not judged
    assert not said(CollapseWatch(True), flat[:FIRST_CHECK - 1], one_class[:FIRST_CHECK - 1])  # too short


def test_the_majority_share_of_a_batch():
    constant = np.zeros((2, 4, 4, 2), np.float32)
    constant[..., 1] = 1.0
    assert float(majority_share(constant)) == 1.0
    half = constant.copy()
    half[:, :2, :, 0] = 2.0
    assert float(majority_share(half)) == 0.5


def test_masks_of_one_class_are_said():
    assert "class 0 on every pixel" in one_class_warning([1000.0, 0.0])
    assert one_class_warning([900.0, 100.0]) is None and one_class_warning([0.0, 0.0, 5.0]) is not None


@pytest.mark.slow
def test_a_run_that_collapses_on_purpose_says_so(isbi_dir, tmp_path):
    """An absurd learning rate: the loss never moves and the masks are one class; the run still ends with 0."""
    result = run_cli("--data_dir", str(isbi_dir), "--exec_mode", "train_and_evaluate", "--fold", "1",
                     "--base_filters", str(TEST_BASE_FILTERS), "--batch_size", "1", "--learning_rate", "0.1",
                     "--max_steps", str(FIRST_CHECK), "--log_every", str(FIRST_CHECK),
                     "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "l"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line[5:]) for line in (tmp_path / "l" / "log.json").read_text().splitlines()]
    warnings = [line["data"]["message"] for line in lines if line["step"] == "WARNING"]
    assert any("has not moved off its start" in message for message in warnings), warnings
    assert any("constant predictor" in message for message in warnings), warnings
    evaluation = [line["data"] for line in lines if "eval_dice_score" in line["data"]][-1]
    assert "constant predictor" in evaluation["warning"]
    assert sum("WARNING" in line for line in result.stdout.splitlines()) == 2
