"""Full-resolution tiles: the geometry ``--input_mode tile`` trains and evaluates with.

The UNet's valid convolutions turn a 572x572 input into the 388x388 centre,
so every 388x388 piece of a slice needs 92 pixels of context on each side.
At the slice's border that context is the slice's mirror image, as in the
overlap-tile strategy of the UNet paper and ``--predict_strategy tile``;
slices smaller than 388 in a dimension are mirrored out to 388 first. One
padding function serves training, evaluation and prediction, so a model
sees the same borders in all three.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from common.geometry import INPUT_SIZE, OUTPUT_SIZE

CONTEXT = (INPUT_SIZE - OUTPUT_SIZE) // 2  # 92 pixels on each side


def mirror_pad(image: np.ndarray, height: int, width: int, context: int = CONTEXT) -> np.ndarray:
    """``image`` (h x w) mirrored out to (height + 2 context) x (width + 2 context), the slice at (context, context).

    NumPy's ``reflect`` mode mirrors without repeating the edge pixel, and
    reflects again where a pad is wider than the slice.
    """
    rows, cols = image.shape[:2]
    padding = ((context, context + height - rows), (context, context + width - cols))
    return np.pad(image, padding, mode="reflect")


def covered_size(image_shape: tuple[int, ...]) -> tuple[int, int]:
    """The area tiles are cut from: the slice, mirrored out to at least 388 in each dimension."""
    return max(image_shape[0], OUTPUT_SIZE), max(image_shape[1], OUTPUT_SIZE)


def tile_offsets(length: int) -> list[int]:
    """Starts of 388-long windows that cover ``length`` (>= 388): every 388, the last one flush with the end.

    Evaluation cuts its tiles here, so every labelled pixel it scores is a
    real one (the last window overlaps the one before it instead of running
    into the mirror).
    """
    starts = list(range(0, length - OUTPUT_SIZE + 1, OUTPUT_SIZE))
    if starts[-1] != length - OUTPUT_SIZE:
        starts.append(length - OUTPUT_SIZE)
    return starts


def _corners(height: int, width: int) -> list[tuple[int, int]]:
    return [(top, left) for top in tile_offsets(height) for left in tile_offsets(width)]


def input_tiles(image: np.ndarray) -> list[np.ndarray]:
    """The 572x572 network inputs whose 388x388 centres cover one slice (evaluation's grid)."""
    height, width = covered_size(image.shape)
    padded = mirror_pad(image, height, width)
    return [padded[top:top + INPUT_SIZE, left:left + INPUT_SIZE] for top, left in _corners(height, width)]


def evaluation_tiles(image: np.ndarray, label: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """572x572 image tiles of one slice and the 388x388 label centres they predict, pixel for pixel."""
    height, width = covered_size(image.shape)
    padded_label = mirror_pad(label, height, width, context=0)
    labels = [padded_label[top:top + OUTPUT_SIZE, left:left + OUTPUT_SIZE] for top, left in _corners(height, width)]
    return input_tiles(image), labels


class TileSampler:
    """Random 572x572 crops of mirror-padded training slices, with their labels at the same place.

    The padded slices (uint8 images and class ids) are laid into one canvas
    each, zero beyond a slice's own extent, so slices of different sizes share
    one tensor; ``sizes`` keeps each one's covered size so no crop reaches the
    zeros.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray],
                 weights: list[np.ndarray] | None = None) -> None:
        covered = [covered_size(image.shape) for image in images]
        shape = self._canvas_shape([image.shape for image in images])
        self.images = tf.constant(self._canvas(images, covered, np.zeros(shape, np.uint8)))
        self.labels = tf.constant(self._canvas(labels, covered, np.zeros(shape, np.uint8)))
        # Weight maps (data_loading/border_weights.py), mirrored like the labels they were computed from.
        self.weights = None if weights is None else tf.constant(self._canvas(weights, covered,
                                                                             np.zeros(shape, np.float32)))
        self.sizes = tf.constant(covered, tf.int32)

    @staticmethod
    def _canvas(slices: list[np.ndarray], covered: list[tuple[int, int]], canvas: np.ndarray) -> np.ndarray:
        for index, (piece, (height, width)) in enumerate(zip(slices, covered, strict=True)):
            canvas[index, :height + 2 * CONTEXT, :width + 2 * CONTEXT] = mirror_pad(piece, height, width)
        return canvas

    @staticmethod
    def _canvas_shape(shapes: list[tuple[int, ...]]) -> tuple[int, int, int]:
        """(slices, height, width) of a canvas that holds every padded slice of these shapes."""
        covered = [covered_size(shape) for shape in shapes]
        return (len(shapes), max(h for h, _ in covered) + 2 * CONTEXT, max(w for _, w in covered) + 2 * CONTEXT)

    @staticmethod
    def canvas_bytes(shapes: list[tuple[int, ...]]) -> int:
        """Memory the two canvases (images, labels) of slices of these shapes take."""
        return 2 * math.prod(TileSampler._canvas_shape(shapes)) if shapes else 0

    def offset(self, chosen: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Top-left corner [y, x] of the 388x388 window, uniform over the covered area of slice ``chosen``."""
        limits = self.sizes[chosen] - OUTPUT_SIZE + 1
        draws = tf.random.stateless_uniform([2], seed, minval=0, maxval=2**31 - 1, dtype=tf.int32)
        return draws % limits

    def crop(self, chosen: tf.Tensor, corner: tf.Tensor, canvas: tf.Tensor | None = None) -> tuple[tf.Tensor, ...]:
        """572x572 image and label crops (uint8) whose centres are the window at ``corner``; with ``canvas``
        (e.g. ``self.weights``), its crop at the same place too."""
        begin = tf.stack([chosen, corner[0], corner[1]])
        size = [1, INPUT_SIZE, INPUT_SIZE]
        crops = (tf.slice(self.images, begin, size)[0], tf.slice(self.labels, begin, size)[0])
        return crops if canvas is None else (*crops, tf.slice(canvas, begin, size)[0])
