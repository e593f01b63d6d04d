"""Reading a user's own grey image stack: one multipage TIFF, one PNG or TIFF image, or a folder of PNG/TIFF slices.

Grey values may be 8- or 16-bit integers or floats; data_loading/intensity.py
says how they reach the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import UserInputError
from data_loading.input_paths import check_input
from data_loading.tiff_io import read_stack, tiff_shape

SLICE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass
class PredictionInput:
    """The slices predict segments, a name for each (for pictures), and where the masks go."""

    slices: np.ndarray  # uint8 (count, height, width), mapped by data_loading/intensity.py
    names: list[str]
    masks_file: Path  # relative to --model_dir


GREY_PNG_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")  # 8-bit, 16-bit, 32-bit integer and float grey


def _open_png(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path} as a PNG image: {error}") from None
    if image.mode not in GREY_PNG_MODES:
        image.close()
        raise UserInputError(f"{path} must be a grey image (8- or 16-bit); it is PNG mode {image.mode}")
    return image


def _is_png(path: Path) -> bool:
    return path.suffix.lower() == ".png"


def _one_slice(path: Path, count: int) -> None:
    if count != 1:
        raise UserInputError(f"{path} holds {count} slices; a folder must hold one slice per file")


def _slice_shape(path: Path) -> tuple[int, int]:
    if _is_png(path):
        with _open_png(path) as image:
            return image.height, image.width
    count, height, width = tiff_shape(path)
    _one_slice(path, count)
    return height, width


def _read_slice(path: Path) -> np.ndarray:
    if not _is_png(path):
        stack = read_stack(path)
        _one_slice(path, len(stack))
        return stack[0]
    try:
        with _open_png(path) as image:
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path} as a PNG image: {error}") from None


def slice_files(folder: Path) -> list[Path]:
    """The PNG/TIFF slices of a folder, in file-name order."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise UserInputError(f"no PNG or TIFF slices in folder {folder}")
    return files


def _one_size(folder: Path, shapes: list[tuple[int, ...]]) -> None:
    if len(set(shapes)) > 1:
        raise UserInputError(f"the slices in {folder} differ in size: {sorted(set(shapes))}")


def stack_shape(path: Path, what: str = "input") -> tuple[int, int, int]:
    """(slices, height, width) of a TIFF stack or slice folder, from headers only (no pixels read).

    Everything reading would refuse for its format, size or colour is refused
    here already, so a run can check all its inputs (and their memory) first.
    """
    path = check_input(Path(path), what, "any")
    if path.is_file():
        return (1, *_slice_shape(path)) if _is_png(path) else tiff_shape(path)
    files = slice_files(path)
    shapes = [_slice_shape(file) for file in files]
    _one_size(path, shapes)
    return (len(files), *shapes[0])


def read_image_stack(path: Path, what: str = "input") -> tuple[np.ndarray, list[str]]:
    """A (slices, height, width) stack of grey values as stored, and a name per slice, or a one-line
    UserInputError.

    Folder slices are taken in file-name order and must share one size and
    pixel type. A single PNG is a stack of one slice.
    """
    path = check_input(Path(path), what, "any")
    if path.is_file() and _is_png(path):
        return _read_slice(path)[np.newaxis], [path.stem]
    if path.is_file():
        stack = read_stack(path)
        return stack, [f"{path.stem}_{index:03d}" for index in range(len(stack))]
    files = slice_files(path)
    slices = [_read_slice(file) for file in files]
    _one_size(path, [image.shape for image in slices])
    kinds = sorted({str(image.dtype) for image in slices})
    if len(kinds) > 1:
        raise UserInputError(f"the slices in {path} differ in pixel type: {', '.join(kinds)}")
    return np.stack(slices), [file.stem for file in files]
