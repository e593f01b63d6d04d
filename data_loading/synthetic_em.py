"""An offline stand-in for the ISBI 2012 stacks: EM-like slices with exact labels.

Each slice is a tessellation of cells (a weighted Voronoi diagram whose seeds
drift slowly from slice to slice, like serial sections) separated by dark
membranes of varying width. Cell interiors get their own grey level, smooth
texture and dark vesicle-like blobs (which are *not* membrane, so the task
is not just thresholding); then blur and noise. Labels come from the geometry
before rendering, so they are exact: 255 = cell interior, 0 = membrane.
Deterministic for a seed.

With ``num_classes=3`` about half the cells also hold a mitochondrion: an
elongated dark body with lighter cross-striped cristae, labelled 2, while
labels become class ids (0 = membrane, 1 = cell interior, 2 = mitochondrion).
The round vesicles stay interior, so the organelle class is told apart by
shape and texture, not by darkness alone. The mitochondria come from their
own random stream: the two-class stacks of a seed are the same as before.
"""

from __future__ import annotations

import numpy as np

CELL_AREA = 2600  # mean cell area in pixels at 512x512, close to the ISBI slices
TILE = 32  # pixels per side of the tiles that share one list of candidate seeds


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian-filtered noise (filtered in Fourier space)."""
    return _normalize(_blur(rng.standard_normal((size, size)), sigma))


def _normalize(field: np.ndarray) -> np.ndarray:
    return (field - field.mean()) / (field.std() + 1e-9)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(image) * transfer, s=image.shape)


def _nearest_two(points: np.ndarray, weights: np.ndarray, warp: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: the nearest seed's index and the two smallest weighted distances.

    Pixel positions are displaced by the smooth ``warp`` field first, which
    bends the straight Voronoi edges into wavy, membrane-like curves. Each
    tile of pixels only compares the seeds that can be among its two nearest
    (a bound from the tile's centre and radius), which keeps this exact and fast.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    positions = np.stack([ys + warp[0], xs + warp[1]], axis=-1)
    owner = np.empty((size, size), np.int32)
    first = np.empty((size, size), np.float32)
    second = np.empty((size, size), np.float32)
    reach = TILE / np.sqrt(2) + float(np.abs(warp).max()) + 1.0  # farthest any pixel sits from its tile centre
    for y0 in range(0, size, TILE):
        for x0 in range(0, size, TILE):
            tile = positions[y0:y0 + TILE, x0:x0 + TILE].reshape(-1, 2)
            centre = np.array([y0 + TILE / 2, x0 + TILE / 2], np.float32)
            at_centre = np.sqrt(((points - centre) ** 2).sum(-1)) - weights
            bound = np.partition(at_centre + reach, 1)[1]  # no pixel's second-nearest is farther than this
            candidates = np.flatnonzero(at_centre - reach <= bound)
            distance = np.sqrt(((tile[:, None, :] - points[candidates][None]) ** 2).sum(-1)) - weights[candidates]
            order = np.argsort(distance, axis=1)[:, :2]
            nearest = np.take_along_axis(distance, order, axis=1)
            shape = positions[y0:y0 + TILE, x0:x0 + TILE].shape[:2]
            owner[y0:y0 + TILE, x0:x0 + TILE] = candidates[order[:, 0]].reshape(shape)
            first[y0:y0 + TILE, x0:x0 + TILE] = nearest[:, 0].reshape(shape)
            second[y0:y0 + TILE, x0:x0 + TILE] = nearest[:, 1].reshape(shape)
    return owner, first, second


def _mitochondria(rng: np.random.Generator, points: np.ndarray, owner: np.ndarray, membrane: np.ndarray,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the mitochondria are (bool) and their grey values: ellipses around some cells' seeds."""
    body = np.zeros((size, size), bool)
    grey = np.zeros((size, size), np.float32)
    for cell in np.flatnonzero(rng.uniform(size=len(points)) < 0.5):
        long, short = rng.uniform(8, 17), rng.uniform(4, 7)
        angle, base, period = rng.uniform(0, np.pi), rng.uniform(80, 105), rng.uniform(4.5, 6.5)
        centre = points[cell] + rng.normal(0, 4, 2)
        y0, x0 = (np.floor(centre - long - 1).astype(int)).clip(0, size)
        y1, x1 = (np.ceil(centre + long + 2).astype(int)).clip(0, size)
        if y1 <= y0 or x1 <= x0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        along = (ys - centre[0]) * np.cos(angle) + (xs - centre[1]) * np.sin(angle)
        across = -(ys - centre[0]) * np.sin(angle) + (xs - centre[1]) * np.cos(angle)
        inside = (along / long) ** 2 + (across / short) ** 2 <= 1.0
        inside &= (owner[y0:y1, x0:x1] == cell) & ~membrane[y0:y1, x0:x1]
        cristae = 30.0 * (np.sin(2 * np.pi * along / period) > 0.2)  # light stripes across the long axis
        body[y0:y1, x0:x1] |= inside
        grey[y0:y1, x0:x1] = np.where(inside, base + cristae, grey[y0:y1, x0:x1])
    return body, grey


