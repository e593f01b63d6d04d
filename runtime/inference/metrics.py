"""The ISBI 2012 challenge scores of a predicted membrane mask: V_Rand and V_Info.

Both compare the *cell regions* (connected components of the cell pixels) of
the prediction with those of the label, restricted to the label's cell pixels
("foreground-restricted", Arganda-Carreras et al. 2015): the thin true
membranes, where any answer is ambiguous by a pixel, do not count. Predicted
membrane pixels inside a true cell count as one extra region of the
prediction, so thick or spurious predicted membranes lower both scores.
1.0 is a perfect segmentation.

Masks here are class ids (0 = membrane). With more than two classes, every
class but 0 is inside a cell (interior, mitochondria, ...), so the cell
regions are the connected components of the non-membrane pixels; for two
classes that is the recipe's cell class. ``class_dice`` scores every class.

The contingency table and the Rand F-score come from scikit-image
(``skimage.metrics``); V_Info, the F-score of the information-theoretic split
and merge scores I(S;T)/H(S) and I(S;T)/H(T), is computed from the same table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, contingency_table

MEMBRANE = 0


def cell_regions(mask: np.ndarray) -> np.ndarray:
    """Label image of a class-id mask: 0 on membranes, 1..n on the 4-connected cell regions."""
    return connected_components(mask != MEMBRANE, connectivity=1, background=0)


def _entropy(probabilities: np.ndarray) -> float:
    probabilities = probabilities[probabilities > 0]
    return float(-np.sum(probabilities * np.log(probabilities)))


def _f_score(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


def v_info(true_regions: np.ndarray, predicted_regions: np.ndarray) -> float:
    """Foreground-restricted information-theoretic score of two label images."""
    table = contingency_table(true_regions, predicted_regions, ignore_labels=[0], normalize=True)
    joint = np.asarray(table.data)
    h_true = _entropy(np.asarray(table.sum(axis=1)).ravel())
    h_pred = _entropy(np.asarray(table.sum(axis=0)).ravel())
    mutual = h_true + h_pred - _entropy(joint)
    if h_true == 0 and h_pred == 0:  # one region each: nothing to split or merge
        return 1.0
    split = mutual / h_pred if h_pred > 0 else 1.0  # precision: no spurious split of a true cell
    merge = mutual / h_true if h_true > 0 else 1.0  # recall: no merge of true cells
    return max(0.0, _f_score(split, merge))  # round-off can leave -1e-16 for a total merge


def v_rand(true_regions: np.ndarray, predicted_regions: np.ndarray) -> float:
    """Foreground-restricted Rand F-score of two label images."""
    error, _, _ = adapted_rand_error(true_regions, predicted_regions, ignore_labels=(0,))
    return 1.0 - float(error)


def slice_challenge(truth: np.ndarray, prediction: np.ndarray) -> tuple[float, float, float] | None:
    """(V_Rand, V_Info, Dice of the cell masks) of one slice of class ids; None for a slice without cells."""
    true_cell, predicted_cell = truth != MEMBRANE, prediction != MEMBRANE
    if not np.any(true_cell):
        return None  # a slice without cells has no foreground to score
    true_regions, predicted_regions = cell_regions(truth), cell_regions(prediction)
    dice = 2.0 * np.count_nonzero(true_cell & predicted_cell) / (np.count_nonzero(true_cell)
                                                                   + np.count_nonzero(predicted_cell))
    return v_rand(true_regions, predicted_regions), v_info(true_regions, predicted_regions), dice


def mean_challenge(per_slice: Sequence[tuple[float, float, float] | None]) -> dict[str, float]:
    """The slices' V_Rand, V_Info and mask Dice averaged, as ``eval_*``; {} when no slice had cells."""
    scored = np.array([scores for scores in per_slice if scores is not None])
    if not len(scored):
        return {}
    rand, info, dice = scored.mean(axis=0)
    return {"eval_v_rand": float(rand), "eval_v_info": float(info), "eval_mask_dice": float(dice)}


def challenge_scores(true_masks: Sequence[np.ndarray], predicted_masks: Sequence[np.ndarray]) -> dict[str, float]:
    """V_Rand and V_Info per slice of two class-id stacks, averaged; plus the Dice of the cell masks."""
    return mean_challenge([slice_challenge(truth, prediction)
                           for truth, prediction in zip(true_masks, predicted_masks, strict=True)])


class ClassOverlap:
    """Each class's overlap and sizes, added slice by slice: the pooled Dice without keeping a slice."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.overlap, self.sizes = np.zeros(num_classes), np.zeros(num_classes)

    def add(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        k = self.num_classes
        self.overlap += np.bincount(truth[truth == prediction].ravel(), minlength=k)[:k]
        self.sizes += np.bincount(truth.ravel(), minlength=k)[:k]
        self.sizes += np.bincount(prediction.ravel(), minlength=k)[:k]

    def scores(self) -> dict[str, float]:
        scores = np.where(self.sizes > 0, 2.0 * self.overlap / np.maximum(self.sizes, 1), 1.0)
        return {f"eval_dice_class_{k}": float(scores[k]) for k in range(self.num_classes)}


def class_dice(true_masks: Sequence[np.ndarray], predicted_masks: Sequence[np.ndarray],
               num_classes: int) -> dict[str, float]:
    """Dice of each class's pixels over all slices together, as ``eval_dice_class_<k>``.

    Pooled over the slices rather than averaged per slice, so that a class
    present in only a few slices (organelles) is not scored by its emptiest
    slice. A class absent from both truth and prediction scores 1.
    """
    pooled = ClassOverlap(num_classes)
    for truth, prediction in zip(true_masks, predicted_masks, strict=True):
        pooled.add(truth, prediction)
    return pooled.scores()
