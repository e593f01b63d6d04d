"""The U-Net paper's weight map: heavy weights on the thin borders between touching cells.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``d1`` and ``d2`` are the distances from pixel x to the nearest and the
second-nearest cell, the cells being the 4-connected regions of the
non-membrane classes (a pixel inside a cell is at distance 0 from it).
``w_c`` balances the class frequencies of the training labels: class k
weighs 1 / (K f_k), so every class carries the same total weight and the
mean of w_c over the pixels is 1. ``balance=False`` sets w_c to 1 for every
class instead, a variant beyond the paper: on ISBI the balancing weighs the
membrane 3.5 times a cell pixel everywhere, which widened the predicted
membranes and cost Dice (docs/data.md). Only the narrow membranes between two
cells get the extra w0 (a membrane pixel 1 pixel from each of two cells
gets about 0.92 w0 with sigma 5); a lone membrane far from any second cell
gets almost none.

Computed once per training slice, at the labels' own resolution, before any
resizing or augmentation (the map then travels with the labels), so sigma is
in pixels of the label images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt, find_objects
from scipy.ndimage import label as connected_components

from common.errors import UserInputError

MEMBRANE = 0
NEGLIGIBLE = 1e-7  # the border term is cut off where it would be below NEGLIGIBLE * w0


def class_weights(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """w_c of each class over a set of class-id slices: 1 / (K f_k); 1 for a class with no pixel."""
    counts = np.zeros(num_classes, np.float64)
    for ids in labels:
        counts += np.bincount(ids.ravel(), minlength=num_classes)[:num_classes]
    frequencies = counts / max(counts.sum(), 1.0)
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, 1.0 / (num_classes * frequencies), 1.0)


def two_nearest_cell_distances(class_ids: np.ndarray, reach: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """d1 and d2 of every pixel (Euclidean, in pixels); inf where fewer cells lie within ``reach``.

    Each cell's distance transform is taken over its bounding box grown by
    ``reach`` only, so a slice of hundreds of cells costs hundreds of small
    transforms rather than as many whole-slice ones.
    """
    cells, _ = connected_components(class_ids != MEMBRANE)  # default structure: 4-connected
    nearest = np.full(class_ids.shape, np.inf)
    second = np.full(class_ids.shape, np.inf)
    margin = int(min(math.ceil(reach), max(class_ids.shape)))
    for index, box in enumerate(find_objects(cells), start=1):
        grown = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, size))
                      for s, size in zip(box, class_ids.shape, strict=True))
        distance = distance_transform_edt(cells[grown] != index)
        near, far = nearest[grown], second[grown]
        second[grown] = np.minimum(far, np.maximum(near, distance))
        nearest[grown] = np.minimum(near, distance)
    return nearest, second


def border_weight_map(class_ids: np.ndarray, weights_of_classes: np.ndarray, w0: float = 10.0,
                      sigma: float = 5.0) -> np.ndarray:
    """float32 w(x) of one slice of class ids (see the module docstring)."""
    reach = sigma * math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE))  # d1 + d2 beyond this: term < NEGLIGIBLE
    nearest, second = two_nearest_cell_distances(class_ids, reach)
    total = nearest + second  # inf where no second cell is within reach: no border term
    with np.errstate(over="ignore", invalid="ignore"):
        border = np.where(np.isfinite(total), w0 * np.exp(-np.square(total) / (2.0 * sigma**2)), 0.0)
    return (weights_of_classes[class_ids] + border).astype(np.float32)


def training_weight_maps(labels: Sequence[np.ndarray], num_classes: int, w0: float, sigma: float,
                         balance: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """The map of every training slice and the class weights w_c they share; refused (exit 2) without cells."""
    if not any(np.any(ids != MEMBRANE) for ids in labels):
        raise UserInputError("--border_weights needs cells in the training labels: every training label pixel "
                             "is class 0 (membrane), so there are no borders between cells to weigh")
    w_c = class_weights(labels, num_classes) if balance else np.ones(num_classes)
    return [border_weight_map(ids, w_c, w0, sigma) for ids in labels], w_c
