"""From grey slices of any size to full-resolution class ids, by two strategies.

``resize`` is the recipe's: each slice is resized to the network's 388x388
output size, zero-padded to its 572x572 input, and the class probabilities
resized back. ``tile`` is the overlap-tile strategy of the UNet paper: the
slice is mirror-padded by the 92-pixel context the valid convolutions consume
(data_loading/tiles.py, shared with tile training), cut into 572x572 tiles
whose 388x388 centres cover it, and the centres are stitched at full
resolution, with no resizing of the image at all.

Test-time augmentation (``tta``) averages the class probabilities of the 8
views of each slice (its four quarter turns, each also mirrored), every view
mapped back onto the slice before the mean; it costs 8 passes per slice.

Both take a ``ProbabilityFn``: normalised 572x572x1 inputs -> 388x388xK class
probabilities, which is all they need of a model (a trained Runner, or an
exported model loaded without the training flags). Slices are processed a
few at a time, so a large stack never holds more than a batch of float
probability maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from common.geometry import OUTPUT_SIZE
from data_loading import preprocessing as pre
from data_loading.tiles import CONTEXT
from data_loading.volume_reader import ArrayVolume, VolumeReader, read_mirrored

ProbabilityFn = Callable[[tf.Tensor], tf.Tensor]  # [B, 572, 572, 1] float32 -> [B, 388, 388, K] probabilities
STRATEGIES = ("resize", "tile")
VIEWS = 8  # the symmetries of a square: 4 quarter turns, each with and without a mirror
__all__ = ["CONTEXT", "STRATEGIES", "VIEWS", "ProbabilityFn", "class_ids", "iter_probabilities", "mask_values",
           "predict_class_ids", "predict_probabilities", "tile_grid", "view", "views_mapped_back", "unview"]


def _batches(items: list[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(items), batch_size):
        yield np.stack(items[start:start + batch_size])


def _outputs(probabilities: ProbabilityFn, inputs: list[np.ndarray], batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(probabilities(tf.constant(batch))) for batch in _batches(inputs, batch_size)])


def _resized(probabilities: ProbabilityFn, slices: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    inputs = [pre.normalize_image(image).numpy() for image in slices]
    outputs = _outputs(probabilities, inputs, batch_size)
    return [tf.image.resize(output, image.shape, method="bilinear").numpy()
            for image, output in zip(slices, outputs, strict=True)]


def tile_grid(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of 388x388 output tiles that cover a slice."""
    return math.ceil(height / OUTPUT_SIZE), math.ceil(width / OUTPUT_SIZE)


def tile_places(top: int, left: int, height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Corners of the output tiles of one grid, anchored at the slice's (0, 0) and stepping by ``tile``, that
    meet the box: the same tiles whatever box (block, chunk, slice) asks, so every box of a slice is
    predicted exactly as the whole slice is."""
    rows = range(top // tile * tile, top + height, tile)
    cols = range(left // tile * tile, left + width, tile)
    return [(row, col) for row in rows for col in cols]


def box_probabilities(probabilities: ProbabilityFn, volume: VolumeReader, z: int, top: int, left: int,
                      height: int, width: int, tile: int = OUTPUT_SIZE, batch_size: int = 4,
                      tta: bool = False) -> np.ndarray:
    """Class probabilities of a box of slice ``z`` by overlap-tile: output tiles of ``tile`` pixels on the
    slice's grid (``tile_places``), each read with its 92 pixels of context (mirrored at the volume's edges, as
    ``mirror_pad`` mirrors a slice) and ``batch_size`` at a time; with ``tta`` each tile is the mean of its 8
    views. ``probabilities`` takes inputs of ``tile + 184`` pixels. Only the rows and columns of the volume
    the tiles cover are read."""
    size = tile + 2 * CONTEXT
    places = tile_places(top, left, height, width, tile)
    box = None
    for start in range(0, len(places), batch_size):
        part = places[start:start + batch_size]
        batch = np.stack([read_mirrored(volume, z, row - CONTEXT, col - CONTEXT, size, size) for row, col in part])
        inputs = pre.scale_intensity(batch)[..., tf.newaxis]
        outputs = views_mapped_back(probabilities, inputs, tta)
        outputs = np.asarray(outputs[0] if len(outputs) == 1 else tf.add_n(outputs) / len(outputs))
        if box is None:
            box = np.empty((height, width, outputs.shape[-1]), outputs.dtype)
        for (row, col), output in zip(part, outputs, strict=True):
            r0, c0 = max(row, top), max(col, left)
            r1, c1 = min(row + tile, top + height), min(col + tile, left + width)
            box[r0 - top:r1 - top, c0 - left:c1 - left] = output[r0 - row:r1 - row, c0 - col:c1 - col]
    return box


def _tiled_slice(probabilities: ProbabilityFn, image: np.ndarray, batch_size: int) -> np.ndarray:
    """One slice's class probabilities at full resolution: the box of the whole slice."""
    height, width = image.shape
    return box_probabilities(probabilities, ArrayVolume(image[np.newaxis]), 0, 0, 0, height, width,
                             batch_size=batch_size)


