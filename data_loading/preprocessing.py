"""Per-sample tensor transforms of the recipe: normalise, augment, crop.

Geometry (``--input_mode resize``, the recipe's): slices are resized to the
388x388 output size and zero-padded to the 572x572 input size, so that the
valid convolutions of the UNet map the input back onto exactly the labelled
388x388 centre. Labels arrive as class ids (0..K-1) and leave one-hot.
``--input_mode tile`` cuts full-resolution crops instead (data_loading/tiles.py)
and shares the augmentation and label handling below.
"""

from __future__ import annotations

import tensorflow as tf

from common.geometry import INPUT_SIZE, NUM_CLASSES, OUTPUT_SIZE

ELASTIC_STREAM = 0x5E1A571C  # folded into a sample's seed for its elastic field


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


def hard_labels(label: tf.Tensor) -> tf.Tensor:
    """Soft labels (after bilinear resampling) back to 0/1 channels.

    Two classes keep the recipe's rule, each channel thresholded at 0.5; more
    classes take each pixel's strongest class, so that every pixel has exactly
    one (a threshold would leave pixels where three classes meet with none).
    Ties go to the higher class id, as the 0.5 threshold does for two.
    """
    if label.shape[-1] == 2:
        return _binarize(label)
    classes = label.shape[-1]
    strongest = classes - 1 - tf.argmax(tf.reverse(label, axis=[-1]), axis=-1, output_type=tf.int32)
    return tf.one_hot(strongest, classes)


def normalize_label(class_ids: tf.Tensor, num_classes: int = NUM_CLASSES) -> tf.Tensor:
    """uint8 HxW class ids -> one-hot float32 572x572xK, content resized to 388 and padded with class 0.

    For two classes this is the recipe's: the cell map is resized bilinearly
    and thresholded at 0.5. For more, the one-hot channels are resized and each
    pixel takes its strongest class.
    """
    ids = tf.cast(class_ids, tf.float32)[..., tf.newaxis]
    if num_classes == 2:
        resized = _binarize(tf.image.resize(ids, (OUTPUT_SIZE, OUTPUT_SIZE), method="bilinear"))
        ids = tf.cast(resized[..., 0], tf.int32)
    else:
        one_hot = tf.one_hot(tf.cast(class_ids, tf.int32), num_classes)
        resized = tf.image.resize(one_hot, (OUTPUT_SIZE, OUTPUT_SIZE), method="bilinear")
        ids = tf.argmax(hard_labels(resized), axis=-1, output_type=tf.int32)
    ids = tf.image.resize_with_crop_or_pad(ids[..., tf.newaxis], INPUT_SIZE, INPUT_SIZE)[..., 0]
    return tf.one_hot(ids, num_classes)


def normalize_weights(weights: tf.Tensor, fill: float) -> tf.Tensor:
    """float HxW weight map -> 572x572x1 as ``normalize_label`` places the labels, ``fill`` where they are padded."""
    resized = tf.image.resize(tf.cast(weights, tf.float32)[..., tf.newaxis], (OUTPUT_SIZE, OUTPUT_SIZE),
                              method="bilinear")
    return tf.image.resize_with_crop_or_pad(resized - fill, INPUT_SIZE, INPUT_SIZE) + fill


def _split(label: tf.Tensor, weighted: bool) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Class channels and, if ``weighted``, the weight map packed after them as the last channel."""
    return (label[..., :-1], label[..., -1:]) if weighted else (label, None)


def _join(classes: tf.Tensor, weights: tf.Tensor | None) -> tf.Tensor:
    return classes if weights is None else tf.concat([classes, weights], axis=-1)


def crop_label(label: tf.Tensor, weighted: bool = False) -> tf.Tensor:
    """572x572xK label -> the 388x388xK centre the network predicts, hard 0/1 again (a packed weight map as is)."""
    classes, weights = _split(tf.image.resize_with_crop_or_pad(label, OUTPUT_SIZE, OUTPUT_SIZE), weighted)
    return _join(hard_labels(classes), weights)


def elastic_field(seed: tf.Tensor, sigma: float, grid: int, size: int) -> tf.Tensor:
    """A smooth random displacement field, [size, size, 2] in pixels (rows, columns).

    As in the U-Net paper: displacements drawn on a coarse grid x grid lattice
    from a normal distribution of standard deviation ``sigma`` pixels, then
    interpolated bicubically to every pixel.
    """
    coarse = tf.random.stateless_normal([1, grid, grid, 2], seed, stddev=sigma)
    return tf.image.resize(coarse, (size, size), method="bicubic")[0]


def warp(image: tf.Tensor, field: tf.Tensor, nearest: bool = False) -> tf.Tensor:
    """``image`` [H, W, C] sampled at (row, column) + ``field``; positions outside take the edge pixel.

    Bilinear for images (and weight maps); nearest neighbour for labels, so a
    warped label holds only the classes it held before.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    last_row, last_col = tf.cast(height - 1, tf.float32), tf.cast(width - 1, tf.float32)
    rows = tf.clip_by_value(rows + field[..., 0], 0.0, last_row)
    cols = tf.clip_by_value(cols + field[..., 1], 0.0, last_col)
    if nearest:
        return tf.gather_nd(image, tf.cast(tf.stack([tf.round(rows), tf.round(cols)], axis=-1), tf.int32))
    top, left = tf.floor(rows), tf.floor(cols)
    bottom, right = tf.minimum(top + 1.0, last_row), tf.minimum(left + 1.0, last_col)

    def at(r: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
        return tf.gather_nd(image, tf.cast(tf.stack([r, c], axis=-1), tf.int32))

    down, across = (rows - top)[..., tf.newaxis], (cols - left)[..., tf.newaxis]
    upper = at(top, left) * (1.0 - across) + at(top, right) * across
    lower = at(bottom, left) * (1.0 - across) + at(bottom, right) * across
    return upper * (1.0 - down) + lower * down


def augment(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, elastic_sigma: float = 0.0,
            elastic_grid: int = 3, weighted: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flips, crop-and-zoom, an optional elastic deformation and brightness; one draw for image and label.

    Stateless random ops keyed by ``seed`` (shape [2]) make the augmentation of
    the n-th sample of a run a pure function of (run seed, n). The elastic
    field's seed is folded out of ``seed`` apart from the recipe's four draws,
    so with ``elastic_sigma`` 0 the stream is the recipe's, draw for draw.
    ``weighted``: the label's last channel is a weight map, moved with the
    labels but resampled bilinearly (every op acts on each channel alone, so
    the image and class channels come out as without it).
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
    if elastic_sigma > 0:
        field = elastic_field(tf.random.experimental.stateless_fold_in(seed, ELASTIC_STREAM), elastic_sigma,
                              elastic_grid, INPUT_SIZE)
        classes, weights = _split(label, weighted)
        image = warp(image, field)
        label = _join(warp(hard_labels(classes), field, nearest=True),
                      None if weights is None else warp(weights, field))
    delta = tf.random.stateless_uniform([], brightness, minval=-0.2, maxval=0.2)
    image = tf.clip_by_value(image + delta, -1.0, 1.0)
    return image, label
