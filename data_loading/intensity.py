"""How grey values of any bit depth become the 8-bit values the network was built for.

The recipe (and ISBI 2012) reads 8-bit slices and scales them to [-1, 1].
Microscopes also write 16-bit integers (FIB-SEM, many EM cameras) or floats.
The rule, kept simple so that a user can reproduce it in any tool:

- 8-bit (uint8) images are used as they are. The ISBI path is bit-identical.
- Any other grey image is mapped through a window [low, high]: the 0.5th and
  99.5th percentiles of the grey values of the run's training images (all
  stacks given to --train_images, before the fold split). A value becomes
  ``round(255 * clip((value - low) / (high - low), 0, 1))``. The extreme 1 %
  of outliers (hot pixels, empty borders) thus cannot squeeze the contrast.
- The window is kept beside the checkpoints as ``<model_dir>/intensity.json``,
  copied into the export folder, and written into the zoo package's
  pre-processing. Evaluation, prediction and export of that model map new
  stacks through the same window, so they see what training saw.
- A non-8-bit stack that meets a model without a window (one trained on
  8-bit data) is mapped by its own percentiles, said in one log line.

The percentiles come from every voxel of volumes of up to 2 GiB and, beyond
that, from 2 GiB of whole chunks: z-layers spread evenly, chunks drawn at
random within each (seeded, so a run's window is reproducible), at most 2^24
values kept. A volume larger than memory is never read whole to find its
window, and memory holds the values kept, not the volume. Stacks are mapped as they are read, a box at a
time (``EightBitVolume``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from common.files import atomic_output
from data_loading.volume_reader import ArrayVolume, VolumeReader

INTENSITY_FILE = "intensity.json"
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
RULE = ("8-bit images as they are; other grey images: round(255 * clip((value - low) / (high - low), 0, 1)), "
        f"low/high the {LOW_PERCENTILE:g}th/{HIGH_PERCENTILE:g}th percentiles of the training images")
SAMPLED_BYTES = 2 << 30  # volumes up to this size give the window every voxel; larger ones a sample of chunks
SAMPLED_VALUES = 1 << 24  # at most this many grey values are kept for the percentiles (128 MB as float64)
SAMPLE_SEED = 20121  # the chunks drawn for a window: the same every run


@dataclass(frozen=True)
class IntensityWindow:
    """The grey values that map to 0 and 255, and where they came from (in words, for logs and packages)."""

    low: float
    high: float
    source: str  # e.g. "percentiles 0.5/99.5 of the training images (uint16)"

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}] -> [0, 255] ({self.source})"


def is_eight_bit(images: np.ndarray) -> bool:
    return images.dtype == np.uint8


def check_finite(images: np.ndarray, path: object, first_slice: int = 0) -> None:
    """Floats with NaN or infinity have no grey value; refused in one line, naming the first bad slice."""
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        stack = images.reshape(-1, *images.shape[-2:])
        index = first_slice + int(np.argmax(~np.isfinite(stack).reshape(len(stack), -1).all(axis=1)))
        raise UserInputError(f"{path} holds NaN or infinite values (slice {index}); images must be finite grey values")


def _chunk_picks(grid: list[int], count: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """``count`` chunks of a (z, y, x) chunk grid: all of them in order, or layers spread evenly over z and
    chunks at random within each (slices differ in brightness more than places in a slice do)."""
    depth, rows, cols = grid
    if count >= depth * rows * cols:
        return [(z, y, x) for z in range(depth) for y in range(rows) for x in range(cols)]
    layers = np.linspace(0, depth, num=min(depth, count), endpoint=False).astype(int)
    picks = []
    for index, layer in enumerate(layers):
        share = min(rows * cols, count // len(layers) + (1 if index < count % len(layers) else 0))
        picks += [(int(layer), *divmod(int(flat), cols)) for flat in np.sort(rng.choice(rows * cols, share,
                                                                                         replace=False))]
    return picks


def _sampled_values(reader: VolumeReader, read_budget: int, value_budget: int,
                    rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """Grey values of whole chunks, ``read_budget`` bytes of them at most (every chunk of a smaller volume), each
    thinned by a stride so that ``value_budget`` values are kept in all; and how many voxels were read."""
    grid = [math.ceil(size / chunk) for size, chunk in zip(reader.shape, reader.chunks, strict=True)]
    chunk_bytes = math.prod(reader.chunks) * reader.dtype.itemsize
    picks = _chunk_picks(grid, max(1, read_budget // chunk_bytes), rng)
    stride = max(1, math.ceil(len(picks) * math.prod(reader.chunks) / value_budget))
    (dz, dy, dx), (depth, height, width) = reader.chunks, reader.shape
    values, read = [], 0
    for zc, yc, xc in picks:
        rows, cols = slice(yc * dy, min((yc + 1) * dy, height)), slice(xc * dx, min((xc + 1) * dx, width))
        for z in range(zc * dz, min((zc + 1) * dz, depth)):
            box = reader.read(z, rows, cols)
            check_finite(box, reader.name, z)
            values.append(box.reshape(-1)[::stride].astype(np.float64))
            read += box.size
    return values, read


def fit_window(stacks: Sequence[VolumeReader | np.ndarray], what: str, read_budget: int = SAMPLED_BYTES,
               value_budget: int = SAMPLED_VALUES) -> IntensityWindow | None:
    """The window of the rule from these stacks' non-8-bit images; None when all are 8-bit (nothing to map).

    Volumes of up to ``read_budget`` bytes in all are read whole (a slice or a
    chunk at a time); larger ones give whole chunks up to that many bytes,
    each volume its share. At most ``value_budget`` values are kept, evenly
    strided within each chunk.
    """
    readers = [ArrayVolume(s) if isinstance(s, np.ndarray) else s for s in stacks]
    wide = [reader for reader in readers if reader.dtype != np.uint8]
    if not wide:
        return None
    total_bytes = sum(reader.nbytes for reader in wide)
    total = sum(math.prod(reader.shape) for reader in wide)
    rng = np.random.default_rng(SAMPLE_SEED)
    pieces, read = [], 0
    for reader in wide:
        share = max(1, read_budget * reader.nbytes // total_bytes)
        kept, count = _sampled_values(reader, share, max(1, value_budget * reader.nbytes // total_bytes), rng)
        pieces += kept
        read += count
    values = np.concatenate(pieces)
    low, high = (float(v) for v in np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if high <= low:  # a flat image: any window maps it to one grey value
        high = low + 1.0
    kinds = ", ".join(sorted({str(reader.dtype) for reader in wide}))
    sample = "" if read == total and values.size == total else (
        f", {values.size:,} values of {read:,} voxels read in whole chunks, of {total:,}")
    return IntensityWindow(low, high, f"percentiles {LOW_PERCENTILE:g}/{HIGH_PERCENTILE:g} of {what} ({kinds}{sample})")


def to_eight_bit(images: np.ndarray, window: IntensityWindow | None) -> np.ndarray:
    """``images`` as uint8 by the rule; 8-bit images come back unchanged (the same array)."""
    if is_eight_bit(images):
        return images
    if window is None:
        raise ValueError("a window is needed to map non-8-bit images")
    scaled = (images.astype(np.float32) - np.float32(window.low)) * np.float32(255.0 / (window.high - window.low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def save_window(folder: Path, window: IntensityWindow) -> Path:
    """Write ``<folder>/intensity.json`` whole or not at all."""
    path = Path(folder) / INTENSITY_FILE
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps({**asdict(window), "rule": RULE}) + "\n", encoding="utf-8")
    return path


def load_window(folder: Path) -> IntensityWindow | None:
    """The window kept in ``folder`` (a model dir, an export folder); None if it keeps none (8-bit training)."""
    path = Path(folder) / INTENSITY_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserInputError(f"cannot read {path}: {error.strerror}") from None
    return parse_window(text, str(path))


def parse_window(text: str, name: str) -> IntensityWindow:
    """The window in an ``intensity.json``'s text; ``name`` says where it came from in the error."""
    try:
        record = json.loads(text)
        window = IntensityWindow(float(record["low"]), float(record["high"]), str(record.get("source", "")))
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(f"{name} is unreadable ({error}); it holds the grey-value window the model was "
                             "trained with") from None
    if not window.high > window.low:
        raise UserInputError(f"{name} holds the window [{window.low}, {window.high}]; its high must exceed its low")
    return window