def generate_volume(num_slices: int = 30, size: int = 512, seed: int = 0,
                    num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels), each (num_slices, size, size) uint8; 2 or 3 classes (see the module's text)."""
    if num_classes not in (2, 3):
        raise ValueError(f"the synthetic EM data has 2 or 3 classes, not {num_classes}")
    rng = np.random.default_rng(seed)
    organelle_rng = np.random.default_rng([seed, 3])  # its own stream: two-class stacks stay as they were
    num_cells = max(4, round(size * size / CELL_AREA))
    points = rng.uniform(0, size, (num_cells, 2)).astype(np.float32)
    drift = rng.normal(0, 1.2, (num_cells, 2)).astype(np.float32)
    weights = rng.uniform(0, 6, num_cells).astype(np.float32)  # unequal cell sizes
    cell_grey = rng.uniform(135, 205, num_cells)
    images = np.empty((num_slices, size, size), np.uint8)
    labels = np.empty((num_slices, size, size), np.uint8)
    for index in range(num_slices):
        points = np.mod(points + drift + rng.normal(0, 0.5, points.shape), size).astype(np.float32)
        warp = 7 * np.stack([_smooth_noise(rng, size, 10), _smooth_noise(rng, size, 10)])
        owner, first, second = _nearest_two(points, weights, warp, size)
        # Half the gap between the two nearest weighted distances ~ distance to the cell border.
        border_distance = (second - first) / 2
        half_width = 1.4 + 0.7 * np.clip(_smooth_noise(rng, size, 12) + 1.0, 0, 3)  # 1.4 .. 3.5 px
        membrane = border_distance < half_width
        if num_classes == 2:
            labels[index] = np.where(membrane, 0, 255)
            images[index] = _render(rng, owner, membrane, cell_grey, size)
            continue
        organelles = _mitochondria(organelle_rng, points, owner, membrane, size)
        labels[index] = np.where(membrane, 0, np.where(organelles[0], 2, 1))
        images[index] = _render(rng, owner, membrane, cell_grey, size, organelles)
    return images, labels


def _render(rng: np.random.Generator, owner: np.ndarray, membrane: np.ndarray, cell_grey: np.ndarray,
            size: int, organelles: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    image = cell_grey[owner] + 14 * _smooth_noise(rng, size, 3) + 8 * _smooth_noise(rng, size, 1)
    # Vesicles and organelles: dark round blobs inside cells (label stays "cell").
    blobs = np.zeros((size, size))
    count = rng.poisson(size * size / 2500)
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(2, 7, count)
    ys, xs = np.ogrid[0:size, 0:size]
    for (cy, cx), radius in zip(centres, radii, strict=True):
        y0, y1 = int(max(cy - radius - 1, 0)), int(min(cy + radius + 2, size))
        x0, x1 = int(max(cx - radius - 1, 0)), int(min(cx + radius + 2, size))
        disk = (ys[y0:y1] - cy) ** 2 + (xs[:, x0:x1] - cx) ** 2 <= radius**2
        blobs[y0:y1, x0:x1] = np.maximum(blobs[y0:y1, x0:x1], disk * rng.uniform(35, 75))
    image = image - blobs
    if organelles is not None:  # painted before blur and noise, like everything else
        body, grey = organelles
        image = np.where(body, grey, image)
    image = np.where(membrane, rng.uniform(45, 75) + 10 * _smooth_noise(rng, size, 2), image)
    image = _blur(image, rng.uniform(0.8, 1.4)) + rng.normal(0, 9, (size, size))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
