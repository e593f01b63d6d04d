"""Per-sample tensor transforms of the recipe: normalise, augment, crop.

Geometry: slices are resized to the 388x388 output size and zero-padded to
the 572x572 input size, so that the valid convolutions of the UNet map the
input back onto exactly the labelled 388x388 centre.
"""

from __future__ import annotations

import tensorflow as tf

INPUT_SIZE = 572
OUTPUT_SIZE = 388
NUM_CLASSES = 2


def scale_intensity(image):
    """uint8 grey values -> float32 in [-1, 1] (a tensor or a NumPy array, any shape)."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """uint8 HxW slice (or a batch of them) -> float32 572x572x1 in [-1, 1], content resized to 388 and zero-padded."""
    image = scale_intensity(image)[..., tf.newaxis]
    image = tf.image.resize(image, (OUTPUT_SIZE, OUTPUT_SIZE), method="bilinear")
    return tf.image.resize_with_crop_or_pad(image, INPUT_SIZE, INPUT_SIZE)


def _binarize(label: tf.Tensor) -> tf.Tensor:
    return tf.where(label < 0.5, tf.zeros_like(label), tf.ones_like(label))


def normalize_label(label: tf.Tensor) -> tf.Tensor:
    """uint8 HxW label (255 = cell) -> one-hot float32 572x572x2 (channel 1 = cell)."""
    label = tf.cast(label, tf.float32)[..., tf.newaxis] / 255.0
    label = tf.image.resize(label, (OUTPUT_SIZE, OUTPUT_SIZE), method="bilinear")
    label = tf.image.resize_with_crop_or_pad(label, INPUT_SIZE, INPUT_SIZE)
    return tf.one_hot(tf.cast(_binarize(label)[..., 0], tf.int32), NUM_CLASSES)


def crop_label(label: tf.Tensor) -> tf.Tensor:
    """572x572x2 label -> the 388x388x2 centre the network predicts, binary again."""
    label = tf.image.resize_with_crop_or_pad(label, OUTPUT_SIZE, OUTPUT_SIZE)
    return _binarize(label)


def augment(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flips, crop-and-zoom and brightness; one draw shared by image and label.

    Stateless random ops keyed by ``seed`` (shape [2]) make the augmentation of
    the n-th sample of a run a pure function of (run seed, n).
    """
    flip_lr, flip_ud, crop, brightness = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    pair = tf.concat([image, label], axis=-1)  # same geometry for both, in one op each
    pair = tf.cond(tf.random.stateless_uniform([], flip_lr) > 0.5,
                   lambda: tf.image.flip_left_right(pair), lambda: pair)
    pair = tf.cond(tf.random.stateless_uniform([], flip_ud) > 0.5,
                   lambda: tf.image.flip_up_down(pair), lambda: pair)
    # Each side of the crop box moves inwards by up to 30% of the size.
    top, left, bottom, right = tf.unstack(tf.random.stateless_uniform([4], crop, maxval=0.3))
    box = tf.stack([top, left, 1.0 - bottom, 1.0 - right])[tf.newaxis]
    pair = tf.image.crop_and_resize(pair[tf.newaxis], box, [0], (INPUT_SIZE, INPUT_SIZE))[0]
    image, label = pair[..., :1], pair[..., 1:]
    delta = tf.random.stateless_uniform([], brightness, minval=-0.2, maxval=0.2)
    image = tf.clip_by_value(image + delta, -1.0, 1.0)
    return image, label
