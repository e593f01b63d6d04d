"""A run that learns nothing is said: a loss that never left its start, masks of one class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.loop.collapse import WINDOW, CollapseWatch, majority_share, one_class_warning
from tests.conftest import TEST_BASE_FILTERS, run_cli


def verdict(watch: CollapseWatch, losses, shares) -> str | None:
    for loss, share in zip(losses, shares, strict=True):
        watch.add(loss, share)
    return watch.verdict(len(losses))


def test_a_run_that_ends_predicting_one_class_is_said_and_one_that_learned_is_not():
    noise = np.random.default_rng(0).normal(0, 0.05, 400)
    flat, one_class = 2.25 - 0.0003 * np.arange(400) + noise, np.ones(400)
    stuck = verdict(CollapseWatch(True), flat, one_class)  # 2.255 -> 2.152 at step 400, one class: as seen
    assert "one class on 100.0% of the pixels of its last 20 training batches (steps 381-400" in stuck
    assert f"over steps 1-{WINDOW}" in stuck and "--learning_rate" in stuck
    # one class from step 55 to 110, as the recipe's run at width 8, then learning: not said
    learned = np.concatenate([np.full(55, 0.8), np.ones(60), np.full(285, 0.8)])
    assert verdict(CollapseWatch(True), np.linspace(1.065, 0.544, 400) + noise, learned) is None
    assert verdict(CollapseWatch(False), flat, one_class) is None  # resumed or warm-started runs are not judged
    assert verdict(CollapseWatch(True), flat[:WINDOW - 1], one_class[:WINDOW - 1]) is None  # too short to say


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
@pytest.mark.one_stack  # the watch is Python; the step's majority share is logged on both stacks (test_cli)
def test_a_run_that_collapses_on_purpose_says_so(isbi_dir, tmp_path):
    """An absurd learning rate: the model ends predicting one class, and its masks are one class; the run still
    ends with 0, and says so twice."""
    result = run_cli("--data_dir", str(isbi_dir), "--exec_mode", "train_and_evaluate", "--fold", "1",
                     "--base_filters", str(TEST_BASE_FILTERS), "--batch_size", "1", "--learning_rate", "0.1",
                     "--max_steps", "40", "--log_every", "40",
                     "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "l"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line[5:]) for line in (tmp_path / "l" / "log.json").read_text().splitlines()]
    warnings = [line["data"]["message"] for line in lines if line["step"] == "WARNING"]
    assert any("it is a constant predictor, not a model" in message for message in warnings), warnings
    assert any("constant predictor" in message for message in warnings), warnings
    evaluation = [line["data"] for line in lines if "eval_dice_score" in line["data"]][-1]
    assert "constant predictor" in evaluation["warning"]
    assert sum("WARNING" in line for line in result.stdout.splitlines()) == 2
