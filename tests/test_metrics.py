"""The ISBI 2012 challenge scores against hand-made label images with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.inference.metrics import cell_regions, challenge_scores, v_info, v_rand


def two_cells(size: int = 8) -> np.ndarray:
    """A 0/255 mask: two equal cells side by side, split by a one-pixel membrane column."""
    mask = np.full((size, 2 * size + 1), 255, np.uint8)
    mask[:, size] = 0
    return mask


def test_cell_regions_are_four_connected():
    mask = np.array([[255, 0], [0, 255]], np.uint8)  # touching only at a corner: two cells
    assert cell_regions(mask).max() == 2


def test_perfect_prediction_scores_one():
    truth = two_cells()
    assert challenge_scores(truth[None], truth[None]) == {"eval_v_rand": 1.0, "eval_v_info": 1.0,
                                                          "eval_mask_dice": 1.0}


# Rand counts pairs of distinct pixels (the SNEMI3D and scikit-image convention).


def test_merging_two_equal_cells():
    """Rand: of the 12 ordered pairs, 4 share a true cell and all 12 a predicted one: precision 1/3,
    recall 1, F = 1/2. Info: I = 0, so the merge score and F are 0."""
    truth = np.array([[1, 1, 2, 2]])
    merged = np.array([[1, 1, 1, 1]])
    assert v_rand(truth, merged) == pytest.approx(1 / 2)
    assert v_info(truth, merged) == pytest.approx(0.0, abs=1e-12)


def test_splitting_one_cell_in_two():
    """The mirror case: Rand precision 1, recall 1/3, F = 1/2. Info: I = 0, so the split score and F are 0."""
    truth = np.array([[1, 1, 1, 1]])
    split = np.array([[1, 1, 2, 2]])
    assert v_rand(truth, split) == pytest.approx(1 / 2)
    assert v_info(truth, split) == pytest.approx(0.0, abs=1e-12)


def test_membranes_of_the_label_do_not_count():
    """Foreground-restricted: a prediction that differs only on the true membrane scores 1."""
    truth = np.array([[1, 1, 0, 2, 2]])
    prediction = np.array([[1, 1, 1, 2, 2]])  # the membrane pixel given to the left cell
    assert v_rand(truth, prediction) == 1.0 and v_info(truth, prediction) == 1.0


def test_merge_through_a_missing_membrane_in_masks():
    truth = two_cells()
    predicted = np.full_like(truth, 255)  # no membrane found: both cells merged
    scores = challenge_scores(truth[None], predicted[None])
    # Two cells of 64 pixels merged: precision 2 * 64 * 63 / (128 * 127) = 63/127, recall 1, F = 63/95.
    assert scores["eval_v_rand"] == pytest.approx(63 / 95)
    assert scores["eval_v_info"] == pytest.approx(0.0, abs=1e-12)
    assert scores["eval_mask_dice"] == pytest.approx(2 * 128 / (128 + 136))


def test_slices_without_cells_are_skipped():
    assert challenge_scores(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), np.uint8)) == {}


def _rand_by_pair_counting(truth: np.ndarray, prediction: np.ndarray) -> float:
    """The Rand F-score from its definition: pairs of foreground pixels, together in one, in the other."""
    pixels = [(t, p) for t, p in zip(truth.ravel(), prediction.ravel(), strict=True) if t != 0]
    together_both = together_true = together_pred = 0
    for (t1, p1), (t2, p2) in itertools.permutations(pixels, 2):
        together_true += t1 == t2
        together_pred += p1 == p2
        together_both += t1 == t2 and p1 == p2
    precision, recall = together_both / together_pred, together_both / together_true
    return 2 * precision * recall / (precision + recall)


def _info_by_definition(truth: np.ndarray, prediction: np.ndarray) -> float:
    keep = truth.ravel() != 0
    t, p = truth.ravel()[keep], prediction.ravel()[keep]

    def entropy(*labels):
        _, counts = np.unique(np.stack(labels), axis=1, return_counts=True)
        q = counts / counts.sum()
        return -np.sum(q * np.log(q))

    h_t, h_p, h_tp = entropy(t), entropy(p), entropy(t, p)
    mutual = h_t + h_p - h_tp
    split = mutual / h_p if h_p > 0 else 1.0
    merge = mutual / h_t if h_t > 0 else 1.0
    return 0.0 if split + merge == 0 else 2 * split * merge / (split + merge)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_scores_match_their_definitions_on_random_label_images(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, size=(5, 6))
    prediction = rng.integers(0, 4, size=(5, 6))
    if np.count_nonzero(truth) < 2:  # no pair of foreground pixels to count
        return
    assert v_rand(truth, prediction) == pytest.approx(_rand_by_pair_counting(truth, prediction), abs=1e-9)
    expected_info = _info_by_definition(truth, prediction)
    assert v_info(truth, prediction) == pytest.approx(expected_info, abs=1e-9)
    assert 0.0 <= v_rand(truth, prediction) <= 1.0 and 0.0 <= v_info(truth, prediction) <= 1.0 + 1e-12
    assert not math.isnan(expected_info)
