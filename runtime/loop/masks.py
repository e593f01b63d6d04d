"""Writing what predict decides, slice by slice: masks, cell labels and overlays of a stack of any length.

Memory holds one slice of each output, never the stack, and each file
appears under its final name only once it is whole. Cell ids go to a scratch
file as uint32 first and are written out at the end as uint16 when no slice
holds more than 65535 cells (else uint32): the file ``cell_labels`` of the
whole stack would give.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.errors import write_failure
from data_loading.readers import TiffVolume
from data_loading.tiff_io import PageWriter, write_pages_atomically
from data_loading.volume_reader import VolumeReader
from runtime.inference.cells import cell_dtype, cell_ids_of_slice, cells_path, each_ids_and_cells
from runtime.inference.strategies import ProbabilityFn, iter_probabilities, mask_values
from runtime.reporting.overlays import write_overlays


def predict_to_tiff(probabilities: ProbabilityFn, images: VolumeReader, names: list[str], path: Path, *,
                    strategy: str, batch_size: int, tta: bool, num_classes: int, overlays: int, cell_labels: bool,
                    cell_threshold: float | None, overlays_folder: Path | None = None) -> dict[str, object]:
    """The prediction of a stack into a masks TIFF, the same for ``--exec_mode predict`` and predict.py: each
    slice read, its class probabilities by ``strategy`` (and TTA), its class ids and cell mask decided, and
    written slice by slice (``write_masks``); a failed write in one line. The summary the PREDICT line logs."""
    maps = iter_probabilities(probabilities, (images.read(z) for z in range(images.shape[0])), batch_size,
                              strategy, tta)
    try:
        return write_masks(path, images, names, each_ids_and_cells(maps, cell_threshold), num_classes, overlays,
                           cell_labels, overlays_folder)
    except OSError as error:
        raise write_failure(path.name, path.parent, error) from None


def write_masks(path: Path, images: VolumeReader, names: list[str], decided: Iterator[tuple[np.ndarray, np.ndarray]],
                num_classes: int, overlays: int, with_cells: bool,
                overlays_folder: Path | None = None) -> dict[str, object]:
    """Masks of ``images`` at ``path`` (and cell ids beside it, ``with_cells``) from each slice's (class ids,
    cell mask), and overlays of the first ``overlays`` slices (in ``overlays_folder``, default ``overlays/``
    beside the masks); the summary the PREDICT line logs."""
    overlays_folder = overlays_folder or path.parent / "overlays"
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.zeros(num_classes, np.int64)
    cells_scratch = path.with_name(f".{path.name}.cells.part")
    cells = PageWriter(cells_scratch, images.shape, np.uint32) if with_cells else None
    most_cells, total_cells = 0, 0
    pictured: list[np.ndarray] = []  # the first slices' ids, drawn once the masks are whole

    def pages() -> Iterator[np.ndarray]:
        nonlocal most_cells, total_cells
        for index, (ids, cell_mask) in enumerate(decided):
            counts[:] += np.bincount(ids.ravel(), minlength=num_classes)[:num_classes]
            if cells is not None:
                labelled = cell_ids_of_slice(cell_mask)
                cells.write(labelled)
                most_cells = max(most_cells, int(labelled.max(initial=0)))
                total_cells += int(labelled.max(initial=0))
            if index < overlays:
                pictured.append(ids)
            yield mask_values(ids, num_classes)

    try:
        write_pages_atomically(path, images.shape, np.uint8, pages())
        if cells is not None:
            cells.close()
            _write_cells(cells_scratch, cells_path(path), most_cells)
        for index, ids in enumerate(pictured):
            write_overlays(overlays_folder, names[index:index + 1], [images.read(index)], [ids], count=1,
                           num_classes=num_classes)
    finally:
        if cells is not None:
            cells.close()
            cells_scratch.unlink(missing_ok=True)
    summary: dict[str, object] = {}
    if with_cells:
        summary.update({"cell_labels": str(cells_path(path)), "cells": total_cells})
    fractions = counts / max(counts.sum(), 1)
    summary.update({"cell_fraction": float(fractions[1])} if num_classes == 2
                   else {"class_fractions": [round(float(f), 6) for f in fractions]})
    return summary


def _write_cells(scratch: Path, final: Path, most_cells: int) -> None:
    """The scratch file's cell ids as the final stack: uint16 when they fit, else uint32, slice by slice."""
    wide = TiffVolume(scratch)
    dtype = cell_dtype(most_cells)
    try:
        write_pages_atomically(final, wide.shape, dtype, (wide.read(z).astype(dtype) for z in range(wide.shape[0])))
    finally:
        wide.close()


def blocks_to_tiff(blocks: Path, path: Path, images: VolumeReader, names: list[str], settings, overlays: int,
                   num_classes: int) -> dict[str, object]:
    """A blockwise prediction's OME-Zarr images (``blocks``, ours, hidden) as the masks TIFF and cell labels TIFF
    a stack's prediction writes, slice by slice; the images are removed after. The summary's additions."""
    import shutil

    from data_loading.ome_zarr import open_level
    from runtime.loop.blockwise import outputs_beside, overlays_from_masks

    outputs = outputs_beside(blocks, settings, num_classes)
    masks = open_level(blocks)
    write_pages_atomically(path, images.shape, np.uint8, (np.asarray(masks[z]) for z in range(images.shape[0])))
    summary: dict[str, object] = {}
    if "cells" in outputs:
        cells = open_level(outputs["cells"].path)
        dtype = cell_dtype(max(int(np.asarray(cells[z]).max(initial=0)) for z in range(images.shape[0])))
        write_pages_atomically(cells_path(path), images.shape, dtype,
                               (np.asarray(cells[z]).astype(dtype) for z in range(images.shape[0])))
        summary["cell_labels"] = str(cells_path(path))
    overlays_from_masks(images, names, blocks, overlays, num_classes, path.parent / "overlays")
    for output in outputs.values():
        shutil.rmtree(output.path, ignore_errors=True)
    return summary
