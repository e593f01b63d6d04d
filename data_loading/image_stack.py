"""A user's own grey image stack, named by path, as predict and the model card read it.

Any volume data_loading/readers.py opens: a multipage TIFF, one PNG or TIFF
image, a folder of PNG/TIFF slices, a Zarr/OME-Zarr array or an HDF5 dataset.
Grey values may be 8- or 16-bit integers or floats; data_loading/intensity.py
says how they reach the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_loading.readers import open_volume
from data_loading.volume_reader import VolumeReader


@dataclass
class PredictionInput:
    """The slices predict segments, a name for each (for pictures), and where the masks go."""

    slices: VolumeReader  # uint8 grey values (mapped by data_loading/intensity.py), read a slice at a time
    names: list[str]
    masks_file: Path  # relative to --model_dir


def stack_shape(path: Path | str, what: str = "input") -> tuple[int, int, int]:
    """(slices, height, width) of a volume, from its headers only (no pixels read).

    Everything reading would refuse for its format, size or colour is refused
    here already, so a run can check all its inputs (and their memory) first.
    """
    return open_volume(path, what).shape


def read_image_stack(path: Path | str, what: str = "input") -> tuple[np.ndarray, list[str]]:
    """A (slices, height, width) stack of grey values as stored, and a name per slice, read whole: for stacks
    known to be small (a model card's sample, tests). Folder slices are taken in file-name order and must share
    one size and pixel type. A single PNG is a stack of one slice."""
    reader = open_volume(path, what)
    return reader.read_all(), reader.slice_names()
