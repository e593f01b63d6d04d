"""Chunked stores as volumes: Zarr arrays (format 2 and 3), OME-Zarr images (NGFF 0.4 and 0.5), HDF5 datasets.

The Zarr and OME metadata are read as the JSON files they are, so that one
reader serves zarr-python 3 (current stack) and zarr-python 2 (the TF 2.15
stack, Python 3.10), which cannot read format 3: there, a format-3 store is
refused in one line that says so. A chunk that cannot be decoded is named
by its key and file; HDF5 files that another process holds open for
writing are refused, never waited on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from data_loading.tiff_io import check_grey_values
from data_loading.volume_reader import VolumeReader

ZARR_V2_ARRAY, ZARR_V2_GROUP, ZARR_V2_ATTRS, ZARR_V3 = ".zarray", ".zgroup", ".zattrs", "zarr.json"
SPATIAL = ("z", "y", "x")
SINGLETON_OK = ("c", "t")  # axes a grey volume may carry with size 1


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read the Zarr metadata {path}: {error}") from None


def zarr_node(path: Path) -> tuple[str, int] | None:
    """("array" | "group", format) if ``path`` is a Zarr node, else None."""
    if (path / ZARR_V3).is_file():
        return _json(path / ZARR_V3).get("node_type", "array"), 3
    if (path / ZARR_V2_ARRAY).is_file():
        return "array", 2
    if (path / ZARR_V2_GROUP).is_file():
        return "group", 2
    return None


def missing_zarr_member(path: Path) -> str | None:
    """For a path that does not exist inside a Zarr store, what is missing and what is there; else None."""
    if path.exists():
        return None
    for parent in path.parents:
        if zarr_node(parent) is not None:
            inside = path.relative_to(parent)
            return f"{path}: the Zarr store {parent} holds no {inside} ({_members(parent)})"
    return None


def _members(group: Path) -> str:
    names = sorted(child.name for child in group.iterdir() if child.is_dir() and zarr_node(child) is not None)
    return "it holds " + ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "it is empty"


def _attributes(path: Path, version: int) -> dict:
    if version == 3:
        attributes = _json(path / ZARR_V3).get("attributes", {})
        return attributes.get("ome", attributes)  # NGFF 0.5 keeps its metadata under "ome"
    return _json(path / ZARR_V2_ATTRS) if (path / ZARR_V2_ATTRS).is_file() else {}


def _multiscale(path: Path, version: int) -> dict | None:
    scales = _attributes(path, version).get("multiscales")
    return scales[0] if isinstance(scales, list) and scales and isinstance(scales[0], dict) else None


def _axis_names(multiscale: dict) -> list[str] | None:
    axes = multiscale.get("axes")
    if not isinstance(axes, list):
        return None
    return [str(axis.get("name") if isinstance(axis, dict) else axis).lower() for axis in axes]


def open_zarr(path: Path, node: tuple[str, int]) -> ZarrVolume:
    """A Zarr array, or level 0 of an OME-Zarr image; a group that is neither is refused, naming its arrays."""
    kind, version = node
    axes = None
    if kind == "group":
        multiscale = _multiscale(path, version)
        datasets = (multiscale or {}).get("datasets") or []
        if not datasets:
            raise UserInputError(f"{path} is a Zarr group, not an array or an OME-Zarr image: name one of its "
                                 f"arrays ({_members(path)})")
        axes = _axis_names(multiscale)
        array_path = path / str(datasets[0]["path"])
        if zarr_node(array_path) is None:
            raise UserInputError(f"{path}: its OME-Zarr level {datasets[0]['path']} is missing")
        return ZarrVolume(array_path, version, axes, name=str(path))
    parent = _multiscale(path.parent, version) if zarr_node(path.parent) else None
    if parent is not None and path.name in [str(d.get("path")) for d in parent.get("datasets", [])]:
        axes = _axis_names(parent)  # a level of an OME-Zarr image, named by its array
    elif version == 3:
        names = _json(path / ZARR_V3).get("dimension_names")
        axes = [str(n).lower() for n in names] if names and all(names) else None
    return ZarrVolume(path, version, axes, name=str(path))


def spatial_layout(shape: tuple[int, ...], axes: list[str] | None, name: str) -> tuple[list[int], list[int]]:
    """Where z, y and x sit in a stored array (z may be missing: one slice), and the size-1 axes to drop.

    Named axes must be z, y, x, with c (channel) or t (time) of size 1
    allowed; unnamed ones are (z, y, x), (y, x), or (z, y, x) with a size-1
    axis first or last. Anything else is one line naming what was found.
    """
    if axes is not None and len(axes) == len(shape):
        found = ", ".join(f"{a}={s}" for a, s in zip(axes, shape, strict=True))
        dropped = [i for i, a in enumerate(axes) if a in SINGLETON_OK and shape[i] == 1]
        kept = [a for i, a in enumerate(axes) if i not in dropped]
        if kept in (list(SPATIAL), list(SPATIAL[1:])):
            return [i for i in range(len(axes)) if i not in dropped], dropped
        raise UserInputError(f"{name} has axes {found}; a volume must have axes z, y, x (a channel axis c of "
                             "size 1 allowed)")
    if len(shape) in (2, 3):
        return list(range(len(shape))), []
    if len(shape) == 4 and shape[0] == 1:
        return [1, 2, 3], [0]
    if len(shape) == 4 and shape[3] == 1:
        return [0, 1, 2], [3]
    raise UserInputError(f"{name} has shape {tuple(shape)}; a volume must be (z, y, x) or (y, x), with at most "
                         "one channel axis of size 1")


class _Spatial(VolumeReader):
    """What Zarr and HDF5 share: the stored array's own axes, mapped onto (z, y, x)."""

    def _layout(self, stored_shape: tuple[int, ...], stored_chunks: tuple[int, ...] | None,
                axes: list[str] | None, dtype: np.dtype) -> None:
        self._kept, self._dropped = spatial_layout(stored_shape, axes, self.name)
        self._stored_ndim = len(stored_shape)
        spatial = [stored_shape[i] for i in self._kept]
        chunks = [stored_chunks[i] for i in self._kept] if stored_chunks else [1, *spatial[-2:]]
        if len(spatial) == 2:
            spatial, chunks = [1, *spatial], [1, *chunks]
        if 0 in spatial:
            raise UserInputError(f"{self.name} is empty (shape {tuple(stored_shape)})")
        self.shape, self.chunks = tuple(int(s) for s in spatial), tuple(int(c) for c in chunks)
        check_grey_values(dtype, Path(self.name))
        self.dtype = np.dtype(dtype)

    def _index(self, z: int, rows: slice, cols: slice) -> tuple:
        spatial = [z, rows, cols] if len(self._kept) == 3 else [rows, cols]
        index: list = [0] * self._stored_ndim
        for position, value in zip(self._kept, spatial, strict=True):
            index[position] = value
        return tuple(index)


