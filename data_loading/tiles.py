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

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from common.geometry import INPUT_SIZE, OUTPUT_SIZE
from data_loading.volume_reader import ArrayVolume, VolumeReader, read_mirrored

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


def corners(height: int, width: int) -> list[tuple[int, int]]:
    """Top-left corners (in the mirror-padded slice) of the 572x572 tiles whose centres cover it."""
    return [(top, left) for top in tile_offsets(height) for left in tile_offsets(width)]


def input_tiles(image: np.ndarray) -> list[np.ndarray]:
    """The 572x572 network inputs whose 388x388 centres cover one slice (evaluation's grid)."""
    height, width = covered_size(image.shape)
    padded = mirror_pad(image, height, width)
    return [padded[top:top + INPUT_SIZE, left:left + INPUT_SIZE] for top, left in corners(height, width)]


def evaluation_tiles(image: np.ndarray, label: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """572x572 image tiles of one slice and the 388x388 label centres they predict, pixel for pixel."""
    height, width = covered_size(image.shape)
    padded_label = mirror_pad(label, height, width, context=0)
    labels = [padded_label[top:top + OUTPUT_SIZE, left:left + OUTPUT_SIZE] for top, left in corners(height, width)]
    return input_tiles(image), labels


SliceRef = tuple[VolumeReader, int]  # one slice: its volume and its index there


def slice_refs(slices: Sequence[np.ndarray]) -> list[SliceRef]:
    """2-D arrays in memory (weight maps, tests) as slices of volumes."""
    return [(ArrayVolume(piece[np.newaxis]), 0) for piece in slices]


def read_crop(ref: SliceRef, top: int, left: int, size: int, context: int = CONTEXT) -> np.ndarray:
    """The ``size`` x ``size`` crop at (top, left) of the slice mirror-padded by ``context`` (as ``mirror_pad``
    lays it out), read from its volume: only the rows and columns of the slice the crop covers."""
    reader, z = ref
    return read_mirrored(reader, z, top - context, left - context, size, size)


class TileSampler:
    """Random 572x572 crops of mirror-padded training slices, with their labels at the same place.

    Each crop is read from the slice's volume when it is drawn, through
    ``tf.numpy_function``: a volume in memory costs no copy, and a volume on
    disk is read only where a tile falls (the chunks it touches). ``sizes``
    keeps each slice's covered size (data_loading/tiles.covered_size), which
    bounds where a crop may start.
    """

    def __init__(self, images: Sequence[SliceRef], labels: Sequence[SliceRef],
                 weights: Sequence[SliceRef] | None = None) -> None:
        self._images, self._labels, self._weights = list(images), list(labels), weights
        covered = [covered_size(reader.shape[1:]) for reader, _ in self._images]
        self.sizes = tf.constant(covered, tf.int32)
        self.weighted = weights is not None

    def offset(self, chosen: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Top-left corner [y, x] of the 388x388 window, uniform over the covered area of slice ``chosen``."""
        limits = self.sizes[chosen] - OUTPUT_SIZE + 1
        draws = tf.random.stateless_uniform([2], seed, minval=0, maxval=2**31 - 1, dtype=tf.int32)
        return draws % limits

    def _read(self, chosen: np.ndarray, corner: np.ndarray) -> list[np.ndarray]:
        index, (top, left) = int(chosen), (int(corner[0]), int(corner[1]))
        crops = [read_crop(self._images[index], top, left, INPUT_SIZE),
                 read_crop(self._labels[index], top, left, INPUT_SIZE)]
        if self._weights is not None:
            crops.append(read_crop(self._weights[index], top, left, INPUT_SIZE).astype(np.float32))
        return crops

    def crop(self, chosen: tf.Tensor, corner: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """572x572 image and label crops (uint8) whose centres are the window at ``corner``; with weight maps,
        the weights' crop at the same place too (float32)."""
        types = [tf.uint8, tf.uint8] + ([tf.float32] if self.weighted else [])
        crops = tf.numpy_function(self._read, [chosen, corner], types, stateful=False)
        for crop in crops:
            crop.set_shape([INPUT_SIZE, INPUT_SIZE])
        return tuple(crops)
