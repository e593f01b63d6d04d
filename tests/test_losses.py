"""Losses against a direct NumPy computation on small tensors."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from runtime.loop.losses import cross_entropy, dice_loss, weight_decay


def numpy_losses(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    logits = logits.astype(np.float64)
    ce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    probs = exp / exp.sum(-1, keepdims=True)
    dices = []
    for b in range(logits.shape[0]):
        per_class = []
        for c in range(logits.shape[-1]):
            p, t = probs[b, ..., c], labels[b, ..., c]
            per_class.append((2 * (p * t).sum() + 1e-6) / ((p * p).sum() + (t * t).sum() + 1e-6))
        dices.append(per_class)
    dice_per_class = np.mean(dices, axis=0)
    return float(ce.mean()), float(np.mean(1 - dice_per_class))


def random_case(seed: int, shape=(3, 5, 4, 2)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, shape).astype(np.float32)
    classes = rng.integers(0, 2, shape[:-1])
    labels = np.eye(2, dtype=np.float32)[classes]
    return logits, labels


def test_losses_match_numpy():
    for seed in range(3):
        logits, labels = random_case(seed)
        expected_ce, expected_dice = numpy_losses(logits, labels)
        np.testing.assert_allclose(float(cross_entropy(logits, labels)), expected_ce, rtol=1e-5)
        np.testing.assert_allclose(float(dice_loss(logits, labels)), expected_dice, rtol=1e-5)


def test_bf16_logits_give_float32_losses():
    logits, labels = random_case(4)
    ce = cross_entropy(tf.cast(logits, tf.bfloat16), labels)
    dice = dice_loss(tf.cast(logits, tf.bfloat16), labels)
    assert ce.dtype == tf.float32 and dice.dtype == tf.float32
    expected_ce, expected_dice = numpy_losses(logits, labels)
    np.testing.assert_allclose(float(ce), expected_ce, rtol=2e-2)
    np.testing.assert_allclose(float(dice), expected_dice, rtol=2e-2)


def test_perfect_prediction_has_near_zero_dice_loss():
    _, labels = random_case(5)
    logits = (labels * 2 - 1) * 30.0
    assert float(dice_loss(logits, labels)) < 1e-6


def test_weight_decay_is_half_sum_of_squares_without_batch_norm():
    kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="conv/kernel")
    bias = tf.Variable([1.0, -2.0], name="conv/bias")
    norm = tf.Variable([100.0], name="batch_normalization/gamma")
    expected = 0.1 * (np.sum(np.arange(6) ** 2) + 1 + 4) / 2
    np.testing.assert_allclose(float(weight_decay([kernel, bias, norm], 0.1)), expected, rtol=1e-6)


def test_k_class_losses_match_numpy():
    for classes in (3, 5):
        rng = np.random.default_rng(classes)
        logits = rng.normal(0, 3, (2, 6, 5, classes)).astype(np.float32)
        labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, (2, 6, 5))]
        expected_ce, expected_dice = numpy_losses(logits, labels)
        np.testing.assert_allclose(float(cross_entropy(logits, labels)), expected_ce, rtol=1e-5)
        np.testing.assert_allclose(float(dice_loss(logits, labels)), expected_dice, rtol=1e-5)


def recipe_label(label_0_255: np.ndarray) -> tf.Tensor:
    """The recipe's own label path, written out: 0/255 -> [0, 1], resize, threshold, pad, one-hot, centre."""
    label = tf.cast(label_0_255, tf.float32)[..., None] / 255.0
    label = tf.image.resize(label, (388, 388), method="bilinear")
    label = tf.where(label < 0.5, 0.0, 1.0)
    label = tf.image.resize_with_crop_or_pad(label, 572, 572)
    label = tf.one_hot(tf.cast(label[..., 0], tf.int32), 2)
    label = tf.image.resize_with_crop_or_pad(label, 388, 388)
    return tf.where(label < 0.5, 0.0, 1.0)


def test_two_class_ids_give_the_recipes_labels_and_loss():
    """--num_classes 2 from class ids is the recipe, label for label and loss for loss, on the same logits."""
    from data_loading import preprocessing as pre

    rng = np.random.default_rng(9)
    blocks = np.kron(rng.integers(0, 2, (16, 16)), np.ones((32, 32))).astype(np.uint8)  # 512x512
    noisy = np.where(rng.uniform(size=blocks.shape) < 0.05, 1 - blocks, blocks)
    ours = pre.crop_label(pre.normalize_label(noisy, 2))
    theirs = recipe_label(noisy * 255)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    logits = rng.normal(0, 2, (1, 388, 388, 2)).astype(np.float32)
    ours_losses = (cross_entropy(logits, ours[None]), dice_loss(logits, ours[None]))
    recipe_losses = (cross_entropy(logits, theirs[None]), dice_loss(logits, theirs[None]))
    for ours_loss, recipe_loss in zip(ours_losses, recipe_losses, strict=True):
        assert float(ours_loss) == float(recipe_loss)


def test_ensemble_losses_are_the_dice_of_the_mean_probabilities_and_the_mean_cross_entropy():
    from runtime.loop.losses import ensemble_losses

    (first, labels), (second, _) = random_case(10), random_case(11)
    ce, dice = ensemble_losses([tf.constant(first), tf.constant(second)], tf.constant(labels))
    expected_ce = (numpy_losses(first, labels)[0] + numpy_losses(second, labels)[0]) / 2
    np.testing.assert_allclose(float(ce), expected_ce, rtol=1e-5)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    mean = (softmax(first.astype(np.float64)) + softmax(second.astype(np.float64))) / 2
    _, expected_dice = numpy_losses(np.log(mean), labels)  # log p: logits whose softmax is p
    np.testing.assert_allclose(float(dice), expected_dice, rtol=1e-5)
    alone = ensemble_losses([tf.constant(first)] * 2, tf.constant(labels))
    np.testing.assert_allclose([float(v) for v in alone], numpy_losses(first, labels), rtol=1e-5)
