"""Writing a volume as an OME-Zarr image, as napari, the BioImage Model Zoo and ome-zarr-py read it.

zarr-python 3 (current stack) writes NGFF 0.5 on Zarr format 3 by default, or
0.4 on format 2 for readers of the TF 2.15 stack; zarr-python 2 (the TF 2.15
stack) writes NGFF 0.4 on Zarr format 2. One level (full
resolution) with axes z, y, x, Blosc/zstd-compressed chunks. Slices are
written as they come, a chunk's depth at a time, so a volume of any size
passes through a bounded buffer; the store appears under its final name
only once it is whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common.errors import UserInputError

LEVEL = "0"  # the full-resolution array inside the image group


def zarr_major() -> int:
    import zarr

    return int(zarr.__version__.split(".")[0])


def ngff_version() -> str:
    """The NGFF version this stack writes by default: 0.5 with zarr-python 3, 0.4 with zarr-python 2."""
    return "0.5" if zarr_major() >= 3 else "0.4"


def check_ngff_version(version: str) -> str:
    """``version`` if this stack writes it: 0.4 (Zarr format 2) everywhere, 0.5 (format 3) with zarr-python 3."""
    if version == "0.5" and zarr_major() < 3:
        raise UserInputError("OME-Zarr 0.5 (Zarr format 3) needs zarr-python 3 (the current stack, Python 3.11+); "
                             "this stack writes 0.4")
    return version


def _multiscales(name: str, axes: str, scale: tuple[float, ...], version: str) -> list[dict]:
    level = {"path": LEVEL, "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}
    described = [{"name": axis, "type": "channel" if axis == "c" else "space"} for axis in axes]
    multiscale = {"name": name, "axes": described, "datasets": [level]}
    if version == "0.4":
        multiscale = {"version": version, **multiscale}
    return [multiscale]


def create_image(folder: Path, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], name: str,
                 version: str, axes: str = "zyx", scale: tuple[float, ...] | None = None,
                 extra: dict | None = None):
    """A new OME-Zarr image group at ``folder`` (which must not exist) with one level of ``shape``; its array.

    ``extra`` joins the NGFF metadata (e.g. ``image-label`` for a label image)."""
    import zarr
    from numcodecs import Blosc

    scale = scale or (1.0,) * len(shape)
    ome = {"multiscales": _multiscales(name, axes, scale, version), **(extra or {})}
    if zarr_major() >= 3 and version == "0.4":  # Zarr format 2 written by zarr-python 3
        group = zarr.open_group(store=str(folder), mode="w-", zarr_format=2)
        array = group.create_array(LEVEL, shape=shape, chunks=chunks, dtype=dtype,
                                   chunk_key_encoding={"name": "v2", "separator": "/"},
                                   compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE))
        group.attrs.update(ome)
        return array
    if zarr_major() >= 3:
        from zarr.codecs import BloscCodec

        group = zarr.open_group(store=str(folder), mode="w-", zarr_format=3)
        array = group.create_array(LEVEL, shape=shape, chunks=chunks, dtype=dtype, dimension_names=list(axes),
                                   compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")])
        group.attrs["ome"] = {"version": version, **ome}
        return array
    group = zarr.open_group(str(folder), mode="w-")
    array = group.create_dataset(LEVEL, shape=shape, chunks=chunks, dtype=dtype, dimension_separator="/",
                                 compressor=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE))
    group.attrs.update(ome)
    return array


def open_level(folder: Path):
    """The full-resolution array of an OME-Zarr image this module wrote, for writing (each process its own)."""
    import zarr

    return zarr.open_array(store=str(folder / LEVEL), mode="r+")


class OmeZarrWriter:
    """An OME-Zarr image written slice by slice into a temporary folder beside ``path``, renamed onto ``path``
    when closed after the last slice; an existing ``path`` is refused, never replaced."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype, chunks: tuple[int, int, int],
                 name: str, scale: tuple[float, float, float] = (1.0, 1.0, 1.0), version: str | None = None) -> None:
        if path.exists():
            raise UserInputError(f"{path} exists; choose a new output path (nothing is overwritten)")
        self.path, self.shape = path, shape
        self.version = check_ngff_version(version or ngff_version())
        self.chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        os.rmdir(self._folder)  # zarr creates it; mode "w-" wants none there
        self._array = create_image(self._folder, shape, np.dtype(dtype), self.chunks, name, self.version,
                                   scale=scale)
        self._buffer: list[np.ndarray] = []
        self._written = 0

    def write(self, image: np.ndarray) -> None:
        """The next slice; every chunk's depth of slices goes to the store at once (whole chunks only)."""
        self._buffer.append(image)
        if len(self._buffer) == self.chunks[0] or self._written + len(self._buffer) == self.shape[0]:
            start = self._written
            self._array[start:start + len(self._buffer)] = np.stack(self._buffer)
            self._written += len(self._buffer)
            self._buffer = []

    def close(self) -> Path:
        if self._written != self.shape[0]:
            raise ValueError(f"{self._written} of {self.shape[0]} slices written")
        os.replace(self._folder, self.path)
        return self.path

    def abandon(self) -> None:
        """Remove the temporary folder (our own, never the user's output)."""
        shutil.rmtree(self._folder, ignore_errors=True)