class ZarrVolume(_Spatial):
    """One Zarr array (format 2 or 3) as a volume; opened lazily so that each process opens its own."""

    def __init__(self, path: Path, version: int, axes: list[str] | None, name: str) -> None:
        self.path, self.version, self.name = path, version, name
        self.stem = Path(name).name.split(".")[0] or "input"
        self._array = None
        array = self._open()
        stored_chunks = getattr(array, "shards", None) or array.chunks  # a shard is what one read decodes at most
        self._layout(tuple(array.shape), tuple(stored_chunks), axes, array.dtype)
        self._codec_chunks = tuple(array.chunks)

    def _open(self):
        if self._array is not None:
            return self._array
        import zarr

        if self.version == 3 and int(zarr.__version__.split(".")[0]) < 3:
            raise UserInputError(f"{self.name} is Zarr format 3 (OME-Zarr 0.5), which zarr-python "
                                 f"{zarr.__version__} on this stack cannot read: use the current stack, or "
                                 "convert it there with convert_volume.py --ngff 0.4 (Zarr format 2)")
        try:
            self._array = zarr.open_array(store=str(self.path), mode="r")
        except Exception as error:  # zarr raises many types for malformed metadata
            raise UserInputError(f"cannot open the Zarr array {self.path}: {error}") from None
        return self._array

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        index = self._index(z, rows, cols)
        try:
            return np.asarray(self._open()[index])
        except UserInputError:
            raise
        except Exception as error:  # a chunk that does not decode: find and name it
            raise UserInputError(self._bad_chunk(index, error)) from None

    def _bad_chunk(self, index: tuple, error: Exception) -> str:
        """Which chunk of the failed box is damaged, by reading them one by one."""
        array = self._open()
        ranges = []
        for size, chunk, part in zip(array.shape, self._codec_chunks, index, strict=True):
            start, stop = (part, part + 1) if isinstance(part, int) else part.indices(size)[:2]
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
        for grid in np.ndindex(*[len(r) for r in ranges]):
            position = [r[g] for r, g in zip(ranges, grid, strict=True)]
            box = tuple(slice(p * c, min((p + 1) * c, s))
                        for p, c, s in zip(position, self._codec_chunks, array.shape, strict=True))
            try:
                array[box]
            except Exception as chunk_error:  # noqa: BLE001 - any decoder error names the chunk
                key = self._chunk_key(position)
                return (f"cannot read chunk {tuple(position)} of {self.name} ({self.path / key}): "
                        f"{_first_line(chunk_error)}; the chunk is damaged or truncated")
        return f"cannot read {self.name}: {_first_line(error)}"

    def _chunk_key(self, position: list[int]) -> str:
        if self.version == 3:
            encoding = _json(self.path / ZARR_V3).get("chunk_key_encoding", {})
            separator = encoding.get("configuration", {}).get("separator", "/")
            prefix = "c" + separator if encoding.get("name", "default") == "default" else ""
            return prefix + separator.join(map(str, position))
        separator = _json(self.path / ZARR_V2_ARRAY).get("dimension_separator") or "."
        return separator.join(map(str, position))

    def __getstate__(self) -> dict:  # processes (Dask workers, tf.data) each open their own handle
        return {**self.__dict__, "_array": None}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class Hdf5Volume(_Spatial):
    """One HDF5 dataset (``file.h5:/volumes/raw``), read a box at a time through h5py."""

    def __init__(self, path: Path, dataset: str | None) -> None:
        self.path = path
        self._file = None
        handle = self._open_file()
        dataset = dataset or self._only_dataset(handle)
        self.dataset = dataset
        self.name = f"{path}:{dataset}"
        self.stem = Path(dataset).name or path.stem
        import h5py

        node = handle.get(dataset)
        if node is None:
            raise UserInputError(f"{path} holds no dataset {dataset} ({self._listing(handle)})")
        if isinstance(node, h5py.Group):
            raise UserInputError(f"{self.name} is an HDF5 group, not a dataset: name one of its datasets "
                                 f"({self._listing(node)})")
        self._layout(tuple(node.shape), node.chunks, None, node.dtype)

    def _open_file(self):
        if self._file is not None:
            return self._file
        import h5py

        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            text = str(error)
            if "lock" in text.lower():
                raise UserInputError(f"cannot open {self.path}: another process holds it open for writing (HDF5 "
                                     "file lock); wait until it has finished writing") from None
            raise UserInputError(f"cannot read {self.path} as an HDF5 file: {_first_line(error)}") from None
        return self._file

    @staticmethod
    def _datasets(group) -> list[str]:
        import h5py

        found: list[str] = []
        group.visititems(lambda name, node: found.append("/" + name) if isinstance(node, h5py.Dataset) else None)
        return found

    def _listing(self, group) -> str:
        names = self._datasets(group)
        return "its datasets: " + ", ".join(names[:12]) if names else "it holds no dataset"

    def _only_dataset(self, handle) -> str:
        names = [n for n in self._datasets(handle) if 2 <= handle[n].ndim <= 4]
        if len(names) != 1:
            raise UserInputError(f"{self.path} holds {len(names)} image datasets: name one as "
                                 f"{self.path}:/path/to/dataset ({self._listing(handle)})")
        return names[0]

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        try:
            return np.asarray(self._open_file()[self.dataset][self._index(z, rows, cols)])
        except UserInputError:
            raise
        except Exception as error:  # h5py raises OSError/RuntimeError for damaged chunks
            raise UserInputError(f"cannot read slice {z} of {self.name}: {_first_line(error)}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


def chunk_count(reader: VolumeReader) -> int:
    return math.prod(math.ceil(s / c) for s, c in zip(reader.shape, reader.chunks, strict=True))
