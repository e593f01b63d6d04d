"""Training objective: sigmoid cross-entropy (optionally weighted per pixel) + soft Dice loss + L2 weight decay.

All of it is computed in float32, whatever the model's compute dtype.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from common.compat import variable_path

DICE_SMOOTHING = 1e-6


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """Mean sigmoid cross-entropy of the logits against one-hot labels; each pixel's terms times its weight."""
    logits = tf.cast(logits, tf.float32)
    terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(terms if weights is None else terms * weights[..., tf.newaxis])


def dice_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """1 - soft Dice of the softmax, per image and class, averaged over batch then classes."""
    probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    spatial = (1, 2)
    overlap = tf.reduce_sum(probs * labels, axis=spatial)
    sizes = tf.reduce_sum(probs * probs, axis=spatial) + tf.reduce_sum(labels * labels, axis=spatial)
    dice = (2.0 * overlap + DICE_SMOOTHING) / (sizes + DICE_SMOOTHING)  # (batch, classes)
    return tf.reduce_mean(1.0 - tf.reduce_mean(dice, axis=0))


def partial_losses(logits: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Cross-entropy and Dice loss. Labels with one channel more than the logits carry a per-pixel weight map
    there (--border_weights, data_loading/border_weights.py): it weighs the cross-entropy, not the Dice."""
    weights = None
    if labels.shape[-1] == logits.shape[-1] + 1:
        labels, weights = labels[..., :-1], labels[..., -1]
    return cross_entropy(logits, labels, weights), dice_loss(logits, labels)


def ensemble_losses(member_logits: list[tf.Tensor], labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Evaluation losses of models (or views, --tta) whose probabilities are averaged (--ensemble).

    The Dice loss is that of the averaged probabilities, exactly: their log
    is a logit whose softmax gives them back. The recipe's sigmoid
    cross-entropy is a function of each model's logits, not of
    probabilities, so it is the mean of the members' cross-entropies.
    """
    count = len(member_logits)
    ce = tf.add_n([cross_entropy(logits, labels) for logits in member_logits]) / count
    mean = tf.add_n([tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1) for logits in member_logits]) / count
    return ce, dice_loss(tf.math.log(tf.maximum(mean, 1e-30)), labels)


def weight_decay(variables: Iterable[tf.Variable], coefficient: float) -> tf.Tensor:
    """coefficient * sum(w^2) / 2 over the weights (batch-norm parameters excluded, as in the recipe)."""
    penalties = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables
                 if "batch_normalization" not in variable_path(v)]
    return coefficient * tf.add_n(penalties)
