"""The prediction strategies as one TensorFlow graph: scaled slices of any size in, class probabilities out.

Tools outside this project (bioimage.io, ilastik, deepImageJ) hand a model
a whole image and expect an answer of the same size; they know nothing of
the UNet's 572 -> 388 geometry. These functions put that geometry inside the
graph, with only ops that ONNX has (gather, reshape, resize, pad), so the same
graph exports to a SavedModel and converts to ONNX:

- ``resize``: the recipe's strategy, what a model trained with
  ``--input_mode resize`` saw: the slice resized to 388, zero-padded to 572,
  and the probabilities resized back (``strategies._resized``);
- ``tile``: the overlap-tile strategy, what ``--input_mode tile`` trained on:
  the slice mirrored out by the 92-pixel context and cut into 572x572 tiles
  whose 388x388 centres are stitched (``strategies._tiled``). The mirror is
  NumPy's ``reflect`` written as index arithmetic, so slices narrower than
  the padding reflect again as ``tiles.mirror_pad`` does.

Inputs are [batch, height, width, 1] float32 grey values already scaled as
training scaled them (``preprocessing.scale_intensity``; the zoo package
states it as its ``scale_linear`` pre-processing); outputs are [batch,
height, width, K] class probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from common.geometry import INPUT_SIZE, OUTPUT_SIZE

CONTEXT = (INPUT_SIZE - OUTPUT_SIZE) // 2  # 92: what the valid convolutions consume on each side
SLICES_SPEC = tf.TensorSpec([None, None, None, 1], tf.float32, name="raw")
Network = Callable[[tf.Tensor], tf.Tensor]  # [N, 572, 572, 1] -> [N, 388, 388, K] probabilities


def reflected(positions: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Indices into an axis of ``size`` pixels for ``positions`` that may lie outside it, mirrored without
    repeating the edge pixel (NumPy's ``reflect``), as often as needed. Shifted to non-negative numbers first:
    ONNX Runtime's integer Mod keeps the dividend's sign where TensorFlow's FloorMod does not."""
    period = tf.maximum(2 * (size - 1), 1)
    folded = tf.math.floormod(positions + CONTEXT * period, period)
    return tf.minimum(folded, period - folded)


def _tile_indices(size: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """[count * 572] source indices along one axis: tile ``i`` covers the output pixels 388 i .. 388 i + 387."""
    offsets = tf.range(count)[:, tf.newaxis] * OUTPUT_SIZE + tf.range(INPUT_SIZE)[tf.newaxis, :] - CONTEXT
    return tf.reshape(reflected(offsets, size), [-1])


def tiled(network: Network, images: tf.Tensor) -> tf.Tensor:
    """The overlap-tile strategy over a batch of equal-size slices."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    rows, cols = (height + OUTPUT_SIZE - 1) // OUTPUT_SIZE, (width + OUTPUT_SIZE - 1) // OUTPUT_SIZE
    tiles = tf.gather(tf.gather(images, _tile_indices(height, rows), axis=1), _tile_indices(width, cols), axis=2)
    tiles = tf.reshape(tiles, [batch, rows, INPUT_SIZE, cols, INPUT_SIZE, 1])
    tiles = tf.reshape(tf.transpose(tiles, [0, 1, 3, 2, 4, 5]), [-1, INPUT_SIZE, INPUT_SIZE, 1])
    centres = network(tiles)
    classes = centres.shape[-1]
    centres = tf.reshape(centres, [batch, rows, cols, OUTPUT_SIZE, OUTPUT_SIZE, classes])
    whole = tf.reshape(tf.transpose(centres, [0, 1, 3, 2, 4, 5]), [batch, rows * OUTPUT_SIZE, cols * OUTPUT_SIZE,
                                                                    classes])
    return whole[:, :height, :width, :]


def resized(network: Network, images: tf.Tensor) -> tf.Tensor:
    """The recipe's resize strategy over a batch of equal-size slices."""
    inputs = tf.image.resize(images, (OUTPUT_SIZE, OUTPUT_SIZE), method="bilinear")
    inputs = tf.image.resize_with_crop_or_pad(inputs, INPUT_SIZE, INPUT_SIZE)
    return tf.image.resize(network(inputs), tf.shape(images)[1:3], method="bilinear")


STRATEGY_GRAPHS = {"resize": resized, "tile": tiled}


def slice_probabilities(network: Network, strategy: str) -> tf.types.experimental.GenericFunction:
    """A traced function: scaled slices [B, H, W, 1] -> {"probabilities": [B, H, W, K]} by ``strategy``."""
    graph = STRATEGY_GRAPHS[strategy]

    @tf.function(input_signature=[SLICES_SPEC])
    def probabilities(raw: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": graph(network, raw)}
    return probabilities
