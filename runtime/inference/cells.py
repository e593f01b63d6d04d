"""Cells as a label image: what EM users take on to tracing and counting, beside the membrane mask.

Each slice is labelled on its own: 0 on the membranes (class 0), and one id,
1..n, per 4-connected region of the rest (the cell regions the challenge
scores compare). Ids are uint16, or uint32 once a stack holds a slice of more
than 65535 cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.inference.metrics import cell_regions


def cell_labels(class_ids: np.ndarray) -> np.ndarray:
    """[slices, height, width] class ids -> the same shape of cell ids, each slice numbered from 1."""
    labelled = np.stack([cell_regions(ids) for ids in class_ids]) if len(class_ids) else class_ids.astype(np.uint16)
    fits_16_bits = labelled.max(initial=0) <= np.iinfo(np.uint16).max
    return labelled.astype(np.uint16 if fits_16_bits else np.uint32)


def cells_path(masks_path: Path) -> Path:
    """``test-masks.tif`` -> ``test-cells.tif``; any other name gets ``-cells`` added to its stem."""
    stem = masks_path.stem.removesuffix("-masks")
    return masks_path.with_name(f"{stem}-cells{masks_path.suffix or '.tif'}")
