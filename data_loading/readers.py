"""One way to read a volume, whatever holds it: a box of one slice at a time.

Every stack flag, ``--predict_input`` and ``predict.py INPUT`` name a volume
that ``open_volume`` opens as a ``VolumeReader``:

- a multipage TIFF, or one PNG or TIFF image (a stack of one slice);
- a folder of PNG/TIFF slices, in file-name order;
- a Zarr array (format 2 or 3), ``vol.zarr`` or ``vol.zarr/raw``, or an
  OME-Zarr image (NGFF 0.4 or 0.5): level 0 of ``image.ome.zarr``, another
  level by naming its array (``image.ome.zarr/1``);
- an HDF5 dataset, ``file.h5:/volumes/raw`` (CREMI's layout).

Code above this module never asks which: it asks for ``shape``, ``dtype``,
``chunks`` and boxes through ``read``. Nothing is read whole unless asked
(``read_all``, for stacks that stay in memory), so a volume far larger
than memory can be trained on and predicted a tile at a time.
Uncompressed TIFF stacks are read row band by row band straight from the
file; compressed ones a page (slice) at a time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from common.errors import UserInputError
from data_loading import chunked
from data_loading.input_paths import check_input
from data_loading.tiff_io import check_grey_values, tiff_shape
from data_loading.volume_reader import VolumeReader

SLICE_SUFFIXES = (".png", ".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
GREY_PNG_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")  # 8-bit, 16-bit, 32-bit integer and float grey


class TiffVolume(VolumeReader):
    """A multipage grey TIFF (or one TIFF image), never decoded whole.

    Uncompressed, contiguously stored stacks (what ImageJ and most
    acquisition software write, and TIFFs over 4 GB) are read as byte ranges
    of the file, only the rows a box needs. Compressed ones are decoded one
    page at a time; the last page is kept for the next box of the same slice.
    """

    def __init__(self, path: Path) -> None:
        self.name, self.stem = str(path), path.stem
        self.path = path
        self.shape = tiff_shape(path)  # refuses damaged, colour and non-grey files from the headers
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            self.dtype = np.dtype(series.dtype).newbyteorder(tiff.byteorder)
            self._offset = series.dataoffset  # None unless uncompressed and contiguous
            self._paged = len(series.pages) == self.shape[0]
        self.chunks = (1, *self.shape[1:])
        self._lock = threading.Lock()
        self._tiff: tifffile.TiffFile | None = None
        self._page: tuple[int, np.ndarray] | None = None

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        if self._offset is not None:
            return self._read_rows(z, rows)[:, cols]
        return self._decoded(z)[rows, cols]

    def _read_rows(self, z: int, rows: slice) -> np.ndarray:
        width, itemsize = self.shape[2], self.dtype.itemsize
        start = self._offset + ((z * self.shape[1]) + rows.start) * width * itemsize
        count = (rows.stop - rows.start) * width
        with open(self.path, "rb") as handle:
            data = os.pread(handle.fileno(), count * itemsize, start)
        if len(data) != count * itemsize:
            raise UserInputError(f"cannot read slice {z} of {self.name}: the file ends early (truncated)")
        return np.frombuffer(data, self.dtype).reshape(-1, width).astype(self.dtype.newbyteorder("="))

    def _decoded(self, z: int) -> np.ndarray:
        with self._lock:
            if self._page is not None and self._page[0] == z:
                return self._page[1]
            try:
                if self._tiff is None:
                    self._tiff = tifffile.TiffFile(self.path)
                series = self._tiff.series[0]
                page = series.pages[z].asarray() if self._paged else series.asarray()[z]
            except Exception as error:  # tifffile raises many types for broken files
                raise UserInputError(f"cannot read slice {z} of {self.name} as a TIFF stack: {error}") from None
            page = page.reshape(self.shape[1:])
            self._page = (z, page)
            return page

    def close(self) -> None:
        with self._lock:
            if self._tiff is not None:
                self._tiff.close()
            self._tiff, self._page = None, None

    def __getstate__(self) -> dict:  # another process (a Dask worker) opens the file anew
        return {**self.__dict__, "_lock": None, "_tiff": None, "_page": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def _is_png(path: Path) -> bool:
    return path.suffix.lower() == ".png"


def _open_png(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path} as a PNG image: {error}") from None
    if image.mode not in GREY_PNG_MODES:
        image.close()
        raise UserInputError(f"{path} must be a grey image (8- or 16-bit); it is PNG mode {image.mode}")
    return image


def _png_shape(path: Path) -> tuple[int, int]:
    with _open_png(path) as image:
        return image.height, image.width


def _read_png(path: Path) -> np.ndarray:
    try:
        with _open_png(path) as image:
            return np.asarray(image)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read {path} as a PNG image: {error}") from None


def _png_dtype(path: Path) -> np.dtype:
    with _open_png(path) as image:
        mode = image.mode
    return np.dtype({"L": np.uint8, "I": np.int32, "F": np.float32}.get(mode, np.uint16))


class SliceFilesVolume(VolumeReader):
    """A folder of PNG/TIFF slices in file-name order, or one PNG: a slice is one file, read when asked."""

    def __init__(self, files: list[Path], name: str, stem: str, shapes: list[tuple[int, int]]) -> None:
        self.files, self.name, self.stem = files, name, stem
        self.shape = (len(files), *shapes[0])
        self.dtype = _png_dtype(files[0]) if _is_png(files[0]) else TiffVolume(files[0]).dtype
        self.chunks = (1, *self.shape[1:])
        self._lock = threading.Lock()
        self._last: tuple[int, np.ndarray] | None = None

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        with self._lock:
            if self._last is None or self._last[0] != z:
                self._last = (z, self._decode(self.files[z]))
            return self._last[1][rows, cols]

    def _decode(self, path: Path) -> np.ndarray:
        image = _read_png(path) if _is_png(path) else TiffVolume(path).read(0)
        if image.shape != self.shape[1:]:
            raise UserInputError(f"{path} is {image.shape[0]}x{image.shape[1]}; the other slices of {self.name} "
                                 f"are {self.shape[1]}x{self.shape[2]}")
        if image.dtype != self.dtype:
            raise UserInputError(f"the slices in {self.name} differ in pixel type: {self.dtype}, {image.dtype}")
        return image

    def slice_names(self) -> list[str]:
        return [file.stem for file in self.files]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lock": None, "_last": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def slice_files(folder: Path) -> list[Path]:
    """The PNG/TIFF slices of a folder, in file-name order."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise UserInputError(f"no PNG or TIFF slices in folder {folder}")
    return files


