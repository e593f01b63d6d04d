"""The organisers' scores (border thinning, threshold sweep) against hand-made maps and their definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from runtime.inference.metrics import cell_regions, challenge_scores
from runtime.inference.thinned import (
    FINER_THRESHOLDS,
    THRESHOLDS,
    best_of_means,
    foreground_restricted_scores,
    load_best_threshold,
    save_best_threshold,
    slice_sweep,
    thinned_regions,
    thinned_scores,
)

SIZE = 8  # each of the two cells is SIZE x SIZE pixels


def two_cells() -> np.ndarray:
    """Class ids: two equal cells (1) side by side, split by a one-pixel membrane column (0)."""
    truth = np.ones((SIZE, 2 * SIZE + 1), np.uint8)
    truth[:, SIZE] = 0
    return truth


def test_a_thick_but_correct_membrane_scores_one_after_thinning_and_less_before():
    """P(cell) rises linearly away from the true membrane column: the mask (P >= 0.5) has a 3-pixel membrane,
    which today's score counts against the cells; thinned, it is the true column again."""
    truth = two_cells()
    distance = np.abs(np.arange(truth.shape[1]) - SIZE)
    cell_prob = np.broadcast_to(np.minimum(distance / 3, 1.0), truth.shape)
    thinned = thinned_scores([truth], [cell_prob])
    assert thinned["eval_v_rand_thinned"] == pytest.approx(1.0)
    assert thinned["eval_v_info_thinned"] == pytest.approx(1.0)
    mask = (cell_prob >= 0.5).astype(np.uint8)
    assert challenge_scores([truth], [mask])["eval_v_rand"] < 0.95


def test_a_missing_membrane_merges_the_two_cells_at_every_threshold():
    """N^2 Rand: sum p_ij^2 = 2 (1/2)^2 = 1/2 = sum a_i^2, sum b_j^2 = 1: V_Rand = 2 (1/2) / (3/2) = 2/3.
    Info: I(S;T) = 0, so V_Info = 0."""
    scores = thinned_scores([two_cells()], [np.ones((SIZE, 2 * SIZE + 1))])
    assert scores["eval_v_rand_thinned"] == pytest.approx(2 / 3)
    assert scores["eval_v_info_thinned"] == pytest.approx(0.0, abs=1e-12)
    assert scores["eval_v_rand_thinned_threshold"] == 0.0  # every threshold ties: the lowest is named


def test_the_sweep_finds_the_threshold_that_splits_the_cells():
    """Cells at P = 0.9, the true membrane at 0.35. Below 0.35 the membrane is cell (merge, 2/3); from 0.4 to
    0.8 the cells are split (1.0); at 0.9 nothing exceeds the threshold: all 2 * 64 true pixels are borders,
    each its own cell: V_Rand = 2 (128 / 128^2) / (1/2 + 128 / 128^2) = 2/65."""
    truth = two_cells()
    cell_prob = np.where(truth == 0, 0.35, 0.9)
    sweep = slice_sweep(truth, cell_prob)
    expected = [2 / 3] * 4 + [1.0] * 5 + [2 / 65]
    assert sweep[:, 0] == pytest.approx(expected)
    scores = thinned_scores([truth], [cell_prob])
    assert scores == pytest.approx({"eval_v_rand_thinned": 1.0, "eval_v_rand_thinned_threshold": 0.4,
                                    "eval_v_info_thinned": 1.0, "eval_v_info_thinned_threshold": 0.4})


def test_scores_are_averaged_over_slices_per_threshold_before_the_best_is_taken():
    truth = two_cells()
    split_early = np.where(truth == 0, 0.05, 0.9)  # split from threshold 0.1
    split_late = np.where(truth == 0, 0.55, 0.9)  # split only from 0.6
    sweeps = np.stack([slice_sweep(truth, p) for p in (split_early, split_late)])
    scores = thinned_scores([truth, truth], [split_early, split_late])
    assert scores["eval_v_rand_thinned"] == pytest.approx(sweeps.mean(axis=0)[:, 0].max())
    assert scores["eval_v_rand_thinned_threshold"] == 0.6
    assert thinned_scores([np.zeros((4, 4), np.uint8)], [np.ones((4, 4))]) == {}  # no true cells: nothing scored


@pytest.mark.parametrize("seed", range(5))
def test_thinning_keeps_every_region_and_leaves_only_one_pixel_lines_between_them(seed):
    rng = np.random.default_rng(seed)
    cell_prob = gaussian_filter(rng.random((64, 80)), 2.5)
    cell_prob = (cell_prob - cell_prob.min()) / np.ptp(cell_prob)
    for threshold in (0.3, 0.5, 0.7):
        markers = cell_regions((cell_prob > threshold).astype(np.uint8))
        regions = thinned_regions(cell_prob, threshold)
        assert set(np.unique(regions)) - {0} == set(np.unique(markers)) - {0}  # same regions, none new or lost
        assert np.all(regions[markers > 0] == markers[markers > 0])  # every cell pixel stays in its region
        for a, b in ((regions[1:], regions[:-1]), (regions[:, 1:], regions[:, :-1])):
            assert not np.any((a > 0) & (b > 0) & (a != b))  # different regions never touch 4-wise
        border = regions == 0
        assert border.mean() < (markers == 0).mean()  # the thresholded membrane got thinner
        if border.any():  # a border pixel lies between regions: within 1 pixel of at least two of them
            padded = np.pad(regions, 1)
            rows, cols = np.nonzero(border)
            for r, c in zip(rows[:200], cols[:200], strict=True):
                around = set(np.unique(padded[r:r + 3, c:c + 3])) - {0}
                assert len(around) >= 2 or r in (0, regions.shape[0] - 1) or c in (0, regions.shape[1] - 1)


