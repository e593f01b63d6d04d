"""Where blockwise prediction writes: OME-Zarr images filled block by block, resumable, never half-final.

The outputs (masks, and on request class probabilities and cell masks) are
OME-Zarr images beside each other. While a prediction runs they live under
hidden names (``.<name>.partial``) and a block is marked done (an empty file
under the masks image's ``.unet2d-blocks/``) only after all its chunks are
written; a run stopped anyhow, SIGKILL included, leaves them so, and the
same command goes on with the blocks not marked. The masks image records
what made it (model, settings, input, chunks): another model or other
settings on the same output is refused in one line unless the user asks to
start over. Once every block is done, the images take their final names.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from common.files import ensure_writable_dir
from data_loading.chunked import ZARR_V2_ATTRS, ZARR_V3, zarr_node
from data_loading.ome_zarr import create_image, ngff_version, open_level

RECORD = "unet2d"  # the record's key among the masks image's attributes
DONE_FOLDER = ".unet2d-blocks"


@dataclass(frozen=True)
class Output:
    """One image of a prediction: its final path, element type and axes (``czyx`` for probabilities)."""

    path: Path
    dtype: str
    axes: str = "zyx"
    channels: int = 1
    label: bool = False  # an NGFF label image (masks, cells)
    scratch: bool = False  # an intermediate image, removed when the prediction is finished


def partial_path(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def _attributes(folder: Path) -> dict:
    if (folder / ZARR_V3).is_file():
        attributes = json.loads((folder / ZARR_V3).read_text()).get("attributes", {})
        return attributes.get("ome", attributes)
    return json.loads((folder / ZARR_V2_ATTRS).read_text()) if (folder / ZARR_V2_ATTRS).is_file() else {}


def _label_metadata(values: list[int], version: str) -> dict:
    colours = [{"label-value": int(v), "rgba": [255, 0, 0, 255] if v == 0 else [0, 0, 0, 0]} for v in values]
    return {"image-label": {"colors": colours, "source": {"image": "../../"},
                            **({"version": version} if version == "0.4" else {})}}


def input_labels(image: Path, name: str) -> tuple[Path, str, tuple[float, ...] | None]:
    """Where the masks of an OME-Zarr image go as one of its own label images (NGFF ``labels/``), the NGFF
    version the image is in (its label images must be in the same), and its full-resolution voxel size (theirs
    too, so that they lie on it); a one-line error for anything else."""
    node = zarr_node(image)
    if node is None or node[0] != "group" or "multiscales" not in _attributes(image):
        raise UserInputError(f"--into_input_labels needs an OME-Zarr image as the input; {image} is not one "
                             "(name the image's group, not one of its levels)")
    if not name or "/" in name or name.startswith("."):
        raise UserInputError(f"--into_input_labels {name!r}: a label image's name is one plain folder name")
    multiscale = _attributes(image)["multiscales"][0]
    transforms = multiscale.get("datasets", [{}])[0].get("coordinateTransformations", [])
    scale = next((tuple(step["scale"]) for step in transforms if step.get("type") == "scale"), None)
    axes = [str(a.get("name") if isinstance(a, dict) else a).lower() for a in multiscale.get("axes", [])]
    if scale is not None and axes and len(axes) == len(scale):  # z, y, x of it: label images here are 3-D
        scale = tuple(s for a, s in zip(axes, scale, strict=True) if a in ("z", "y", "x"))
    return image / "labels" / name, "0.5" if node[1] == 3 else "0.4", scale


def register_label(image: Path, name: str, version: str) -> None:
    """List the label image ``name`` in ``image``'s ``labels`` group (made if missing), as NGFF readers look."""
    import zarr

    folder = image / "labels"
    group = zarr.open_group(str(folder), mode="a", **({"zarr_format": 3 if version == "0.5" else 2}
                                                         if int(zarr.__version__.split(".")[0]) >= 3 else {}))
    if version == "0.5":
        ome = dict(group.attrs.get("ome", {}))
        group.attrs["ome"] = {**ome, "version": version, "labels": sorted({*ome.get("labels", []), name})}
    else:
        group.attrs["labels"] = sorted({*group.attrs.get("labels", []), name})


