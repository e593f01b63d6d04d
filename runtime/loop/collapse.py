"""Saying when a training run has learned nothing: it ends predicting one class, its masks are one class.

A UNet can get stuck predicting one class everywhere (docs/experiments.md,
"Collapsed runs"). Such a run ends with status 0, and its evaluation Dice
looks like a model's (0.644 in a collapsed run on ISBI), so a
user can take a constant predictor for a model. Both checks here are cheap
and said once, as a WARNING line of the log.

The loss alone cannot tell a stuck run from a slow starter: a random UNet
starts near a constant predictor's loss, and the recipe's own run at width 8
(fold 2, seed 11) predicted one class on every training pixel from step 55
to beyond 110 with its loss flat at 1.04-1.07, and learned after. So training
is judged at its end, on what its last batches were predicted as: a run
whose last ``WINDOW`` batches are one class has produced a constant
predictor, whatever its loss did; an evaluation is judged by its masks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

WINDOW = 20  # the last steps judged: single steps at batch 2 are noisy
ONE_CLASS = 0.995  # a batch whose most predicted class covers at least this share of its pixels


def majority_share(logits: tf.Tensor) -> tf.Tensor:
    """The share of the batch's pixels predicted as its most predicted class: 1.0 for a constant predictor."""
    classes = tf.shape(logits)[-1]
    counts = tf.reduce_sum(tf.one_hot(tf.argmax(logits, axis=-1), classes, dtype=tf.float32), axis=[0, 1, 2])
    return tf.reduce_max(counts) / tf.reduce_sum(counts)


class CollapseWatch:
    """A fresh run's training, step by step: has it ended as a constant predictor?

    Resumed runs and runs started from another model are not watched: their steps before are not here.
    """

    def __init__(self, watching: bool) -> None:
        self.watching = watching
        self.first: list[float] = []  # the total loss of the first WINDOW steps
        self.latest: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (loss, majority share)

    def add(self, loss: float, share: float) -> None:
        if self.watching:
            if len(self.first) < WINDOW:
                self.first.append(loss)
            self.latest.append((loss, share))

    def verdict(self, step: int) -> str | None:
        """The warning for a run that ends at ``step`` predicting one class on its last batches; None if it
        does not, or if it is too short to say."""
        if not self.watching or len(self.first) < WINDOW or len(self.latest) < WINDOW:
            return None
        losses, shares = zip(*self.latest, strict=True)
        one_class = float(np.mean(shares))
        if one_class < ONE_CLASS:
            return None
        return (f"the model predicts one class on {one_class:.1%} of the pixels of its last {WINDOW} training "
                f"batches (steps {step - WINDOW + 1}-{step}; loss {np.mean(losses):.3f} there, "
                f"{np.mean(self.first):.3f} over steps 1-{WINDOW}): it is a constant predictor, not a model; "
                "start from --weight_init he (the U-Net paper's) or train longer, and if --learning_rate is far "
                "above the recipe's 1e-4, lower it (docs/experiments.md, Collapsed runs)")


def one_class_warning(predicted_pixels: Sequence[float]) -> str | None:
    """The warning for an evaluation whose masks hold a single class on every validation slice."""
    present = [k for k, count in enumerate(predicted_pixels) if count > 0]
    if len(present) != 1:
        return None
    return (f"the evaluation's masks are class {present[0]} on every pixel of every validation slice: "
            "this is a constant predictor, not a segmentation")
