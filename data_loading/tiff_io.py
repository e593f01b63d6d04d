"""Reading grey image stacks and writing mask stacks as multipage TIFF files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from common.errors import UserInputError
from common.files import atomic_output
from data_loading.input_paths import check_input

# Damaged files are reported by us, in one line; tifffile's own log lines about them would only add noise.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

# The most pixel bytes one byte of data can decode to, per TIFF compression: none 1; deflate's best case is
# 1032 (a 258-byte match in about 2 bits), TIFF's LZW under 4096 (a 12-bit code for at most 4096 bytes), PackBits
# 64 (2 bytes for a run of 128). Codecs without such a bound (zstd, LZMA, JPEG) are not checked.
MAX_EXPANSION = {1: 1, 8: 1032, 32946: 1032, 5: 4096, 32773: 64}
SMALL_PAGE_SLACK = 4096  # a few bytes of codec framing may decode to a small page whatever the ratio


def _truncated(tiff: tifffile.TiffFile, path: Path) -> str | None:
    """Why the file's pixel data cannot all be there, from the page headers alone; None if it can."""
    size = os.path.getsize(path)
    for index, page in enumerate(tiff.pages):
        ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)]
        if ends and max(ends) > size:
            return f"it is truncated (slice {index}'s data ends at byte {max(ends)}, the file at {size})"
        # A header that declares more pixels than its data can decode to (one flipped byte can make a 2 KB file
        # declare 24 GiB) is damaged, and must not be allocated for: tifffile would try, and run out of memory.
        held, ratio = sum(page.databytecounts), MAX_EXPANSION.get(int(page.compression))
        if ratio is not None and page.nbytes > (held * ratio if ratio == 1 else held * ratio + SMALL_PAGE_SLACK):
            return (f"its header is damaged (slice {index} declares {page.nbytes} bytes of pixels, its data holds "
                    f"{held}{'' if ratio == 1 else f' compressed bytes, at most {ratio}x that decoded'})")
    return None


def check_grey_values(dtype: np.dtype, path: Path) -> None:
    """Integers of any width and floats are grey values (data_loading/intensity.py maps them); nothing else is."""
    if np.dtype(dtype).kind not in "uif":
        raise UserInputError(f"{path} holds {np.dtype(dtype)} pixels; images must hold integer or float grey "
                             "values (8- or 16-bit, or float)")


def tiff_shape(path: Path) -> tuple[int, int, int]:
    """(slices, height, width) of a grey TIFF stack from its headers, without decoding the pixels.

    Refuses, in one line, what ``read_stack`` would refuse: a truncated file,
    a file without pages, colour (several samples per pixel, interleaved), or
    pixels that are not integer or float grey values. A single 2D image is a
    stack of one slice. A 3- or 4-slice stack that a writer tagged as planar
    RGB (tifffile does so by default for such shapes) is read as the slices it
    holds.
    """
    check_input(path, "data file")
    try:
        with tifffile.TiffFile(path) as tiff:
            if not tiff.pages or not tiff.series:
                raise UserInputError(f"cannot read {path} as a TIFF stack: it holds no image (no pages)")
            problem = _truncated(tiff, path)
            series, page = tiff.series[0], tiff.pages[0]
            shape, dtype, samples = series.shape, series.dtype, page.samplesperpixel
            interleaved = samples > 1 and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
    except (UserInputError, MemoryError):  # memory is said as memory (common/errors.py), not as a broken file
        raise
    except Exception as error:  # tifffile raises many types for broken files
        raise UserInputError(f"cannot read {path} as a TIFF stack: {error}") from None
    if problem:
        raise UserInputError(f"cannot read {path} as a TIFF stack: {problem}")
    if interleaved:
        kind = "colour (RGB)" if samples in (3, 4) else f"a {samples}-channel image"
        raise UserInputError(f"{path} is {kind}, not a stack of grey slices (one channel per pixel)")
    check_grey_values(dtype, path)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or 0 in shape:
        raise UserInputError(f"{path} must be a stack of grey slices (slices, height, width); it has shape {shape}")
    return shape


def read_stack(path: Path) -> np.ndarray:
    """A 3-D stack (slices, height, width) of integer or float grey values, or a one-line UserInputError."""
    tiff_shape(path)  # colour and pixel type are refused from the header, before any pixel is read
    try:
        stack = tifffile.imread(path)
    except MemoryError:
        raise
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
    check_grey_values(stack.dtype, path)
    return stack


def _is_big(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether a stack may pass TIFF's 4 GB (BigTIFF then); compression is not counted on."""
    return int(np.prod(shape)) * np.dtype(dtype).itemsize > 2**31


def write_pages_atomically(path: Path, shape: tuple[int, int, int], dtype: np.dtype,
                           pages: Iterator[np.ndarray]) -> None:
    """A deflate-compressed multipage TIFF of ``shape`` from slices that arrive one at a time (a generator that
    computes them): memory holds one slice, and readers never see a half-written file."""
    with atomic_output(path) as temporary:
        tifffile.imwrite(temporary, pages, shape=shape, dtype=dtype, compression="zlib", photometric="minisblack",
                         bigtiff=_is_big(shape, dtype))


class PageWriter:
    """Slices appended one by one as pages of a scratch TIFF (no stack metadata): for intermediate files that a
    second pass reads back (``write_pages_atomically`` writes the final ones)."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self._writer: tifffile.TiffWriter | None = tifffile.TiffWriter(path, bigtiff=_is_big(shape, dtype))

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image, metadata=None, compression="zlib", photometric="minisblack")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_stack_atomically(path: Path, stack: np.ndarray) -> None:
    """Write a deflate-compressed multipage TIFF; readers never see a half-written file."""
    with atomic_output(path) as temporary:
        tifffile.imwrite(temporary, stack, compression="zlib", photometric="minisblack")
