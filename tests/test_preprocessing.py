"""Preprocessing geometry and value ranges, and augmentation that keeps image and label aligned."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from data_loading import preprocessing as pre


def test_normalized_image_and_label(isbi_dir):
    import tifffile
    image = tifffile.imread(isbi_dir / "train-volume.tif")[0]
    label = tifffile.imread(isbi_dir / "train-labels.tif")[0]
    x = pre.normalize_image(image).numpy()
    y = pre.normalize_label(label // 255).numpy()  # class ids: 255 = cell is class 1
    assert x.shape == (572, 572, 1) and y.shape == (572, 572, 2)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert np.all(x[:92] == 0) and np.all(x[-92:] == 0)  # zero padding around the 388 content
    assert set(np.unique(y)) == {0.0, 1.0} and np.all(y.sum(-1) == 1)
    cropped = pre.crop_label(y).numpy()
    assert cropped.shape == (388, 388, 2)
    # About 78 % of ISBI label pixels are cell (255 -> class 1).
    assert 0.7 < cropped[..., 1].mean() < 0.85


def _pattern() -> tuple[tf.Tensor, tf.Tensor]:
    """An image whose bright pixels are exactly the label's class-1 pixels (blocky, so edges are few)."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 2, (22, 22))
    mask = np.kron(blocks, np.ones((26, 26)))  # 572x572
    image = tf.constant((mask * 2 - 1)[..., None], tf.float32)
    label = tf.one_hot(tf.constant(mask, tf.int32), 2)
    return image, label


def test_augmentation_moves_image_and_label_together():
    image, label = _pattern()
    flips_seen = set()
    for index in range(12):
        seed = tf.constant([123, index], tf.int64)
        aug_image, aug_label = pre.augment(image, label, seed)
        aug_label = pre.crop_label(aug_label).numpy()
        centre = tf.image.resize_with_crop_or_pad(aug_image, 388, 388).numpy()[..., 0]
        # Brightness shifts the image by one delta: threshold halfway between its two levels.
        bright = centre > (centre.max() + centre.min()) / 2
        agreement = np.mean(bright == (aug_label[..., 1] == 1))
        assert agreement > 0.97, (index, agreement)
        assert not np.array_equal(aug_image.numpy(), image.numpy())
        flips_seen.add(bool(np.array_equal(aug_label, pre.crop_label(label).numpy())))
    assert flips_seen == {False}


def test_augmentation_is_a_function_of_the_seed():
    image, label = _pattern()
    seed = tf.constant([5, 9], tf.int64)
    a = pre.augment(image, label, seed)
    b = pre.augment(image, label, seed)
    c = pre.augment(image, label, tf.constant([5, 10], tf.int64))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_brightness_stays_in_range():
    image, label = _pattern()
    for index in range(5):
        aug_image, _ = pre.augment(image, label, tf.constant([1, index], tf.int64))
        assert aug_image.numpy().min() >= -1.0 and aug_image.numpy().max() <= 1.0
