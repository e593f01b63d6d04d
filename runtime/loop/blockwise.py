"""Predict a volume of any size block by block into OME-Zarr images: chunk-aligned, resumable, in bounded memory.

The volume is cut into blocks of whole output chunks (runtime/inference/blocks.py);
each block reads its tiles with their 92 pixels of context (mirrored at the
volume's edges exactly as the overlap-tile strategy mirrors a slice), and
writes exactly its own chunks of the masks (and, on request, the class
probabilities and the cell masks), then its mark
(data_loading/prediction_store.py). A run stopped anyhow goes on where it
stopped when started again with the same command. Cell labels, which need
the whole slice, are numbered slice by slice once every block is done.
Memory holds one block's tiles and outputs, never the volume.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_loading.memory import available_bytes
from data_loading.ome_zarr import open_level
from data_loading.prediction_store import (
    Output,
    PredictionStore,
    input_labels,
    partial_path,
    record_in_progress,
    register_label,
)
from data_loading.volume_reader import VolumeReader
from runtime.execution.block_engines import LOCAL, BlockEngine
from runtime.inference.blocks import (
    choose_tile,
    default_chunk,
    fastest_tile,
    fitting_tiles,
    plan_blocks,
    tiles_per_pass,
    worth_timing,
)
from runtime.inference.cells import cell_ids_of_slice
from runtime.inference.networks import TileNetworks
from runtime.inference.strategies import box_probabilities, class_ids, mask_values
from runtime.inference.thinned import cell_probability
from runtime.reporting.overlays import write_overlays
from runtime.reporting.progress import BlockProgress

GIB = 2**30
TILE_MEMORY_CAP = 3 * GIB  # the forward pass of one batch of tiles takes at most this much (and a quarter of
# what is available): at full width a 1412 tile (2.6 GiB) fits, and a process stays under 4 GiB


@dataclass(frozen=True)
class BlockwiseSettings:
    """What shapes the output (recorded with it: a resumed run must match) and how the work is done."""

    tile: int | None = None  # output tile side; None: the one in progress, else timed or counted (blocks.py)
    chunk: int | None = None  # output chunk side; None: a whole multiple of the tile near 1024
    tta: bool = False
    cell_labels: bool = False
    cell_threshold: float | None = None
    probabilities: str | None = None  # "uint8" or "float16"
    batch_size: int = 4  # tiles per forward pass (fewer if their memory would pass the bound)
    overwrite: bool = False
    overlays: int = 0
    into_labels_of: Path | None = None  # an OME-Zarr input: the masks go in as its labels/<name> image


def outputs_beside(masks: Path, settings: BlockwiseSettings, classes: int) -> dict[str, Output]:
    """The images a prediction writes: ``x-masks.ome.zarr``, and beside it ``x-cells.ome.zarr`` and
    ``x-probabilities.ome.zarr`` when asked (cell masks go to a scratch image that the cells pass reads)."""
    stem = masks.name.removesuffix(".zarr").removesuffix(".ome").removesuffix("-masks")
    suffix = ".ome.zarr" if masks.name.endswith(".zarr") else ""  # label images of an image: plain names
    beside = masks.parent
    outputs = {"masks": Output(masks, "uint8", label=True)}
    if settings.cell_labels:
        outputs["cell_masks"] = Output(beside / f"{stem}-cellmasks{suffix}", "uint8", scratch=True)
        outputs["cells"] = Output(beside / f"{stem}-cells{suffix}", "uint32", label=True)
    if settings.probabilities:
        outputs["probabilities"] = Output(beside / f"{stem}-probabilities{suffix}", settings.probabilities,
                                          "czyx", classes)
    return outputs


def model_fingerprint(files: Iterable[Path]) -> str:
    """A short hash of a model's files (checkpoint data, export weights): another model gives another."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(file.name.encode())
                with open(file, "rb") as handle:
                    for piece in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(piece)
    return digest.hexdigest()[:16]


