"""From grey slices of any size to full-resolution cell probabilities, by two strategies.

``resize`` is the recipe's: each slice is resized to the network's 388x388
output size, zero-padded to its 572x572 input, and the prediction resized
back. ``tile`` is the overlap-tile strategy of the UNet paper: the slice is
mirror-padded by the 92-pixel context the valid convolutions consume, cut
into 572x572 tiles whose 388x388 centres cover it, and the centres are
stitched at full resolution, with no resizing of the image at all.

Both take a ``ProbabilityFn``: normalised 572x572x1 inputs -> 388x388 cell
probabilities, which is all they need of a model (a trained Runner, or an
exported model loaded without the training flags).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from data_loading import preprocessing as pre

ProbabilityFn = Callable[[tf.Tensor], tf.Tensor]  # [B, 572, 572, 1] float32 -> [B, 388, 388] P(cell)
CONTEXT = (pre.INPUT_SIZE - pre.OUTPUT_SIZE) // 2  # 92 pixels on each side
STRATEGIES = ("resize", "tile")


def _batches(items: list[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(items), batch_size):
        yield np.stack(items[start:start + batch_size])


def predict_resized(probabilities: ProbabilityFn, slices: np.ndarray, batch_size: int) -> np.ndarray:
    height, width = slices.shape[1:]
    outputs = []
    for batch in _batches(list(slices), batch_size):
        inputs = pre.normalize_image(batch)  # works on a batch as on one slice
        predicted = probabilities(inputs)[..., tf.newaxis]
        outputs.append(tf.image.resize(predicted, (height, width), method="bilinear")[..., 0].numpy())
    return np.concatenate(outputs)


def tile_grid(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of 388x388 output tiles that cover a slice."""
    return math.ceil(height / pre.OUTPUT_SIZE), math.ceil(width / pre.OUTPUT_SIZE)


def _tiles(image: np.ndarray) -> list[np.ndarray]:
    """572x572 mirror-padded input tiles of one normalised slice, row by row."""
    height, width = image.shape
    rows, cols = tile_grid(height, width)
    size, step = pre.INPUT_SIZE, pre.OUTPUT_SIZE
    padding = ((CONTEXT, CONTEXT + rows * step - height), (CONTEXT, CONTEXT + cols * step - width))
    padded = np.pad(image, padding, mode="reflect")  # numpy reflects repeatedly for pads wider than the slice
    return [padded[r * step:r * step + size, c * step:c * step + size, np.newaxis]
            for r in range(rows) for c in range(cols)]


def predict_tiled(probabilities: ProbabilityFn, slices: np.ndarray, batch_size: int) -> np.ndarray:
    count, height, width = slices.shape
    rows, cols = tile_grid(height, width)
    tiles = [tile for image in slices for tile in _tiles(pre.scale_intensity(image).numpy())]
    centres = np.concatenate([probabilities(tf.constant(batch)).numpy() for batch in _batches(tiles, batch_size)])
    step = pre.OUTPUT_SIZE
    stitched = centres.reshape(count, rows, cols, step, step).transpose(0, 1, 3, 2, 4)
    return stitched.reshape(count, rows * step, cols * step)[:, :height, :width]


def predict_probabilities(probabilities: ProbabilityFn, slices: np.ndarray, batch_size: int,
                          strategy: str = "resize") -> np.ndarray:
    """P(cell) for every pixel of a uint8 (slices, height, width) stack."""
    if strategy == "tile":
        return predict_tiled(probabilities, slices, batch_size)
    return predict_resized(probabilities, slices, batch_size)


def to_masks(probabilities: np.ndarray) -> np.ndarray:
    """0 = membrane, 255 = cell: thresholded after any resizing, so strictly binary."""
    return np.where(probabilities >= 0.5, 255, 0).astype(np.uint8)
