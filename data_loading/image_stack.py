"""Reading a user's own grey image stack: one multipage TIFF, or a folder of PNG/TIFF slices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_loading.input_paths import check_input
from data_loading.tiff_io import read_stack
from runtime.errors import UserInputError

SLICE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass
class PredictionInput:
    """The slices predict segments, a name for each (for pictures), and where the masks go."""

    slices: np.ndarray  # uint8 (count, height, width)
    names: list[str]
    masks_file: Path  # relative to --model_dir


def _read_slice(path: Path) -> np.ndarray:
    if path.suffix.lower() != ".png":
        stack = read_stack(path)
        if len(stack) != 1:
            raise UserInputError(f"{path} holds {len(stack)} slices; a folder must hold one slice per file")
        return stack[0]
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = np.asarray(image)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path} as a PNG image: {error}") from None
    if mode != "L":
        raise UserInputError(f"{path} must be an 8-bit grey image; it is PNG mode {mode}")
    return pixels


def read_image_stack(path: Path, what: str = "input") -> tuple[np.ndarray, list[str]]:
    """A uint8 (slices, height, width) stack and a name per slice, or a one-line UserInputError.

    Folder slices are taken in file-name order and must share one size.
    """
    path = check_input(Path(path), what, "any")
    if path.is_file():
        stack = read_stack(path)
        return stack, [f"{path.stem}_{index:03d}" for index in range(len(stack))]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise UserInputError(f"no PNG or TIFF slices in folder {path}")
    slices = [_read_slice(file) for file in files]
    shapes = {image.shape for image in slices}
    if len(shapes) > 1:
        raise UserInputError(f"the slices in {path} differ in size: {sorted(shapes)}")
    return np.stack(slices), [file.stem for file in files]
