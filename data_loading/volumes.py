"""Labelled stacks named on the command line: which volumes, checked in pairs, read as class ids.

Every flag that names stacks (``--train_images``, ``--val_labels``, ...)
takes one or more volumes (TIFF stacks, slice folders, Zarr/OME-Zarr arrays,
HDF5 datasets: data_loading/readers.py), each given as a path or a glob.
Images and labels pair up volume by volume in the order given (a glob in
sorted name order), and must agree in slice count and size. All of this is
checked from the headers before a single pixel is read, so a bad pairing
costs nothing and the memory a run needs is known up front.

A run keeps its volumes in memory when they fit (``--volume_loading``,
data_loading/memory.py) and otherwise reads them a box at a time; either
way the rest of the code sees ``VolumeReader``s of uint8 grey values and
uint8 class ids.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from data_loading.chunked import Hdf5Volume, ZarrVolume
from data_loading.readers import open_volume
from data_loading.volume_reader import ArrayVolume, VolumeReader

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class StackFile:
    """One stack as planned: where it is, its shape from the headers, and the flag that named it."""

    path: Path
    shape: tuple[int, int, int]  # slices, height, width
    flag: str
    reader: VolumeReader = field(compare=False, repr=False)  # opened from the headers; nothing decoded yet


@dataclass
class Volume:
    """One image volume with its labels as class ids (None for test stacks), in memory or read as needed."""

    images: VolumeReader  # grey values as stored; uint8 once mapped (data_loading/intensity.py)
    labels: VolumeReader | None  # uint8 class ids 0..K-1, same shape
    source: Path
    names: list[str]  # one per slice, for pictures and messages
    note: str | None = None  # what was done to accept the labels, for the log
    chunked: bool = False  # stored in a chunked store (Zarr, OME-Zarr, HDF5): its masks go to OME-Zarr


def expand(specs: Sequence[str], flag: str) -> list[Path]:
    """Paths and globs -> paths, in the order given; a glob in sorted order, and it must match something."""
    paths: list[Path] = []
    for spec in specs:
        if any(character in spec for character in GLOB_CHARACTERS) and not Path(spec).exists():
            matches = sorted(glob.glob(spec))
            if not matches:
                raise UserInputError(f"{flag} {spec} matches no file or folder")
            paths.extend(Path(match) for match in matches)
        else:
            paths.append(Path(spec))
    return paths


def plan_stacks(specs: Sequence[str], flag: str) -> list[StackFile]:
    stacks = []
    for path in expand(specs, flag):
        reader = open_volume(path, flag)
        stacks.append(StackFile(path, reader.shape, flag, reader))
    return stacks


def plan_pairs(image_specs: Sequence[str], label_specs: Sequence[str], image_flag: str,
               label_flag: str) -> list[tuple[StackFile, StackFile]]:
    """Image and label stacks paired volume by volume, after checking that every pair agrees."""
    images, labels = plan_stacks(image_specs, image_flag), plan_stacks(label_specs, label_flag)
    if len(images) != len(labels):
        raise UserInputError(f"{image_flag} names {len(images)} stack(s) but {label_flag} names {len(labels)}; "
                             "they pair up volume by volume")
    for image, label in zip(images, labels, strict=True):
        if image.shape != label.shape:
            raise UserInputError(f"{image.path} and its labels {label.path} differ: {_describe(image.shape)} vs "
                                 f"{_describe(label.shape)}; they must match slice for slice")
    return list(zip(images, labels, strict=True))


def _describe(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]} slice(s) of {shape[1]}x{shape[2]}"


def class_ids(labels: np.ndarray, path: Path, names: list[str], num_classes: int) -> tuple[np.ndarray, str | None]:
    """Labels as class ids 0..K-1, and a note if they were rescaled; a value outside is a one-line error.

    With two classes the recipe's 0/255 labels (255 = cell) are accepted, as
    are 0/1; anything else must already be the class id. Labels of any integer
    type are accepted (16-bit label images are common); floats are not.
    """
    if labels.dtype.kind not in "ui":
        raise UserInputError(f"{path} holds {labels.dtype} values; labels must be integer class ids")
    values = set(np.unique(labels).tolist())
    if min(values) < 0:
        index = int(np.argmax(np.any(labels < 0, axis=(1, 2))))
        raise UserInputError(f"label value {min(values)} in slice {index} ({names[index]}) of {path}: class ids "
                             "start at 0")
    if num_classes == 2:
        if values <= {0, 255}:
            return (labels // 255).astype(np.uint8), None
        if values <= {0, 1}:
            return labels.astype(np.uint8, copy=False), f"{path.name}: labels hold 0/1, read as class ids (1 = cell)"
        strangers = values - {0, 1, 255}
        bad = max(strangers) if strangers else 1  # 0, 1 and 255 together: neither convention
    elif max(values) < num_classes:
        return labels.astype(np.uint8, copy=False), None
    else:
        bad = max(values)
    index = int(np.argmax(np.any(labels == bad, axis=(1, 2))))
    where = f"slice {index} ({names[index]}) of {path}"
    if num_classes == 2:
        raise UserInputError(f"label value {bad} in {where}: with --num_classes 2 labels must be two-valued, "
                             "0 = membrane and 255 (or 1) = cell")
    raise UserInputError(f"label value {bad} in {where} is outside 0..{num_classes - 1} (--num_classes {num_classes})")


class ClassIdVolume(VolumeReader):
    """Labels read a box at a time as class ids, for volumes that do not stay in memory.

    With two classes any non-zero value is cell (the recipe's 0/255 and 0/1
    both); with more, values must already be class ids. A value that fits no
    rule is refused, naming its slice, when a box holding it is read: a
    streamed volume is never scanned whole before training starts.
    """

    def __init__(self, reader: VolumeReader, num_classes: int) -> None:
        if reader.dtype.kind not in "ui":
            raise UserInputError(f"{reader.name} holds {reader.dtype} values; labels must be integer class ids")
        self.source, self.num_classes = reader, num_classes
        self.name, self.stem, self.shape, self.chunks = reader.name, reader.stem, reader.shape, reader.chunks
        self.dtype = np.dtype(np.uint8)

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        values = self.source.read(z, rows, cols)
        if self.num_classes == 2:
            allowed = (values == 0) | (values == 1) | (values == 255)
            if not allowed.all():
                raise UserInputError(f"label value {values[~allowed].flat[0]} in slice {z} of {self.name}: with "
                                     "--num_classes 2 labels must be two-valued, 0 = membrane and 255 (or 1) = cell")
            return (values != 0).astype(np.uint8)
        if values.size and (values.min() < 0 or values.max() >= self.num_classes):
            bad = values.max() if values.max() >= self.num_classes else values.min()
            raise UserInputError(f"label value {bad} in slice {z} of {self.name} is outside "
                                 f"0..{self.num_classes - 1} (--num_classes {self.num_classes})")
        return values.astype(np.uint8)

    def slice_names(self) -> list[str]:
        return self.source.slice_names()

    def close(self) -> None:
        self.source.close()


def in_memory(reader: VolumeReader) -> ArrayVolume:
    """The whole volume read into memory, slice by slice (no more than one extra slice in flight)."""
    return ArrayVolume(reader.read_all(), reader.name, reader.slice_names(), reader.stem)


def read_labelled(pairs: list[tuple[StackFile, StackFile]], num_classes: int, keep_in_memory: bool) -> list[Volume]:
    """Image volumes (as stored, not yet read) with their class-id labels: read into memory and checked whole
    there, or checked box by box as they are read."""
    volumes = []
    for image_file, label_file in pairs:
        images, labels = image_file.reader, label_file.reader
        names = images.slice_names()
        if keep_in_memory:
            raw = labels.read_all()
            ids, note = class_ids(raw, label_file.path, labels.slice_names(), num_classes)
            volumes.append(Volume(images, ArrayVolume(ids, labels.name), image_file.path, names, note))
        else:
            volumes.append(Volume(images, ClassIdVolume(labels, num_classes), image_file.path, names))
    return volumes


def read_unlabelled(stacks: list[StackFile]) -> list[Volume]:
    return [Volume(stack.reader, None, stack.path, stack.reader.slice_names(),
                   chunked=isinstance(stack.reader, ZarrVolume | Hdf5Volume)) for stack in stacks]
