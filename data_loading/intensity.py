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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from common.files import atomic_output

INTENSITY_FILE = "intensity.json"
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
RULE = ("8-bit images as they are; other grey images: round(255 * clip((value - low) / (high - low), 0, 1)), "
        f"low/high the {LOW_PERCENTILE:g}th/{HIGH_PERCENTILE:g}th percentiles of the training images")
SAMPLED_VALUES = 1 << 24  # percentiles from at most this many evenly strided values: a big stack is not copied


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


def check_finite(images: np.ndarray, path: Path) -> None:
    """Floats with NaN or infinity have no grey value; refused in one line, naming the first bad slice."""
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        index = int(np.argmax(~np.isfinite(images).reshape(len(images), -1).all(axis=1)))
        raise UserInputError(f"{path} holds NaN or infinite values (slice {index}); images must be finite grey values")


def fit_window(stacks: list[np.ndarray], what: str) -> IntensityWindow | None:
    """The window of the rule from these stacks' non-8-bit images; None when all are 8-bit (nothing to map)."""
    wide = [stack for stack in stacks if not is_eight_bit(stack)]
    if not wide:
        return None
    total = sum(stack.size for stack in wide)
    stride = max(1, total // SAMPLED_VALUES)
    values = np.concatenate([stack.reshape(-1)[::stride].astype(np.float64) for stack in wide])
    low, high = (float(v) for v in np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if high <= low:  # a flat image: any window maps it to one grey value
        high = low + 1.0
    kinds = ", ".join(sorted({str(stack.dtype) for stack in wide}))
    return IntensityWindow(low, high, f"percentiles {LOW_PERCENTILE:g}/{HIGH_PERCENTILE:g} of {what} ({kinds})")


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


def map_stacks(stacks: list[np.ndarray], window: IntensityWindow | None,
               names: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """Each stack as uint8, and a note per stack that needed its own window (no model window was known)."""
    mapped, notes = [], []
    for stack, name in zip(stacks, names, strict=True):
        own = window
        if own is None and not is_eight_bit(stack):
            own = fit_window([stack], f"{name} itself")
            notes.append(f"{name}: {stack.dtype} grey values mapped to 8 bits by {own.describe()}, as the model "
                         "keeps no window of its own (it was trained on 8-bit images)")
        mapped.append(to_eight_bit(stack, own))
    return mapped, notes
