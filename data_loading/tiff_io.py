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


def read_stack(path: Path) -> np.ndarray:
    """A 3-D uint8 stack (slices, height, width), or a one-line UserInputError."""
    check_input(path, "data file")
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
