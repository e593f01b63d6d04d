"""Reading image stacks and writing mask stacks as multipage TIFF files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from data_loading.input_paths import check_input
from runtime.errors import UserInputError

_COLOUR = {2: "colour (RGB)", 3: "palette colour", 5: "colour (CMYK)", 6: "colour (YCbCr)"}


def tiff_shape(path: Path) -> tuple[int, int, int]:
    """(slices, height, width) of a grey uint8 TIFF stack from its header, without reading the pixels.

    Refuses, in one line, what ``read_stack`` would refuse: colour, more than
    one channel, or pixels that are not 8-bit.
    """
    check_input(path, "data file")
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            page = tiff.pages[0]
            shape, dtype, photometric, samples = series.shape, series.dtype, int(page.photometric), page.samplesperpixel
    except Exception as error:  # tifffile raises many types for broken files
        raise UserInputError(f"cannot read {path} as a TIFF stack: {error}") from None
    if photometric in _COLOUR or samples > 1:
        kind = _COLOUR.get(photometric, f"a {samples}-channel image")
        raise UserInputError(f"{path} is {kind}, not a stack of grey slices (one channel per pixel)")
    if dtype != np.uint8:
        raise UserInputError(f"{path} holds {dtype.itemsize * 8}-bit ({dtype}) pixels; images and labels "
                             "must be 8-bit (uint8)")
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or 0 in shape:
        raise UserInputError(f"{path} must be a stack of grey slices (slices, height, width); it has shape {shape}")
    return shape


def read_stack(path: Path) -> np.ndarray:
    """A 3-D uint8 stack (slices, height, width), or a one-line UserInputError."""
    tiff_shape(path)  # colour and bit depth are refused from the header, before any pixel is read
    try:
        stack = tifffile.imread(path)
    except Exception as error:  # tifffile raises many types for broken files
        raise UserInputError(f"cannot read {path} as a TIFF stack: {error}") from None
    if stack.size == 0:
        raise UserInputError(f"cannot read {path} as a TIFF stack: it holds no image data "
                             "(truncated, or not a TIFF file)")
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    if stack.ndim != 3:
        raise UserInputError(f"{path} must be a stack of grey slices (slices, height, width); "
                             f"it has shape {stack.shape}")
    if stack.dtype != np.uint8:
        raise UserInputError(f"{path} must hold 8-bit (uint8) pixels; it holds {stack.dtype}")
    return stack


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only if the block completes.

    A crash or a full disk therefore leaves either the old file or none, never
    a truncated one under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's private 0600 is not what users expect
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_stack_atomically(path: Path, stack: np.ndarray) -> None:
    """Write a deflate-compressed multipage TIFF; readers never see a half-written file."""
    with atomic_output(path) as temporary:
        tifffile.imwrite(temporary, stack, compression="zlib", photometric="minisblack")
