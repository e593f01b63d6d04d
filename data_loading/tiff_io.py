"""Reading image stacks and writing mask stacks as multipage TIFF files."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from common.errors import UserInputError
from data_loading.input_paths import check_input

# Damaged files are reported by us, in one line; tifffile's own log lines about them would only add noise.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

def _truncated(tiff: tifffile.TiffFile, path: Path) -> str | None:
    """Why the file's pixel data cannot all be there, from the page headers alone; None if it can."""
    size = os.path.getsize(path)
    for index, page in enumerate(tiff.pages):
        ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)]
        if ends and max(ends) > size:
            return f"it is truncated (slice {index}'s data ends at byte {max(ends)}, the file at {size})"
    return None


def tiff_shape(path: Path) -> tuple[int, int, int]:
    """(slices, height, width) of a grey uint8 TIFF stack from its headers, without decoding the pixels.

    Refuses, in one line, what ``read_stack`` would refuse: a truncated file,
    colour (several samples per pixel, interleaved), or pixels that are not
    8-bit. A 3- or 4-slice stack that a writer tagged as planar RGB (tifffile
    does so by default for such shapes) is read as the slices it holds.
    """
    check_input(path, "data file")
    try:
        with tifffile.TiffFile(path) as tiff:
            problem = _truncated(tiff, path)
            series, page = tiff.series[0], tiff.pages[0]
            shape, dtype, samples = series.shape, series.dtype, page.samplesperpixel
            interleaved = samples > 1 and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
    except Exception as error:  # tifffile raises many types for broken files
        raise UserInputError(f"cannot read {path} as a TIFF stack: {error}") from None
    if problem:
        raise UserInputError(f"cannot read {path} as a TIFF stack: {problem}")
    if interleaved:
        kind = "colour (RGB)" if samples in (3, 4) else f"a {samples}-channel image"
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