class EightBitVolume(VolumeReader):
    """A volume's grey values mapped to 8 bits by a window as each box is read (8-bit volumes pass through)."""

    def __init__(self, reader: VolumeReader, window: IntensityWindow | None) -> None:
        if reader.dtype != np.uint8 and window is None:
            raise ValueError("a window is needed to map non-8-bit images")
        self.source, self.window = reader, window
        self.name, self.stem, self.shape, self.chunks = reader.name, reader.stem, reader.shape, reader.chunks
        self.dtype = np.dtype(np.uint8)

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        values = self.source.read(z, rows, cols)
        check_finite(values, self.name, z)
        return to_eight_bit(values, self.window)

    def slice_names(self) -> list[str]:
        return self.source.slice_names()

    def close(self) -> None:
        self.source.close()


def map_volumes(readers: list[VolumeReader], window: IntensityWindow | None) -> tuple[list[VolumeReader], list[str]]:
    """Each volume as 8-bit grey values, and a note per volume that needed its own window (the model keeps none)."""
    mapped, notes = [], []
    for reader in readers:
        own = window
        if own is None and reader.dtype != np.uint8:
            own = fit_window([reader], f"{reader.name} itself")
            notes.append(f"{reader.name}: {reader.dtype} grey values mapped to 8 bits by {own.describe()}, as the "
                         "model keeps no window of its own (it was trained on 8-bit images)")
        mapped.append(EightBitVolume(reader, own) if reader.dtype != np.uint8 else reader)
    return mapped, notes


def map_stacks(stacks: list[np.ndarray], window: IntensityWindow | None,
               names: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """``map_volumes`` for stacks in memory: each as a uint8 array."""
    readers = [ArrayVolume(stack, name) for stack, name in zip(stacks, names, strict=True)]
    mapped, notes = map_volumes(readers, window)
    return [reader.read_all() for reader in mapped], notes