def _tile_and_chunks(volume: VolumeReader, networks: TileNetworks, settings: BlockwiseSettings, masks: Path,
                     log: Callable[[str], None]) -> tuple[int, tuple[int, int]]:
    """The tile and output chunks: as asked; else those of the prediction in progress into ``masks`` (a timed
    choice is not made again: it could differ, and the run could not go on); else chosen for this volume."""
    _, height, width = volume.shape
    kept = None if settings.overwrite else record_in_progress(masks)
    tile = settings.tile
    if tile is None and kept and kept.get("tile") in networks.sizes:
        tile = int(kept["tile"])
    if tile is None:
        bound = min(TILE_MEMORY_CAP, (available_bytes() or 4 * TILE_MEMORY_CAP) // 4)
        fitting = fitting_tiles(networks.base_filters, bound, networks.sizes)
        tile = _timed_tile(volume.shape, networks, fitting, log) \
            or choose_tile(height, width, networks.base_filters, bound, networks.sizes)
    if settings.chunk is None and kept and kept.get("tile") == tile and len(kept.get("chunks") or ()) == 2:
        return tile, (int(kept["chunks"][0]), int(kept["chunks"][1]))
    chunk = settings.chunk or default_chunk(tile, max(height, width))
    return tile, (min(chunk, height), min(chunk, width))


def _timed_tile(shape: tuple[int, int, int], networks: TileNetworks, fitting: tuple[int, ...],
                log: Callable[[str], None]) -> int | None:
    """The fastest tile for this volume by one timed pass of each, where the volume is large enough to pay
    for the timing (blocks.worth_timing); None where it is not."""
    if len(fitting) < 2:
        return None
    smallest = min(fitting)
    seconds = {smallest: networks.pass_seconds(smallest)}
    if not worth_timing(shape, fitting, seconds[smallest]):
        return None
    seconds.update({tile: networks.pass_seconds(tile) for tile in fitting if tile != smallest})
    best = fastest_tile(shape[1], shape[2], seconds)
    networks.forget(keep=best)
    log(f"tile {best} chosen by timing one pass of each: "
        + ", ".join(f"{tile}: {seconds[tile]:.2f} s" for tile in sorted(seconds)))
    return best


def _pieces(probabilities: np.ndarray, classes: int, settings: BlockwiseSettings) -> tuple[dict, np.ndarray]:
    ids = class_ids(probabilities)
    pieces = {"masks": mask_values(ids, classes)}
    if settings.cell_labels:
        cells = ids if settings.cell_threshold is None else cell_probability(probabilities) > settings.cell_threshold
        pieces["cell_masks"] = (cells != 0).astype(np.uint8)
    if settings.probabilities == "uint8":
        pieces["probabilities"] = np.rint(np.clip(probabilities, 0, 1) * 255).astype(np.uint8)
    elif settings.probabilities == "float16":
        pieces["probabilities"] = probabilities.astype(np.float16)
    return pieces, ids


@dataclass(frozen=True)
class Share:
    """Which blocks this process computes (every ``size``-th from ``rank``), and how the processes wait for
    each other; one process: all of them."""

    rank: int = 0
    size: int = 1
    any: Callable[[bool], bool] = bool  # True on every process if true on any; also where they wait for each other


def predict_blockwise(volume: VolumeReader, names: list[str], networks: TileNetworks, masks: Path,
                      settings: BlockwiseSettings, model_id: str, log: Callable[[str], None],
                      share: Share = Share(), overlays_folder: Path | None = None,
                      engine: BlockEngine = LOCAL, model_paths: tuple[str, ...] = ()) -> dict[str, object]:
    """Masks of ``volume`` (uint8 grey values) into ``masks`` (an OME-Zarr image) block by block; the summary.

    With several processes (``share``), the first (the chief) creates or resumes the outputs and the others
    join it; each writes its own blocks' chunks, and the chief finishes the outputs once all are written.
    ``engine`` runs the blocks (runtime/execution/block_engines.py: here, or as tasks of a Dask cluster, whose
    workers load the exported models ``model_paths`` once each).
    """
    classes = networks.classes
    outputs = outputs_beside(masks, settings, classes)
    chief = share.rank == 0
    if chief:
        tile, chunk_shape = _tile_and_chunks(volume, networks, settings, masks, log)
        record = json.loads(json.dumps({
            "model": model_id, "input": {"name": volume.name, "shape": volume.shape}, "chunks": chunk_shape,
            "tile": tile, "classes": classes,
            "settings": {k: v for k, v in asdict(settings).items()
                         if k in ("tta", "cell_labels", "cell_threshold", "probabilities")}}))
        labels = [0, 255] if classes == 2 else list(range(classes))
        _, version, scale = input_labels(settings.into_labels_of, masks.name) if settings.into_labels_of \
            else (None, None, None)
        store = PredictionStore(outputs, volume.shape, chunk_shape, record, settings.overwrite, labels, version,
                                scale)
        finished = share.any(store.finished)  # the outputs exist: the others may join
    elif not share.any(False):
        store = PredictionStore.join(outputs, volume.shape)
    else:
        return {"predictions": str(masks), "computed": 0, "summary": "finished already"}
    tile, chunk_shape = int(store.record["tile"]), tuple(store.record["chunks"])
    blocks = plan_blocks(volume.shape, chunk_shape, math.ceil(tile / min(chunk_shape)))  # a block: a tile or more
    if chief and finished:
        log(f"{masks} is finished already (the same model and settings): nothing to do")
        return {"predictions": str(masks), "blocks": len(blocks), "computed": 0, "tile": tile,
                "chunks": list(chunk_shape), "summary": f"0 blocks computed, {len(blocks)} done before"}
    done = store.done()
    mine = [block for index, block in enumerate(blocks) if index % share.size == share.rank]
    progress = BlockProgress(len(mine), sum(block.name in done for block in mine))
    if done and chief:
        log(f"going on with {masks}: {len(done)} of {len(blocks)} blocks were done before")
    per_pass = tiles_per_pass(tile, networks.base_filters, TILE_MEMORY_CAP, settings.batch_size)
    job = BlockJob(volume, store, tile, per_pass, settings, classes, networks, model_paths)
    for voxels in engine.run(job, [block for block in mine if block.name not in done]):
        progress.update(voxels)
    summary_line = progress.close()
    share.any(False)  # every block is written
    summary = {"predictions": str(masks), "blocks": len(blocks), "computed": progress.done - progress.skipped,
               "tile": tile, "chunks": list(chunk_shape), "voxels_per_s": round(progress.rate(), 1),
               "summary": summary_line}
    if not chief:
        return summary
    counts = store.class_counts(classes)
    if settings.cell_labels:
        _number_cells(store)
        summary["cell_labels"] = str(store.outputs["cells"].path)
    store.finish()
    if settings.into_labels_of:
        for name in ("masks", "cells"):
            if name in store.outputs:
                register_label(settings.into_labels_of, store.outputs[name].path.name, store.version)
    folder = overlays_folder or masks.parent / f"{masks.name.split('.')[0]}-overlays"
    overlays_from_masks(volume, names, masks, settings.overlays, classes, folder)
    fractions = counts / max(counts.sum(), 1)
    summary.update({"cell_fraction": float(fractions[1])} if classes == 2
                   else {"class_fractions": [round(float(f), 6) for f in fractions]})
    return summary


@dataclass
class BlockJob:
    """One block's work, the same wherever it runs: read its tiles, predict, write its chunks and its mark.

    Pickled for a Dask worker without its networks: a worker loads the model once (``networks.loaded``)
    and keeps it for every block it is given.
    """

    volume: VolumeReader
    store: PredictionStore
    tile: int
    per_pass: int
    settings: BlockwiseSettings
    classes: int
    networks: TileNetworks | None
    model_paths: tuple[str, ...] = ()  # exported models: what a worker of another process loads

    def __call__(self, block) -> int:
        if self.networks is None:
            from runtime.inference.networks import loaded

            self.networks = loaded(self.model_paths)
        network = self.networks.at(self.tile)
        probabilities = box_probabilities(network, self.volume, block.z, block.top, block.left, block.height,
                                          block.width, self.tile, self.per_pass, self.settings.tta)
        pieces, ids = _pieces(probabilities, self.classes, self.settings)
        self.store.write(block, pieces, np.bincount(ids.ravel(), minlength=self.classes)[:self.classes].tolist())
        return block.height * block.width

    def __getstate__(self) -> dict:
        if not self.model_paths:
            raise ValueError("the models of this run live in its process only: they cannot go to other workers")
        return {**self.__dict__, "networks": None}


def _number_cells(store: PredictionStore) -> None:
    """Cell ids (1..n per slice, 0 on membranes) from the cell masks, one slice at a time."""
    cell_masks = open_level(partial_path(store.outputs["cell_masks"].path))
    cells = open_level(partial_path(store.outputs["cells"].path))
    for z in range(store.shape[0]):
        cells[z] = cell_ids_of_slice(np.asarray(cell_masks[z]))


def overlays_from_masks(volume: VolumeReader, names: list[str], masks: Path, count: int, classes: int,
                        folder: Path) -> None:
    """Pictures of the first ``count`` slices, read back from finished OME-Zarr masks."""
    if not count:
        return
    written = open_level(masks)
    for z in range(min(count, volume.shape[0])):
        ids = np.asarray(written[z])
        ids = (ids // 255).astype(np.uint8) if classes == 2 else ids
        write_overlays(folder, names[z:z + 1], [volume.read(z)], [ids], count=1, num_classes=classes)
