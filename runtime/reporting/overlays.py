"""PNG pictures of a segmentation.

Two classes (the recipe's): the EM slice with predicted and true membranes
drawn over it in one picture. More classes: the slice tinted by predicted
class, and beside it, when the labels are known, tinted by true class.
Masks are class ids (0 = membrane).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import write_failure
from common.files import atomic_output

PREDICTED = np.array([255, 40, 40], np.float32)  # red: membranes the model predicts
TRUE = np.array([40, 220, 40], np.float32)  # green: membranes of the label
BOTH = np.array([255, 220, 0], np.float32)  # yellow: predicted and true
OPACITY = 0.55
CLASS_COLOURS = np.array([[255, 40, 40], [40, 220, 40], [40, 90, 255], [255, 220, 0], [230, 40, 230],
                          [0, 220, 220], [255, 140, 0], [150, 90, 40]], np.float32)  # cycled beyond 8 classes
CLASS_OPACITY = 0.4


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


def tinted(image: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """An RGB picture: grey slice, each pixel tinted by its class's colour."""
    grey = np.repeat(image.astype(np.float32)[..., np.newaxis], 3, axis=-1)
    colours = CLASS_COLOURS[class_ids.astype(np.int64) % len(CLASS_COLOURS)]
    return np.clip((1 - CLASS_OPACITY) * grey + CLASS_OPACITY * colours + 0.5, 0, 255).astype(np.uint8)


def class_overlay(image: np.ndarray, predicted_ids: np.ndarray, true_ids: np.ndarray | None = None) -> np.ndarray:
    """Predicted classes, and the true ones to their right when known, separated by a white gap."""
    pictures = [tinted(image, predicted_ids)]
    if true_ids is not None:
        pictures += [np.full((image.shape[0], 8, 3), 255, np.uint8), tinted(image, true_ids)]
    return np.concatenate(pictures, axis=1)


def write_overlays(folder: Path, names: list[str], images: list[np.ndarray], predicted_ids: list[np.ndarray],
                   true_ids: list[np.ndarray] | None = None, count: int = 3, num_classes: int = 2) -> list[Path]:
    """The first ``count`` slices as <folder>/<name>.png, each written atomically."""
    draw = overlay if num_classes == 2 else class_overlay
    written = []
    for index in range(min(count, len(images))):
        truth = None if true_ids is None else true_ids[index]
        path = Path(folder) / f"{names[index]}.png"
        try:
            with atomic_output(path) as temporary:
                Image.fromarray(draw(images[index], predicted_ids[index], truth)).save(temporary, format="PNG")
        except OSError as error:  # named by its final name, not the temporary one the error carries
            raise write_failure(f"overlay {path.name}", path.parent, error) from None
        written.append(path)
    return written


def cover_picture(image: np.ndarray, predicted_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """A model's cover for the zoo: the slice, a white gap, and the slice with its segmentation drawn on it
    (about 2:1, as the zoo's covers are shown)."""
    grey = np.repeat(image[..., np.newaxis], 3, axis=-1)
    drawn = (overlay(image, predicted_ids * np.uint8(255)) if num_classes == 2
             else tinted(image, predicted_ids))
    return np.concatenate([grey, np.full((image.shape[0], 8, 3), 255, np.uint8), drawn], axis=1)
