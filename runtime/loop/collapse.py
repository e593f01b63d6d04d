"""Saying when a training run has learned nothing: a loss that never left its start, masks of one class.

A UNet can get stuck predicting one class everywhere (docs/experiments.md,
"Collapsed runs"). Such a run ends with status 0, and its evaluation Dice
looks like a model's (0.64 on ISBI, where the cells cover most pixels), so a
user can take a constant predictor for a model. Both checks here are cheap
and said once, as a WARNING line of the log.

The loss alone cannot tell a stuck run from a slow starter in its first
hundred steps (the recipe's falls only 11 % by step 100, and a random UNet
starts near a constant predictor's loss), so training is judged stuck when
its loss has not moved *and* its training batches are predicted as one class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

WINDOW = 20  # steps averaged at the start and at the latest point: single steps at batch 2 are noisy
FIRST_CHECK = 60  # steps before a run is judged
MOVED = 0.95  # a loss that has moved is below this share of its start's
ONE_CLASS = 0.995  # a batch whose most predicted class covers at least this share of its pixels


def majority_share(logits: tf.Tensor) -> tf.Tensor:
    """The share of the batch's pixels predicted as its most predicted class: 1.0 for a constant predictor."""
    classes = tf.shape(logits)[-1]
    counts = tf.reduce_sum(tf.one_hot(tf.argmax(logits, axis=-1), classes, dtype=tf.float32), axis=[0, 1, 2])
    return tf.reduce_max(counts) / tf.reduce_sum(counts)


class CollapseWatch:
    """A fresh run's training, step by step: is it stuck at a constant prediction?

    Judged every ``WINDOW`` steps from ``FIRST_CHECK`` on: the mean total loss of the latest ``WINDOW`` steps
    against that of the first ``WINDOW``, and the mean majority share of the latest. Resumed runs and runs
    started from another model are not watched: their start is not a random model's.
    """

    def __init__(self, watching: bool) -> None:
        self.watching = watching
        self.losses: list[float] = []
        self.shares: list[float] = []
        self.said = False

    def add(self, loss: float, share: float) -> str | None:
        """One step's total loss and majority share; the warning, the first time the run is judged stuck."""
        if not self.watching or self.said:
            return None
        self.losses.append(loss)
        self.shares.append(share)
        done = len(self.losses)
        if done < max(FIRST_CHECK, 2 * WINDOW) or done % WINDOW:
            return None
        start, latest = float(np.mean(self.losses[:WINDOW])), float(np.mean(self.losses[-WINDOW:]))
        one_class = float(np.mean(self.shares[-WINDOW:]))
        if latest < MOVED * start or one_class < ONE_CLASS:
            return None
        self.said = True
        return (f"the training loss has not moved off its start ({start:.3f} over steps 1-{WINDOW}, {latest:.3f} "
                f"over steps {done - WINDOW + 1}-{done}) and the model predicts one class on {one_class:.1%} of "
                "the training pixels: it is stuck at a constant prediction; a lower --learning_rate or another "
                "--seed gets it going (docs/experiments.md, Collapsed runs)")


def one_class_warning(predicted_pixels: Sequence[float]) -> str | None:
    """The warning for an evaluation whose masks hold a single class on every validation slice."""
    present = [k for k, count in enumerate(predicted_pixels) if count > 0]
    if len(present) != 1:
        return None
    return (f"the evaluation's masks are class {present[0]} on every pixel of every validation slice: "
            "this is a constant predictor, not a segmentation")
