"""Every score of an evaluation, gathered one slice at a time.

A labelled volume larger than memory is scored as it is predicted: each
slice's V_Rand, V_Info and mask Dice (runtime/inference/metrics.py), its
organisers' thinned scores at every threshold (runtime/inference/thinned.py)
and its per-class overlap are kept as a few numbers, and the slice itself
is dropped. The result equals scoring the whole stack at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.inference.metrics import ClassOverlap, mean_challenge, slice_challenge
from runtime.inference.thinned import THRESHOLDS, best_over_thresholds, cell_probability, slice_sweep


class SliceScores:
    """The evaluation's challenge scores, thinned scores and class Dice, added slice by slice."""

    def __init__(self, num_classes: int, thresholds: Sequence[float] = THRESHOLDS) -> None:
        self.thresholds = tuple(thresholds)
        self._challenge: list[tuple[float, float, float] | None] = []
        self._sweeps: list[np.ndarray | None] = []
        self._classes = ClassOverlap(num_classes)
        self.predicted_pixels = np.zeros(num_classes)  # per class: a model stuck on one class shows here

    def add(self, truth: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray) -> None:
        """One slice: its class ids, the predicted ids and the class probabilities they were decided from."""
        self._challenge.append(slice_challenge(truth, predicted))
        self._sweeps.append(slice_sweep(truth, cell_probability(probabilities), self.thresholds))
        self._classes.add(truth, predicted)
        self.predicted_pixels += np.bincount(predicted.ravel(), minlength=len(self.predicted_pixels))[
            :len(self.predicted_pixels)]

    def scores(self) -> dict[str, float]:
        return {**mean_challenge(self._challenge), **best_over_thresholds(self._sweeps, self.thresholds),
                **self._classes.scores()}
