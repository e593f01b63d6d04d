"""Cells as a label image: what EM users take on to tracing and counting, beside the membrane mask.

Each slice is labelled on its own: 0 on the membranes (class 0), and one id,
1..n, per 4-connected region of the rest (the cell regions the challenge
scores compare). Ids are uint16, or uint32 once a stack holds a slice of more
than 65535 cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from runtime.inference.metrics import cell_regions
from runtime.inference.strategies import class_ids
from runtime.inference.thinned import cell_probability


def each_ids_and_cells(probability_maps: Iterable[np.ndarray],
                       threshold: float | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each map's class ids and the mask its cells are taken from: P(cell) > threshold, or the ids themselves
    without one; one slice at a time."""
    for probabilities in probability_maps:
        ids = class_ids(probabilities)
        yield ids, ids if threshold is None else (cell_probability(probabilities) > threshold).astype(np.uint8)


def cell_dtype(most_cells: int) -> type:
    """What a cell-label stack is stored as: uint16, or uint32 once a slice holds more than 65535 cells."""
    return np.uint16 if most_cells <= np.iinfo(np.uint16).max else np.uint32


def cell_ids_of_slice(mask: np.ndarray) -> np.ndarray:
    """One slice's cell ids (1..n, 0 on membranes), as uint32: written slice by slice, narrowed at the end."""
    return cell_regions(mask).astype(np.uint32)


def cell_labels(masks: np.ndarray) -> np.ndarray:
    """[slices, height, width] class ids (or 0/1 cell masks) -> cell ids of that shape, each slice from 1."""
    labelled = np.stack([cell_regions(mask) for mask in masks]) if len(masks) else masks.astype(np.uint16)
    return labelled.astype(cell_dtype(int(labelled.max(initial=0))))


def cells_path(masks_path: Path) -> Path:
    """``test-masks.tif`` -> ``test-cells.tif``; any other name gets ``-cells`` added to its stem."""
    stem = masks_path.stem.removesuffix("-masks")
    return masks_path.with_name(f"{stem}-cells{masks_path.suffix or '.tif'}")