class PredictionStore:
    """The outputs of one blockwise prediction; ``done`` are the blocks already written (resumed runs)."""

    def __init__(self, outputs: dict[str, Output], shape: tuple[int, int, int], chunk: tuple[int, int],
                 record: dict, restart: bool = False, label_values: list[int] | None = None,
                 version: str | None = None, scale: tuple[float, ...] | None = None) -> None:
        self.outputs, self.shape, self.chunk, self.record = outputs, shape, chunk, record
        self.version, self.scale = version or ngff_version(), scale
        self.masks = outputs["masks"]
        self._arrays: dict[str, object] = {}
        for output in outputs.values():
            _check_target(output.path)
        self.finished = False
        if self.masks.path.exists() and not restart:
            kept = _attributes(self.masks.path).get(RECORD)
            if kept != record:
                raise UserInputError(f"{self.masks.path} exists, made by another model or with other settings "
                                     f"({_difference(kept, record)}): it is not replaced unless you add --overwrite")
            self.finished, self.resumed = True, True  # the same command again: nothing left to do
            return
        partial = partial_path(self.masks.path)
        if partial.exists():
            kept = _attributes(partial).get(RECORD)
            if kept != record and not restart:
                raise UserInputError(f"{self.masks.path} is being made by another model or with other settings "
                                     f"({_difference(kept, record)}); run the same command to go on, or add "
                                     "--overwrite to start over")
            if kept != record or restart:
                self._remove_partials()
        self.resumed = partial.exists()
        if not self.resumed:
            self._create(label_values or [])

    @classmethod
    def join(cls, outputs: dict[str, Output], shape: tuple[int, int, int]) -> PredictionStore:
        """The store another worker (the chief) has created or resumed, opened to write blocks into."""
        store = cls.__new__(cls)
        store.outputs, store.shape, store.masks, store._arrays = outputs, shape, outputs["masks"], {}
        store.record = kept_record(partial_path(outputs["masks"].path))
        store.chunk = tuple(store.record["chunks"])
        store.finished, store.resumed = False, True
        return store

    def _create(self, label_values: list[int]) -> None:
        version = self.version
        for name, output in self.outputs.items():
            depth, height, width = self.shape
            shape = (output.channels, depth, height, width) if output.axes == "czyx" else self.shape
            chunks = (1, 1, *self.chunk) if output.axes == "czyx" else (1, *self.chunk)
            extra = _label_metadata(label_values, version) if output.label else {}
            scale = self.scale if self.scale and len(self.scale) == len(shape) else None
            try:
                create_image(partial_path(output.path), shape, np.dtype(output.dtype), chunks, name, version,
                             output.axes, scale, extra=extra)
            except OSError as error:
                raise UserInputError(f"cannot create {output.path}: {error.strerror or error}") from None
        masks = partial_path(self.masks.path)
        (masks / DONE_FOLDER).mkdir()
        _write_record(masks, self.record)

    def _remove_partials(self) -> None:
        """Our own hidden partial images only (never a final output)."""
        for output in self.outputs.values():
            shutil.rmtree(partial_path(output.path), ignore_errors=True)

    def done(self) -> set[str]:
        folder = partial_path(self.masks.path) / DONE_FOLDER
        return {entry.name for entry in os.scandir(folder) if not entry.name.endswith(".part")} \
            if folder.is_dir() else set()

    def write(self, block, pieces: dict[str, np.ndarray], counts: list[int]) -> None:
        """A block's pieces into their images (whole chunks), then its mark, which keeps the block's pixel count
        per class: only a complete block counts."""
        rows, cols = slice(block.top, block.top + block.height), slice(block.left, block.left + block.width)
        for name, piece in pieces.items():
            array = self._arrays.get(name)
            if array is None:
                array = self._arrays[name] = open_level(partial_path(self.outputs[name].path))
            if self.outputs[name].axes == "czyx":
                array[:, block.z, rows, cols] = np.moveaxis(piece, -1, 0)
            else:
                array[block.z, rows, cols] = piece
        mark = partial_path(self.masks.path) / DONE_FOLDER / block.name
        mark.with_suffix(".part").write_text(json.dumps(counts))
        os.replace(mark.with_suffix(".part"), mark)

    def class_counts(self, classes: int) -> np.ndarray:
        """Pixels per class over every block done, from the marks (so a resumed run counts the whole volume)."""
        total = np.zeros(classes, np.int64)
        folder = partial_path(self.masks.path) / DONE_FOLDER
        for mark in folder.iterdir():
            if not mark.name.endswith(".part"):
                total += np.array(json.loads(mark.read_text() or "[]") or [0] * classes, np.int64)[:classes]
        return total

    def finish(self) -> None:
        """Every block is written: the images take their final names (masks last, so a finished masks image
        means a finished prediction), scratch images and the marks go."""
        for output in sorted(self.outputs.values(), key=lambda output: output is self.masks):
            partial, final = partial_path(output.path), output.path
            if output.scratch:
                shutil.rmtree(partial, ignore_errors=True)
            elif partial.exists():  # else renamed by a run stopped while finishing
                if final.exists():  # --overwrite of a finished prediction: the new one replaces it whole
                    aside = final.parent / f".{final.name}.replaced"
                    os.replace(final, aside)
                    os.replace(partial, final)
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    os.replace(partial, final)
        shutil.rmtree(self.masks.path / DONE_FOLDER, ignore_errors=True)

    def __getstate__(self) -> dict:  # each process (Dask worker) opens its own arrays
        return {**self.__dict__, "_arrays": {}}


