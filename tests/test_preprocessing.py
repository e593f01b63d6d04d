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


def _three_class_pattern() -> tuple[tf.Tensor, tf.Tensor]:
    """572x572 image whose grey level says the class (0, 1, 2 in stripes and a disc), labels one-hot."""
    rows, cols = np.mgrid[:572, :572]
    ids = np.where((rows // 40) % 2 == 0, 1, 0)
    ids[(rows - 286) ** 2 + (cols - 286) ** 2 < 90 ** 2] = 2
    image = (ids.astype(np.float32) - 1.0)[..., np.newaxis]  # -1, 0, 1
    return tf.constant(image), tf.one_hot(ids, 3)


def test_elastic_field_is_smooth_and_sized_by_sigma():
    seed = tf.constant([3, 4], tf.int64)
    field = pre.elastic_field(seed, 10.0, 3, 572).numpy()
    assert field.shape == (572, 572, 2)
    assert 3.0 < field.std() < 20.0  # of the order of sigma
    assert np.abs(np.diff(field, axis=0)).max() < 1.0 and np.abs(np.diff(field, axis=1)).max() < 1.0  # smooth
    np.testing.assert_array_equal(field, pre.elastic_field(seed, 10.0, 3, 572).numpy())
    np.testing.assert_allclose(pre.elastic_field(seed, 0.0, 3, 572).numpy(), 0.0)


def test_warp_by_a_constant_shift_moves_pixels_and_keeps_edges():
    image = tf.constant(np.arange(36, dtype=np.float32).reshape(6, 6, 1))
    shift = tf.constant(np.broadcast_to(np.float32([1.0, 2.0]), (6, 6, 2)))
    warped = pre.warp(image, shift).numpy()[..., 0]
    expected = image.numpy()[..., 0][np.minimum(np.arange(6) + 1, 5)][:, np.minimum(np.arange(6) + 2, 5)]
    np.testing.assert_allclose(warped, expected)
    half = tf.constant(np.broadcast_to(np.float32([0.5, 0.0]), (6, 6, 2)))
    np.testing.assert_allclose(pre.warp(image, half).numpy()[:5, :, 0], image.numpy()[:5, :, 0] + 3.0)  # bilinear
    np.testing.assert_array_equal(pre.warp(image, tf.zeros((6, 6, 2))).numpy(), image.numpy())


def test_elastic_off_is_the_recipes_stream_draw_for_draw():
    image, label = _pattern()
    seed = tf.constant([5, 9], tf.int64)
    recipe = pre.augment(image, label, seed)
    off = pre.augment(image, label, seed, elastic_sigma=0.0)
    for a, b in zip(recipe, off, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_elastic_moves_image_and_labels_alike_and_keeps_the_classes():
    image, label = _three_class_pattern()
    changed = 0
    for index in range(6):
        seed = tf.constant([11, index], tf.int64)
        plain_image, _ = pre.augment(image, label, seed)
        aug_image, aug_label = pre.augment(image, label, seed, elastic_sigma=10.0)
        aug_label = aug_label.numpy()
        assert set(np.unique(aug_label)) <= {0.0, 1.0}
        np.testing.assert_array_equal(aug_label.sum(axis=-1), 1.0)  # one class per pixel, no new ids
        ids = aug_label.argmax(axis=-1)
        assert set(np.unique(ids)) <= {0, 1, 2}
        # The image's grey level still names the class under the label (brightness shifts all by one delta).
        grey = aug_image.numpy()[..., 0]
        delta = np.median(grey[ids == 1])  # class 1 sits at 0 + delta
        predicted = np.clip(np.round(grey - delta + 1.0), 0, 2)
        agreement = np.mean(predicted == ids)
        assert agreement > 0.97, (index, agreement)
        changed += not np.allclose(aug_image.numpy(), plain_image.numpy())
    assert changed == 6  # the field moved every sample


def test_elastic_is_a_function_of_the_seed():
    image, label = _three_class_pattern()
    seed = tf.constant([5, 9], tf.int64)
    a = pre.augment(image, label, seed, elastic_sigma=10.0)
    b = pre.augment(image, label, seed, elastic_sigma=10.0)
    c = pre.augment(image, label, tf.constant([5, 10], tf.int64), elastic_sigma=10.0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.array_equal(a[1].numpy(), c[1].numpy())