def _slice_shape(path: Path) -> tuple[int, int]:
    if _is_png(path):
        return _png_shape(path)
    count, height, width = tiff_shape(path)
    if count != 1:
        raise UserInputError(f"{path} holds {count} slices; a folder must hold one slice per file")
    return height, width


def _slice_folder(folder: Path) -> SliceFilesVolume:
    files = slice_files(folder)
    shapes = [_slice_shape(file) for file in files]
    if len(set(shapes)) > 1:
        raise UserInputError(f"the slices in {folder} differ in size: {sorted(set(shapes))}")
    return SliceFilesVolume(files, str(folder), folder.name, shapes)


def split_hdf5(spec: str) -> tuple[Path, str | None] | None:
    """``file.h5:/volumes/raw`` -> (file, dataset path); ``file.h5`` -> (file, None); None if not HDF5."""
    head, colon, tail = spec.partition(":")
    while colon and not head.lower().endswith(HDF5_SUFFIXES):  # a colon in a folder name comes before the file
        more, colon, tail = tail.partition(":")
        head = f"{head}:{more}"
    if head.lower().endswith(HDF5_SUFFIXES):
        return Path(head), (tail or None) if colon else None
    return None


def open_volume(spec: str | Path, what: str = "input") -> VolumeReader:
    """The volume ``spec`` names, opened from its headers (nothing decoded), or a one-line UserInputError."""


    text = str(spec)
    hdf5 = split_hdf5(text)
    if hdf5 is not None:
        return chunked.Hdf5Volume(check_input(hdf5[0], what), hdf5[1])
    path = Path(text)
    store = chunked.zarr_node(path)
    if store is not None:
        return chunked.open_zarr(path, store)
    missing = chunked.missing_zarr_member(path)
    if missing is not None:
        raise UserInputError(f"{what} {missing}")
    path = check_input(path, what, "any")
    if path.is_dir():
        return _slice_folder(path)
    if _is_png(path):
        return SliceFilesVolume([path], str(path), path.stem, [_png_shape(path)])
    return TiffVolume(path)


def check_volume_dtype(reader: VolumeReader) -> None:
    """Integers of any width and floats are grey values (data_loading/intensity.py maps them); nothing else is."""
    check_grey_values(reader.dtype, Path(reader.name))
