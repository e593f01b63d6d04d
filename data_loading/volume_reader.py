"""The one interface every volume is read through: a box of one slice at a time.

A volume is (slices, height, width) whatever holds it (data_loading/readers.py
opens TIFF stacks, slice folders, Zarr, OME-Zarr and HDF5 as one). Code above
the readers asks only for ``shape``, ``dtype``, ``chunks`` and boxes, so
a volume far larger than memory is trained on and predicted a tile at a time;
``read_all`` is for the stacks a run's memory check lets stay in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

Box = tuple[slice, slice]


class VolumeReader:
    """A (slices, height, width) volume read box by box; subclasses say how their format reads one box.

    ``name`` is the volume as the user named it (for messages); ``stem`` a
    short name for files derived from it (``<stem>-masks.tif``). ``chunks``
    is the store's natural unit of reading (a TIFF page: one whole slice).
    """

    name: str
    stem: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    chunks: tuple[int, int, int]

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        raise NotImplementedError

    def read(self, z: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The box ``rows`` x ``cols`` of slice ``z`` as a 2-D array of the volume's dtype."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} of {self.name}, which has {self.shape[0]}")
        return self._read(z, *_clip(rows, cols, self.shape[1:]))

    def slice_names(self) -> list[str]:
        return [f"{self.stem}_{index:03d}" for index in range(self.shape[0])]

    def read_all(self) -> np.ndarray:
        """Every slice, in one array: only for stacks that fit in memory (the run's memory check says which)."""
        out = np.empty(self.shape, self.dtype)
        for z in range(self.shape[0]):
            out[z] = self.read(z)
        return out

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def chunk_boxes(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(z, top, bottom, left, right) of every chunk's part in each slice, slice by slice."""
        _, chunk_rows, chunk_cols = self.chunks
        height, width = self.shape[1:]
        for z in range(self.shape[0]):
            for top in range(0, height, chunk_rows):
                for left in range(0, width, chunk_cols):
                    yield z, top, min(top + chunk_rows, height), left, min(left + chunk_cols, width)

    def close(self) -> None:
        """Release file handles (reopened on the next read where a format needs one)."""


def _clip(rows: slice, cols: slice, size: tuple[int, int]) -> Box:
    return slice(*rows.indices(size[0])[:2]), slice(*cols.indices(size[1])[:2])


class ArrayVolume(VolumeReader):
    """A volume already in memory (a stack read whole, weight maps, tests)."""

    def __init__(self, array: np.ndarray, name: str = "array", names: list[str] | None = None,
                 stem: str | None = None) -> None:
        self.array = array
        self.name, self.stem = name, stem or Path(name).stem or "input"
        self.shape, self.dtype = tuple(array.shape), array.dtype
        self.chunks = (1, *self.shape[1:])
        self._names = names

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        return self.array[z, rows, cols]

    def read_all(self) -> np.ndarray:
        return self.array

    def slice_names(self) -> list[str]:
        return self._names or super().slice_names()


def reflect(indices: np.ndarray, length: int) -> np.ndarray:
    """Positions of a mirrored axis (NumPy's ``reflect`` padding, repeated as often as needed) -> source indices."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - folded)


def read_mirrored(reader: VolumeReader, z: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The ``height`` x ``width`` box at (top, left) of slice ``z`` mirrored out beyond its edges without end.

    Equals ``np.pad(slice, ..., mode="reflect")`` cut at the same place, but
    reads only the rows and columns of the slice that the box covers.
    """
    rows = reflect(np.arange(top, top + height), reader.shape[1])
    cols = reflect(np.arange(left, left + width), reader.shape[2])
    r0, c0 = int(rows.min()), int(cols.min())
    box = reader.read(z, slice(r0, int(rows.max()) + 1), slice(c0, int(cols.max()) + 1))
    inside_rows = rows[0] == r0 and rows[-1] == r0 + height - 1
    inside_cols = cols[0] == c0 and cols[-1] == c0 + width - 1
    if inside_rows and inside_cols:
        return box
    return box[np.ix_(rows - r0, cols - c0)]
