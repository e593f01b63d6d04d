"""Labelled stacks named on the command line: which files, checked in pairs, read as class ids.

Every flag that names stacks (``--train_images``, ``--val_labels``, ...)
takes one or more TIFF stacks or slice folders, each given as a path or a
glob. Images and labels pair up volume by volume in the order given (a glob
in sorted name order), and must agree in slice count and size. All of this
is checked from the files' headers before a single pixel is read, so a bad
pairing costs nothing and the memory a run needs is known up front.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from data_loading.image_stack import read_image_stack, stack_shape

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class StackFile:
    """One stack as planned: where it is, its shape from the headers, and the flag that named it."""

    path: Path
    shape: tuple[int, int, int]  # slices, height, width
    flag: str


@dataclass
class Volume:
    """One image stack read into memory, with its labels as class ids (None for test stacks)."""

    images: np.ndarray  # (slices, height, width) grey values as read; uint8 once mapped (data_loading/intensity.py)
    labels: np.ndarray | None  # uint8 class ids 0..K-1, same shape
    source: Path
    names: list[str]  # one per slice, for pictures and messages
    note: str | None = None  # what was done to accept the labels, for the log


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
    return [StackFile(path, stack_shape(path, flag), flag) for path in expand(specs, flag)]


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


def read_labelled(pairs: list[tuple[StackFile, StackFile]], num_classes: int) -> list[Volume]:
    volumes = []
    for image_file, label_file in pairs:
        images, names = read_image_stack(image_file.path, image_file.flag)
        labels, label_names = read_image_stack(label_file.path, label_file.flag)
        ids, note = class_ids(labels, label_file.path, label_names, num_classes)
        volumes.append(Volume(images, ids, image_file.path, names, note))
    return volumes


def read_unlabelled(stacks: list[StackFile]) -> list[Volume]:
    volumes = []
    for stack in stacks:
        images, names = read_image_stack(stack.path, stack.flag)
        volumes.append(Volume(images, None, stack.path, names))
    return volumes
