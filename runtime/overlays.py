"""PNG pictures of a segmentation: the EM slice with predicted and true membranes drawn over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_loading.tiff_io import atomic_output

PREDICTED = np.array([255, 40, 40], np.float32)  # red: membranes the model predicts
TRUE = np.array([40, 220, 40], np.float32)  # green: membranes of the label
BOTH = np.array([255, 220, 0], np.float32)  # yellow: predicted and true
OPACITY = 0.55


def overlay(image: np.ndarray, predicted_mask: np.ndarray, true_mask: np.ndarray | None = None) -> np.ndarray:
    """An RGB picture: grey slice, membranes (mask value 0) tinted by who found them."""
    grey = np.repeat(image.astype(np.float32)[..., np.newaxis], 3, axis=-1)
    predicted = predicted_mask == 0
    true = np.zeros_like(predicted) if true_mask is None else true_mask == 0
    colours = np.zeros_like(grey)
    colours[predicted & ~true] = PREDICTED
    colours[true & ~predicted] = TRUE
    colours[predicted & true] = BOTH
    tinted = predicted | true
    grey[tinted] = (1 - OPACITY) * grey[tinted] + OPACITY * colours[tinted]
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)


def write_overlays(folder: Path, names: list[str], images: np.ndarray, predicted_masks: np.ndarray,
                   true_masks: np.ndarray | None = None, count: int = 3) -> list[Path]:
    """The first ``count`` slices as <folder>/<name>.png, each written atomically."""
    written = []
    for index in range(min(count, len(images))):
        truth = None if true_masks is None else true_masks[index]
        path = Path(folder) / f"{names[index]}.png"
        with atomic_output(path) as temporary:
            Image.fromarray(overlay(images[index], predicted_masks[index], truth)).save(temporary, format="PNG")
        written.append(path)
    return written