def _rand_by_counting_pairs(truth: np.ndarray, predicted: np.ndarray) -> float:
    """N^2 Rand F-score from its definition: ordered pairs (a pixel with itself included) of true cell pixels,
    a predicted border pixel together only with itself."""
    pixels = [(t, p, i) for i, (t, p) in enumerate(zip(truth.ravel(), predicted.ravel(), strict=True)) if t != 0]
    both = together_true = together_predicted = 0
    for (t1, p1, i1), (t2, p2, i2) in itertools.product(pixels, repeat=2):
        same_true, same_predicted = t1 == t2, i1 == i2 or (p1 == p2 and p1 != 0)
        both += same_true and same_predicted
        together_true += same_true
        together_predicted += same_predicted
    precision, recall = both / together_predicted, both / together_true
    return 2 * precision * recall / (precision + recall)


def _info_by_definition(truth: np.ndarray, predicted: np.ndarray) -> float:
    """2 I(S;T) / (H(S) + H(T)) over the true cell pixels, each predicted border pixel a label of its own."""
    inside = truth != 0
    t = truth[inside]
    p = np.where(predicted[inside] == 0, -1 - np.arange(t.size), predicted[inside])  # unique singleton labels

    def entropy(*labels: np.ndarray) -> float:
        _, counts = np.unique(np.stack(labels), axis=1, return_counts=True)
        q = counts / t.size
        return float(-np.sum(q * np.log(q)))

    h_t, h_s = entropy(t), entropy(p)
    mutual = h_t + h_s - entropy(t, p)
    return 1.0 if h_t + h_s == 0 else 2 * mutual / (h_t + h_s)


@pytest.mark.parametrize("seed", range(8))
def test_scores_match_their_definitions_on_random_label_images(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, (6, 7))
    predicted = rng.integers(0, 3, (6, 7))
    if not truth.any():
        truth[0, 0] = 1
    v_rand, v_info = foreground_restricted_scores(truth, predicted)
    assert v_rand == pytest.approx(_rand_by_counting_pairs(truth, predicted))
    assert v_info == pytest.approx(_info_by_definition(truth, predicted))
    assert 0.0 <= v_rand <= 1.0 and 0.0 <= v_info <= 1.0 + 1e-12


def test_the_sweep_is_the_organisers_ten_thresholds():
    assert THRESHOLDS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert all(math.isclose(b - a, 0.1) for a, b in zip(THRESHOLDS, THRESHOLDS[1:], strict=False))


def test_the_finer_sweep_finds_a_membrane_the_organisers_thresholds_miss():
    """The full-width models' case: the true membrane at P(cell) = 0.93, above the organisers' last threshold.
    At 0.0-0.9 the two cells merge (2/3, the lowest threshold named); only 0.95 splits them. At 0.98 and 0.99
    no pixel is cell any more (2/65, as in the test above). The organisers' names keep the organisers' best."""
    truth = two_cells()
    cell_prob = np.where(truth == 0, 0.93, 0.97)
    scores = thinned_scores([truth], [cell_prob], FINER_THRESHOLDS)
    assert scores == pytest.approx({
        "eval_v_rand_thinned": 2 / 3, "eval_v_rand_thinned_threshold": 0.0,
        "eval_v_info_thinned": 0.0, "eval_v_info_thinned_threshold": 0.0,
        "eval_v_rand_thinned_finer": 1.0, "eval_v_rand_thinned_finer_threshold": 0.95,
        "eval_v_info_thinned_finer": 1.0, "eval_v_info_thinned_finer_threshold": 0.95}, abs=1e-12)
    assert slice_sweep(truth, cell_prob, FINER_THRESHOLDS)[-1, 0] == pytest.approx(2 / 65)
    assert thinned_scores([truth], [cell_prob]) == {key: value for key, value in scores.items()
                                                    if "_finer" not in key}  # the organisers' sweep alone


def test_ties_go_to_the_lowest_threshold_in_either_sweep():
    scores = best_of_means(np.ones((len(FINER_THRESHOLDS), 2)), FINER_THRESHOLDS)
    assert {scores[key] for key in scores if key.endswith("_threshold")} == {0.0}
    assert FINER_THRESHOLDS == (*THRESHOLDS, 0.95, 0.98, 0.99)


def test_cell_threshold_best_takes_the_finer_sweep_when_evaluation_ran_it(tmp_path):
    organisers = {"eval_v_rand_thinned": 0.7, "eval_v_rand_thinned_threshold": 0.9}
    save_best_threshold(tmp_path, 400, organisers)
    assert load_best_threshold(tmp_path) == (0.9, 400)
    save_best_threshold(tmp_path, 500, {**organisers, "eval_v_rand_thinned_finer": 0.88,
                                        "eval_v_rand_thinned_finer_threshold": 0.98})
    assert load_best_threshold(tmp_path) == (0.98, 500)