def _tiled(probabilities: ProbabilityFn, slices: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    return [_tiled_slice(probabilities, image, batch_size) for image in slices]


def view(image: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0..7) of a slice (or a probability map): ``k % 4`` quarter turns, then a mirror if ``k >= 4``."""
    turned = np.rot90(image, k % 4, axes=(0, 1))
    return np.ascontiguousarray(turned[:, ::-1] if k >= 4 else turned)


def unview(image: np.ndarray, k: int) -> np.ndarray:
    """The inverse of ``view``: back onto the slice's own orientation."""
    unmirrored = image[:, ::-1] if k >= 4 else image
    return np.ascontiguousarray(np.rot90(unmirrored, -(k % 4), axes=(0, 1)))


def quarter_turns(images: tf.Tensor, k: int) -> tf.Tensor:
    """A [B, H, W, C] batch turned ``k`` quarter turns counter-clockwise, as np.rot90 over (rows, columns).

    Not tf.image.rot90: for a batch of unknown size it guards its shape with an
    Assert inside a cond, whose Merge node makes grappler print a warning line
    at every evaluation.
    """
    k %= 4
    if k == 1:
        return tf.reverse(tf.transpose(images, [0, 2, 1, 3]), axis=[1])
    if k == 2:
        return tf.reverse(images, axis=[1, 2])
    if k == 3:
        return tf.transpose(tf.reverse(images, axis=[1]), [0, 2, 1, 3])
    return images


def views_mapped_back(network: Callable[[tf.Tensor], tf.Tensor], images: tf.Tensor, tta: bool) -> list[tf.Tensor]:
    """A network's outputs for a [B, H, W, C] batch in the graph: one, or with ``tta`` one per view, each turned
    back onto the batch's own orientation (as ``view`` and ``unview`` do for one slice), ready to be averaged.
    The outputs are the centres of the inputs, so any view of an input has the same view of its output."""
    outputs = []
    for k in range(VIEWS if tta else 1):
        turned = quarter_turns(images, k)
        output = network(tf.reverse(turned, axis=[2]) if k >= 4 else turned)
        unmirrored = tf.reverse(output, axis=[2]) if k >= 4 else output
        outputs.append(quarter_turns(unmirrored, -k))
    return outputs


def _one_pass(probabilities: ProbabilityFn, slices: Sequence[np.ndarray], batch_size: int,
              strategy: str) -> list[np.ndarray]:
    if strategy == "tile":
        return _tiled(probabilities, slices, batch_size)
    return _resized(probabilities, slices, batch_size)


def predict_probabilities(probabilities: ProbabilityFn, slices: Sequence[np.ndarray], batch_size: int,
                          strategy: str = "resize", tta: bool = False) -> list[np.ndarray]:
    """Class probabilities (height x width x K) of every pixel of each uint8 slice; ``tta``: the mean of 8 views."""
    if not tta:
        return _one_pass(probabilities, slices, batch_size, strategy)
    total: list[np.ndarray] = []
    for k in range(VIEWS):
        seen = _one_pass(probabilities, [view(image, k) for image in slices], batch_size, strategy)
        back = [unview(p, k) for p in seen]
        total = [t + b for t, b in zip(total, back, strict=True)] if total else back
    return [t / VIEWS for t in total]


def class_ids(probabilities: np.ndarray) -> np.ndarray:
    """Each pixel's class: for two classes the recipe's P(cell) >= 0.5, for more the most probable
    (ties to the higher id, as the threshold gives them to cell). Taken after any resizing, so exact ids."""
    classes = probabilities.shape[-1]
    if classes == 2:
        return (probabilities[..., 1] >= 0.5).astype(np.uint8)
    return (classes - 1 - np.argmax(probabilities[..., ::-1], axis=-1)).astype(np.uint8)


def iter_probabilities(probabilities: ProbabilityFn, slices: Iterable[np.ndarray], batch_size: int,
                       strategy: str = "resize", tta: bool = False) -> Iterator[np.ndarray]:
    """Each slice's class probabilities in turn, the slices taken from ``slices`` as they come (a generator
    reading a volume from disk works): ``batch_size`` slices at a time for ``resize``, one for ``tile``
    (its tiles batched), so that memory holds the float maps of one batch of slices, never of the stack."""
    group: list[np.ndarray] = []
    per_pass = 1 if strategy == "tile" else batch_size
    for image in slices:
        group.append(image)
        if len(group) == per_pass:
            yield from predict_probabilities(probabilities, group, batch_size, strategy, tta)
            group = []
    if group:
        yield from predict_probabilities(probabilities, group, batch_size, strategy, tta)


def predict_class_ids(probabilities: ProbabilityFn, slices: Sequence[np.ndarray], batch_size: int,
                      strategy: str = "resize", tta: bool = False) -> list[np.ndarray]:
    """uint8 class ids at each slice's own size."""
    return [class_ids(p) for p in iter_probabilities(probabilities, slices, batch_size, strategy, tta)]


def mask_values(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """What a masks file holds: the recipe's 0 = membrane / 255 = cell for two classes, class ids for more."""
    return (ids * np.uint8(255)).astype(np.uint8) if num_classes == 2 else ids.astype(np.uint8)