def kept_record(folder: Path) -> dict:
    """The record a prediction's masks image (partial or finished) keeps."""
    record = _attributes(folder).get(RECORD)
    if not isinstance(record, dict):
        raise UserInputError(f"{folder} keeps no record of the prediction that made it")
    return record


def record_in_progress(masks: Path) -> dict | None:
    """The record of the prediction into ``masks`` that a run left (partial or finished), if any: what an
    ``auto`` tile and chunk take again, so that a resumed run matches whatever the machine measures now."""
    for folder in (partial_path(masks), masks):
        try:
            record = _attributes(folder).get(RECORD) if folder.is_dir() else None
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return record
    return None


def _write_record(folder: Path, record: dict) -> None:
    import zarr

    group = zarr.open_group(str(folder), mode="r+")
    if (folder / ZARR_V3).is_file():
        group.attrs["ome"] = {**group.attrs["ome"], RECORD: record}
    else:
        group.attrs[RECORD] = record


def _check_target(path: Path) -> None:
    if path.parent.name == "labels" and zarr_node(path.parent.parent) is not None:
        path.parent.mkdir(exist_ok=True)  # an image's labels/ group, made by register_label once done
    if path.exists() and not path.is_dir():
        raise UserInputError(f"the output {path} is a file; name a new folder such as masks.ome.zarr")
    if path.exists() and zarr_node(path) is None:
        raise UserInputError(f"the output {path} is a folder that is not an OME-Zarr image; name a new one")
    ensure_writable_dir(path.parent, "the output's folder")


def _difference(kept: dict | None, wanted: dict) -> str:
    if not isinstance(kept, dict):
        return "it keeps no record"
    for key in sorted(set(kept) | set(wanted)):
        if kept.get(key) != wanted.get(key):
            return f"{key}: {json.dumps(kept.get(key))[:120]} there, {json.dumps(wanted.get(key))[:120]} now"
    return "no difference"
