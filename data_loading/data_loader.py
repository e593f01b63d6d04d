"""tf.data streams for training, evaluation, prediction and synthetic benchmarking."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from data_loading import preprocessing as pre
from data_loading.input_paths import check_input
from data_loading.tiff_io import read_stack
from runtime.errors import UserInputError

TRAIN_IMAGES = "train-volume.tif"
TRAIN_LABELS = "train-labels.tif"
TEST_IMAGES = "test-volume.tif"
TRAIN_RATIO = 0.8


def fold_indices(num_slices: int, fold: int | None, seed: int,
                 scheme: str = "original") -> tuple[np.ndarray, np.ndarray]:
    """Training and validation slice indices of one cross-validation fold.

    ``original`` reproduces the recipe index for index: a permutation drawn
    from NumPy's legacy Mersenne Twister seeded with ``seed``, rotated right by
    ``fold * int((1 - 0.8) * n)``, first ``int(0.8 * n)`` for training. The
    float arithmetic makes the step 5 rather than 6 for n = 30, so consecutive
    validation sets share a slice. ``disjoint`` cuts the same permutation into
    five near-equal parts, one held out per fold.
    """
    order = np.arange(num_slices)
    np.random.RandomState(seed).shuffle(order)
    if fold is None:
        return order, np.array([], dtype=order.dtype)
    if scheme == "disjoint":
        parts = np.array_split(order, 5)
        return np.concatenate(parts[:fold] + parts[fold + 1:]), parts[fold]
    order = np.roll(order, fold * int((1.0 - TRAIN_RATIO) * num_slices))
    split = int(TRAIN_RATIO * num_slices)
    return order[:split], order[split:]


def binary_labels(labels: np.ndarray, notes: list[str]) -> np.ndarray:
    """Labels as 0 (membrane) / 255 (cell); 0/1 labels are accepted and scaled."""
    values = np.unique(labels)
    if set(values.tolist()) <= {0, 255}:
        return labels
    if set(values.tolist()) <= {0, 1}:
        notes.append("labels hold 0/1: read 1 as cell (255)")
        return labels * np.uint8(255)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise UserInputError(f"{TRAIN_LABELS} must be two-valued (0 = membrane, 255 or 1 = cell); "
                         f"it holds {len(values)} values: {shown}")


@dataclass(frozen=True)
class StreamOptions:
    """How the streams are built on this worker and device."""

    batch_size: int
    seed: int
    augment: bool = True
    rank: int = 0
    num_workers: int = 1
    parallel_map: bool = False  # parallel (and deterministic) preprocessing: on Gaudi2, as in the recipe
    prefetch_device: str | None = None  # "/device:HPU:0" on Gaudi


class _Streams:
    """Batching, sharding and prefetching shared by the real and synthetic data."""

    def __init__(self, options: StreamOptions) -> None:
        self.options = options

    def _prefetch(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        device = self.options.prefetch_device
        if device is not None:
            with tf.device(device):
                return dataset.apply(tf.data.experimental.prefetch_to_device(device))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _map(self, dataset: tf.data.Dataset, function) -> tf.data.Dataset:
        if not self.options.parallel_map:
            return dataset.map(function)
        return dataset.map(function, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class Dataset(_Streams):
    """The ISBI 2012 stacks in ``data_dir`` split into one fold's training and validation slices."""

    def __init__(self, data_dir: Path, options: StreamOptions, fold: int | None,
                 fold_scheme: str = "original", need_train: bool = True, need_test: bool = True) -> None:
        super().__init__(options)
        data_dir = check_input(Path(data_dir), "data dir", "folder")
        self.train_indices = self.val_indices = np.array([], dtype=np.int64)
        self._images = self._labels = self._test = None
        self.notes: list[str] = []  # what the loader did to accept the data, for the log
        if need_train:
            self._images = read_stack(data_dir / TRAIN_IMAGES)
            self._labels = binary_labels(read_stack(data_dir / TRAIN_LABELS), self.notes)
            if self._images.shape != self._labels.shape:
                raise UserInputError(
                    f"{TRAIN_IMAGES} and {TRAIN_LABELS} differ: {self._images.shape} "
                    f"vs {self._labels.shape} (slices, height, width)")
            self.train_indices, self.val_indices = fold_indices(len(self._images), fold, options.seed,
                                                                fold_scheme)
        if need_test:
            self._test = read_stack(data_dir / TEST_IMAGES)

    @property
    def train_size(self) -> int:
        return len(self.train_indices)

    @property
    def eval_size(self) -> int:
        return len(self.val_indices)

    @property
    def test_size(self) -> int:
        return 0 if self._test is None else len(self._test)

    @property
    def test_images(self) -> np.ndarray:
        """The test volume as read: uint8 (slices, height, width)."""
        return self._test

    def validation_slices(self) -> tuple[np.ndarray, np.ndarray]:
        """The fold's validation images and 0/255 labels at full resolution, for the challenge scores."""
        return self._images[self.val_indices], self._labels[self.val_indices]

    def _normalized_pairs(self, indices: np.ndarray) -> tf.data.Dataset:
        pairs = tf.data.Dataset.from_tensor_slices((self._images[indices], self._labels[indices]))
        return pairs.map(lambda image, label: (pre.normalize_image(image), pre.normalize_label(label)))

    def train_fn(self, start_step: int = 0, shard: int | None = None) -> tf.data.Dataset:
        """Endless, shuffled, augmented batches of one replica's shard, from batch ``start_step`` on.

        ``shard`` is the replica's index among ``options.num_workers`` shards
        (default ``options.rank``): every replica reads its own slices with its
        own augmentation stream.

        Sample i of the stream is slice ``order_e[i mod n]`` of epoch ``e = i div n``
        (a fresh seeded permutation each epoch), augmented with the stateless
        seed (run seed, i). Batch k is therefore a pure function of the seed and
        k, and a resumed run replays exactly what an uninterrupted one would
        have seen, without re-reading the batches before it.
        """
        opts = self.options
        shard = opts.rank if shard is None else shard
        indices = self.train_indices[shard::opts.num_workers]
        images = tf.stack([pre.normalize_image(image) for image in self._images[indices]])
        labels = tf.stack([pre.normalize_label(label) for label in self._labels[indices]])
        count = tf.constant(len(indices), tf.int64)
        seed = tf.constant(opts.seed + 7919 * shard, tf.int64)  # each replica its own draws

        def sample(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            epoch, position = index // count, index % count
            order = tf.argsort(tf.random.stateless_uniform([count], tf.stack([seed, -1 - epoch])))
            chosen = order[position]
            image, label = images[chosen], labels[chosen]
            if opts.augment:
                image, label = pre.augment(image, label, tf.stack([seed, index]))
            return image, pre.crop_label(label)

        first_sample = start_step * opts.batch_size
        dataset = self._map(tf.data.Dataset.range(first_sample, 2**62), sample)
        return self._prefetch(dataset.batch(opts.batch_size, drop_remainder=True))

    def eval_fn(self, count: int = 1) -> tf.data.Dataset:
        if self.eval_size == 0:
            raise UserInputError("no validation slices: evaluation needs --fold")
        dataset = self._normalized_pairs(self.val_indices).repeat(count)
        dataset = self._map(dataset, lambda image, label: (image, pre.crop_label(label)))
        return self._prefetch(dataset.batch(self.options.batch_size))

    def test_fn(self, count: int | None = 1, drop_remainder: bool = False) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices(self._test).repeat(count)
        dataset = self._map(dataset, pre.normalize_image)
        return self._prefetch(dataset.batch(self.options.batch_size, drop_remainder=drop_remainder))

    def describe_split(self) -> dict[str, object]:
        described: dict[str, object] = {"train_slices": self.train_indices.tolist(),
                                        "val_slices": self.val_indices.tolist()}
        if self._images is not None:
            described["slice_size"] = list(self._images.shape[1:])
        if self.notes:
            described["notes"] = "; ".join(self.notes)
        return described


class SyntheticDataset(_Streams):
    """One fixed random image and mask, repeated: a benchmark without data files.

    Like the recipe, the image is not normalised (values around 127.5) and the
    mask is a smooth random field, not a one-hot label.
    """

    train_size = 1
    eval_size = 6
    test_size = 30

    def __init__(self, options: StreamOptions) -> None:
        super().__init__(options)
        seed = options.seed
        self._image = tf.random.stateless_truncated_normal(
            (pre.INPUT_SIZE, pre.INPUT_SIZE, 1), seed=[seed, 0], mean=127.5, stddev=1.0)
        self._mask = tf.random.stateless_truncated_normal(
            (pre.OUTPUT_SIZE, pre.OUTPUT_SIZE, pre.NUM_CLASSES), seed=[seed, 1], mean=0.01, stddev=0.1)
        self.train_indices = np.array([], dtype=np.int64)
        self.val_indices = np.array([], dtype=np.int64)

    def train_fn(self, start_step: int = 0, shard: int | None = None) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensors((self._image, self._mask)).cache().repeat()
        return self._prefetch(dataset.batch(self.options.batch_size, drop_remainder=True))

    def eval_fn(self, count: int = 1) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensors((self._image, self._mask)).repeat(self.eval_size * count)
        return self._prefetch(dataset.batch(self.options.batch_size))

    @property
    def test_images(self) -> np.ndarray:
        """A grey stand-in test volume, so predict runs end to end without data files."""
        return np.full((self.test_size, 512, 512), 128, np.uint8)

    def test_fn(self, count: int | None = 1, drop_remainder: bool = False) -> tf.data.Dataset:
        repeats = None if count is None else self.test_size * count
        dataset = tf.data.Dataset.from_tensors(self._image).repeat(repeats)
        return self._prefetch(dataset.batch(self.options.batch_size, drop_remainder=drop_remainder))

    def describe_split(self) -> dict[str, list[int]]:
        return {"train_slices": [], "val_slices": []}
