"""Cell label images: one id per 4-connected cell, 0 on membranes, each slice on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.inference.cells import cell_labels, cells_path


def test_cells_are_numbered_per_slice_and_membranes_stay_zero():
    ids = np.zeros((2, 5, 7), np.uint8)
    ids[0, :, :3] = 1  # cell A, left of a membrane column
    ids[0, :, 4:] = 1  # cell B, right of it
    ids[1, 1, 1] = ids[1, 2, 2] = 1  # touch only at a corner: two cells under 4-connectivity
    labels = cell_labels(ids)
    assert labels.dtype == np.uint16 and labels.shape == ids.shape
    assert set(np.unique(labels[0])) == {0, 1, 2} and len(np.unique(labels[0, :, :3])) == 1
    assert labels[0, 0, 0] != labels[0, 0, 6]
    assert set(np.unique(labels[1])) == {0, 1, 2}  # numbered from 1 again in the next slice
    np.testing.assert_array_equal(labels == 0, ids == 0)


def test_classes_above_one_are_inside_cells():
    ids = np.array([[[1, 2, 0, 2]]], np.uint8)  # a mitochondrion (2) inside its cell (1)
    np.testing.assert_array_equal(cell_labels(ids), [[[1, 1, 0, 2]]])


def test_more_than_65535_cells_switch_to_uint32():
    ids = np.zeros((1, 600, 600), np.uint8)
    ids[0, ::2, ::2] = 1  # 90,000 single-pixel cells, each walled in
    labels = cell_labels(ids)
    assert labels.dtype == np.uint32 and labels.max() == 300 * 300


def test_cells_file_sits_beside_the_masks():
    assert cells_path(Path("out/test-masks.tif")) == Path("out/test-cells.tif")
    assert cells_path(Path("out/mine.tif")) == Path("out/mine-cells.tif")
