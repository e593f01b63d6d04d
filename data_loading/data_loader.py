"""tf.data streams for training, evaluation, prediction and synthetic benchmarking."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.errors import UserInputError
from common.geometry import INPUT_SIZE, NUM_CLASSES, OUTPUT_SIZE
from data_loading import preprocessing as pre
from data_loading.border_weights import training_weight_maps
from data_loading.input_paths import check_input
from data_loading.intensity import IntensityWindow, fit_window, map_volumes
from data_loading.memory import MemoryNeeds, slice_working_bytes
from data_loading.tiles import SliceRef, TileSampler, corners, covered_size, read_crop, slice_refs
from data_loading.volume_reader import ArrayVolume
from data_loading.volumes import (
    StackFile,
    Volume,
    in_memory,
    plan_pairs,
    plan_stacks,
    read_labelled,
    read_unlabelled,
)

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


@dataclass(frozen=True)
class StreamOptions:
    """How the streams are built on this worker and device."""

    batch_size: int
    seed: int
    augment: bool = True
    elastic_sigma: float = 0.0  # pixels; 0: no elastic deformation (the recipe)
    elastic_grid: int = 3
    border_w0: float = 0.0  # the U-Net paper's border weight (data_loading/border_weights.py); 0: none
    border_sigma: float = 5.0  # pixels of the label images
    border_balance: bool = True  # w_c balances the class frequencies (the paper's); False: w_c = 1
    rank: int = 0
    num_workers: int = 1
    parallel_map: bool = False  # parallel (and deterministic) preprocessing: on Gaudi2, as in the recipe
    prefetch_device: str | None = None  # "/device:HPU:0" on Gaudi


def _options_without_autotuner() -> tf.data.Options:
    """tf.data options without the autotuner.

    With it, dropping a training iterator sometimes waited idle in tf.data's
    thread-pool shutdown, 2-3.6 s in three of five small runs: at every
    training run's end and after every stop signal (never in five runs without
    it; docs/design.md). Without the autotuner a parallel map keeps min(16, CPU
    cores) calls and a prefetch buffer still grows when the consumer waits,
    which is all these streams need.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


WITHOUT_AUTOTUNER = _options_without_autotuner()


class _Streams:
    """Batching, sharding and prefetching shared by the real and synthetic data."""

    def __init__(self, options: StreamOptions) -> None:
        self.options = options

    def _prefetch(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        dataset = dataset.with_options(WITHOUT_AUTOTUNER)  # inherited by what follows; device prefetch stays last
        device = self.options.prefetch_device
        if device is not None:
            with tf.device(device):
                return dataset.apply(tf.data.experimental.prefetch_to_device(device))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _map(self, dataset: tf.data.Dataset, function) -> tf.data.Dataset:
        if not self.options.parallel_map:
            return dataset.map(function)
        return dataset.map(function, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def isbi_train(data_dir: str | Path) -> list[tuple[StackFile, StackFile]]:
    """The recipe's training pair in ``data_dir``."""
    data_dir = check_input(Path(data_dir), "data dir", "folder")
    return plan_pairs([str(data_dir / TRAIN_IMAGES)], [str(data_dir / TRAIN_LABELS)], "data file", "data file")


def isbi_test(data_dir: str | Path) -> list[StackFile]:
    """The recipe's test volume in ``data_dir``."""
    return plan_stacks([str(check_input(Path(data_dir), "data dir", "folder") / TEST_IMAGES)], "data file")


@dataclass(frozen=True)
class DataSources:
    """The stacks a run reads, planned and checked from their headers (see data_loading/volumes.py)."""

    train: list[tuple[StackFile, StackFile]] = field(default_factory=list)  # (images, labels) per volume
    val: list[tuple[StackFile, StackFile]] = field(default_factory=list)  # a fixed validation set, if given
    test: list[StackFile] = field(default_factory=list)

    def memory_needs(self, num_classes: int, border_weights: bool = False, tta: bool = False) -> MemoryNeeds:
        """What the stacks take in memory and streamed (estimates, on the high side; docs/data.md).

        In memory: every image as uint8, every label as uint8 class ids, the
        border weight maps as float32, plus the largest label volume once more
        while it is read and checked (as stored, and sorted for its values).
        Both ways: one slice at a time at full size while it is predicted or
        scored (``slice_working_bytes``).
        """
        labelled = [stack for pair in self.train + self.val for stack in pair]
        images = [image for image, _ in self.train + self.val] + self.test
        labels = [label for _, label in self.train + self.val]
        resident = sum(math.prod(stack.shape) for stack in images + labels)
        loading = max((2 * stack.reader.nbytes for stack in labels), default=0)
        weights = sum(4 * math.prod(image.shape) for image, _ in self.train) if border_weights else 0
        largest = max((math.prod(stack.shape[1:]) for stack in labelled + self.test), default=0)
        working = slice_working_bytes(largest, num_classes, tta)
        unstreamable = None
        if border_weights and self.train:
            unstreamable = (f"--border_weights keeps a weight map of every training slice in memory "
                            f"({weights / 2**30:.1f} GiB here)")
        return MemoryNeeds(resident + loading + weights + working, working, unstreamable)


def _slice_refs(volumes: list[Volume]) -> list[tuple[SliceRef, SliceRef]]:
    """Every volume's (image, label) slices, in order: one global slice index over all volumes."""
    return [((volume.images, z), (volume.labels, z)) for volume in volumes for z in range(volume.images.shape[0])]


@contextmanager
def read_errors_in_one_line() -> Iterator[None]:
    """A volume's one-line error raised while a tf.data stream read it (``tf.numpy_function`` wraps it in a
    TensorFlow error with its traceback) as that one line again."""
    try:
        yield
    except tf.errors.OpError as error:
        marker = f"{UserInputError.__name__}: "
        text = getattr(error, "message", None) or str(error)
        if marker not in text:
            raise
        raise UserInputError(text.split(marker, 1)[1].strip().splitlines()[0]) from None


class Dataset(_Streams):
    """Labelled training stacks split into one fold's training and validation slices, and test stacks.

    Folds split the slices of all training volumes together, numbered in the
    order the volumes were given, as they split ISBI's 30. A fixed validation
    set (``--val_images``) replaces the fold's. ``input_mode`` is how slices
    become 572x572 inputs: ``resize`` (the recipe's) or ``tile`` (full
    resolution crops, data_loading/tiles.py).

    Volumes stay readers (data_loading/volume_reader.py): in memory as uint8
    arrays when ``keep_in_memory``, else read from their stores a tile or a
    slice at a time as the streams draw them. Images that are not 8-bit are
    mapped to 8 bits by ``window`` (the model's, kept in its model dir) or,
    without one, by the window the training images give
    (data_loading/intensity.py); ``self.window`` is the one used.
    """

    def __init__(self, sources: DataSources, options: StreamOptions, fold: int | None,
                 fold_scheme: str = "original", input_mode: str = "resize", num_classes: int = NUM_CLASSES,
                 split_seed: int | None = None, window: IntensityWindow | None = None,
                 keep_in_memory: bool = True) -> None:
        super().__init__(options)
        self.input_mode, self.num_classes, self.keep_in_memory = input_mode, num_classes, keep_in_memory
        self.train_volumes = read_labelled(sources.train, num_classes, keep_in_memory)
        self.val_volumes = read_labelled(sources.val, num_classes, keep_in_memory)
        self.test_volumes = read_unlabelled(sources.test)
        self.window, intensity_notes = self._map_to_eight_bits(window)
        self._slices = _slice_refs(self.train_volumes)
        self.split_seed = options.seed if split_seed is None else split_seed  # the recipe: --seed draws the split
        self.train_indices, self.val_indices = fold_indices(len(self._slices), None if sources.val else fold,
                                                            self.split_seed, fold_scheme)
        if not self._slices:
            self.train_indices = self.val_indices = np.array([], dtype=np.int64)
        self._val_slices = self._slices
        if sources.val:
            self._val_slices = _slice_refs(self.val_volumes)
            self.val_indices = np.arange(len(self._val_slices))
        self.notes = [volume.note for volume in self.train_volumes + self.val_volumes if volume.note]
        self.notes += intensity_notes

    def _map_to_eight_bits(self, window: IntensityWindow | None) -> tuple[IntensityWindow | None, list[str]]:
        """Every volume's images as uint8, by ``window`` or the training images' own (fitted on a sample of
        their chunks); read into memory here if the volumes stay there. The window and notes."""
        volumes = self.train_volumes + self.val_volumes + self.test_volumes
        if window is None:
            window = fit_window([volume.images for volume in self.train_volumes], "the training images")
        mapped, notes = map_volumes([volume.images for volume in volumes], window)
        for volume, images in zip(volumes, mapped, strict=True):
            volume.images = in_memory(images) if self.keep_in_memory else images
        return window, notes

    @classmethod
    def isbi(cls, data_dir: str | Path, options: StreamOptions, fold: int | None, fold_scheme: str = "original",
             need_train: bool = True, need_test: bool = True, **kwargs) -> Dataset:
        """The recipe's three files in ``data_dir``."""
        sources = DataSources(isbi_train(data_dir) if need_train else [], [],
                              isbi_test(data_dir) if need_test else [])
        return cls(sources, options, fold, fold_scheme, **kwargs)

    @property
    def train_size(self) -> int:
        return len(self.train_indices)

    @property
    def eval_size(self) -> int:
        return len(self.val_indices)

    def validation_slices(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The validation images and their class ids at full resolution, one slice at a time (a volume on disk
        is read as they are scored, never held whole)."""
        for index in self.val_indices:
            (images, z), (labels, _) = self._val_slices[index]
            yield images.read(z), labels.read(z)

    def train_fn(self, start_step: int = 0, shard: int | None = None) -> tf.data.Dataset:
        """Endless, shuffled, augmented batches of one replica's shard, from batch ``start_step`` on.

        ``shard`` is the replica's index among ``options.num_workers`` shards
        (default ``options.rank``): every replica reads its own slices with its
        own augmentation stream.

        Sample i of the stream is slice ``order_e[i mod n]`` of epoch ``e = i div n``
        (a fresh seeded permutation each epoch), cropped (tile mode) and
        augmented with stateless draws keyed by (run seed, i). Batch k is
        therefore a pure function of the seed and k, and a resumed run replays
        exactly what an uninterrupted one would have seen, without re-reading
        the batches before it.
        """
        opts = self.options
        shard = opts.rank if shard is None else shard
        indices = self.train_indices[shard::opts.num_workers]
        if len(indices) == 0:
            raise UserInputError(f"{self.train_size} training slice(s) cannot feed {opts.num_workers} replicas: "
                                 "every replica needs at least one")
        count = tf.constant(len(indices), tf.int64)
        seed = tf.constant(opts.seed + 7919 * shard, tf.int64)  # each replica its own draws
        weighted = opts.border_w0 > 0  # each label then carries its weight map as a last channel
        weights = self._weight_maps(indices) if weighted else None
        pick = self._tile_picker(indices, weights) if self.input_mode == "tile" else self._resized_picker(indices,
                                                                                                          weights)

        def sample(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            epoch, position = index // count, index % count
            order = tf.argsort(tf.random.stateless_uniform([count], tf.stack([seed, -1 - epoch])))
            image, label, augment_seed = pick(order[position], tf.stack([seed, index]))
            if opts.augment:
                image, label = pre.augment(image, label, augment_seed, opts.elastic_sigma, opts.elastic_grid,
                                           weighted)
            return image, pre.crop_label(label, weighted)

        first_sample = start_step * opts.batch_size
        dataset = self._map(tf.data.Dataset.range(first_sample, 2**62), sample)
        return self._prefetch(dataset.batch(opts.batch_size, drop_remainder=True))

    def _weight_maps(self, indices: np.ndarray) -> tuple[list[SliceRef], float]:
        """The border weight map of each of these training slices (in memory), and the membrane's class weight."""
        if not self.keep_in_memory:
            raise UserInputError("--border_weights keeps a weight map of every training slice in memory; it does "
                                 "not stream (--volume_loading stream)")
        labels = [labels.read(z) for _, (labels, z) in (self._slices[i] for i in indices)]
        maps, w_c = training_weight_maps(labels, self.num_classes, self.options.border_w0,
                                         self.options.border_sigma, self.options.border_balance)
        return slice_refs(maps), float(w_c[0])

    def _picked(self, indices: np.ndarray) -> tuple[list[SliceRef], list[SliceRef]]:
        chosen = [self._slices[i] for i in indices]
        return [image for image, _ in chosen], [label for _, label in chosen]

    def _resized_picker(self, indices: np.ndarray, weights: tuple[list[SliceRef], float] | None = None):
        """The recipe's: the whole slice, resized to 388 and padded to 572 (read when drawn, one at a time)."""
        images, labels = self._picked(indices)
        sources = [images, labels] + ([weights[0]] if weights is not None else [])
        types = [tf.uint8, tf.uint8] + ([tf.float32] if weights is not None else [])

        def read(chosen: np.ndarray) -> list[np.ndarray]:
            return [reader.read(z) for reader, z in (refs[int(chosen)] for refs in sources)]

        def pick(chosen: tf.Tensor, sample_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            slices = tf.numpy_function(read, [chosen], types, stateful=False)
            for piece in slices:
                piece.set_shape([None, None])
            image, label = pre.normalize_image(slices[0]), pre.normalize_label(slices[1], self.num_classes)
            if weights is not None:  # padded with the membrane's weight, as the labels are with membrane
                label = tf.concat([label, pre.normalize_weights(slices[2], weights[1])], axis=-1)
            return image, label, sample_seed
        return pick

    def _tile_picker(self, indices: np.ndarray, weights: tuple[list[SliceRef], float] | None = None):
        """A random full-resolution 572x572 crop of the slice, its label aligned, both with mirrored context."""
        images, labels = self._picked(indices)
        tiles = TileSampler(images, labels, None if weights is None else weights[0])

        def pick(chosen: tf.Tensor, sample_seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            crop_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(sample_seed, 2))
            crops = tiles.crop(tf.cast(chosen, tf.int32), tiles.offset(chosen, crop_seed))
            image, label = self._tile_pair(*crops[:2])
            if tiles.weighted:
                label = tf.concat([label, crops[2][..., tf.newaxis]], axis=-1)
            return image, label, augment_seed
        return pick

    def _tile_pair(self, image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """uint8 image and class-id tiles -> the network's normalised input and one-hot labels."""
        return pre.scale_intensity(image)[..., tf.newaxis], tf.one_hot(tf.cast(label, tf.int32), self.num_classes)

    def eval_fn(self, count: int = 1) -> tf.data.Dataset:
        """The validation slices (resize) or their full-resolution tiles (tile), with their 388x388 labels,
        each read from its volume as the stream reaches it."""
        if self.eval_size == 0:
            raise UserInputError("no validation slices: evaluation needs --fold or --val_images")
        chosen = [self._val_slices[i] for i in self.val_indices]
        if self.input_mode == "tile":
            places = [(index, top, left) for index, ((reader, _), _) in enumerate(chosen)
                      for top, left in corners(*covered_size(reader.shape[1:]))]

            def read_tile(place: np.ndarray) -> list[np.ndarray]:
                index, top, left = (int(v) for v in place)
                image_ref, label_ref = chosen[index]
                return [read_crop(image_ref, top, left, INPUT_SIZE),
                        read_crop(label_ref, top, left, OUTPUT_SIZE, context=0)]

            def tile(place: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                image, label = tf.numpy_function(read_tile, [place], [tf.uint8, tf.uint8], stateful=False)
                image.set_shape([INPUT_SIZE, INPUT_SIZE])
                label.set_shape([OUTPUT_SIZE, OUTPUT_SIZE])
                return self._tile_pair(image, label)
            dataset = self._map(tf.data.Dataset.from_tensor_slices(np.array(places, np.int64)).repeat(count), tile)
        else:
            def read_slice(index: np.ndarray) -> list[np.ndarray]:
                (images, z), (labels, _) = chosen[int(index)]
                return [images.read(z), labels.read(z)]

            def whole(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                image, label = tf.numpy_function(read_slice, [index], [tf.uint8, tf.uint8], stateful=False)
                image.set_shape([None, None])
                label.set_shape([None, None])
                return (pre.normalize_image(image),
                        pre.crop_label(pre.normalize_label(label, self.num_classes)))
            indices = tf.data.Dataset.range(len(chosen)).repeat(count)
            dataset = self._map(indices, whole)
        return self._prefetch(dataset.batch(self.options.batch_size))

    def test_fn(self, count: int | None = 1, drop_remainder: bool = False) -> tf.data.Dataset:
        """Network inputs of the test slices (whole resized slices, or tiles), for timing prediction."""
        slices = [(volume.images, z) for volume in self.test_volumes for z in range(volume.images.shape[0])]
        if self.input_mode == "tile":
            places = [(index, top, left) for index, (reader, _) in enumerate(slices)
                      for top, left in corners(*covered_size(reader.shape[1:]))]

            def read_tile(place: np.ndarray) -> np.ndarray:
                index, top, left = (int(v) for v in place)
                return read_crop(slices[index], top, left, INPUT_SIZE)

            def tile(place: tf.Tensor) -> tf.Tensor:
                image = tf.numpy_function(read_tile, [place], tf.uint8, stateful=False)
                image.set_shape([INPUT_SIZE, INPUT_SIZE])
                return pre.scale_intensity(image)[..., tf.newaxis]
            dataset = self._map(tf.data.Dataset.from_tensor_slices(np.array(places, np.int64)).repeat(count), tile)
        else:
            def read_slice(index: np.ndarray) -> np.ndarray:
                reader, z = slices[int(index)]
                return reader.read(z)

            def whole(index: tf.Tensor) -> tf.Tensor:
                image = tf.numpy_function(read_slice, [index], tf.uint8, stateful=False)
                image.set_shape([None, None])
                return pre.normalize_image(image)
            dataset = self._map(tf.data.Dataset.range(len(slices)).repeat(count), whole)
        return self._prefetch(dataset.batch(self.options.batch_size, drop_remainder=drop_remainder))

    def describe_split(self) -> dict[str, object]:
        described: dict[str, object] = {"train_slices": self.train_indices.tolist(),
                                        "val_slices": self.val_indices.tolist(),
                                        "split_seed": self.split_seed, "input_mode": self.input_mode,
                                        "num_classes": self.num_classes}
        if self._slices:
            described["slice_size"] = list(self._slices[0][0][0].shape[1:])
        volumes = self.train_volumes + self.val_volumes + self.test_volumes
        if any(volume.source.name not in (TRAIN_IMAGES, TEST_IMAGES) for volume in volumes):  # the recipe's need none
            described["volumes"] = [{"images": str(volume.source), "slices": volume.images.shape[0],
                                     "size": list(volume.images.shape[1:])} for volume in volumes]
        if not self.keep_in_memory:
            described["volume_loading"] = "stream"
        if self.window is not None:
            described["intensity"] = self.window.describe()
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
    window = None  # generated 8-bit values: nothing to map

    def __init__(self, options: StreamOptions, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(options)
        seed = options.seed
        self._image = tf.random.stateless_truncated_normal(
            (INPUT_SIZE, INPUT_SIZE, 1), seed=[seed, 0], mean=127.5, stddev=1.0)
        self._mask = tf.random.stateless_truncated_normal(
            (OUTPUT_SIZE, OUTPUT_SIZE, num_classes), seed=[seed, 1], mean=0.01, stddev=0.1)
        self.train_indices = np.array([], dtype=np.int64)
        self.val_indices = np.array([], dtype=np.int64)

    def train_fn(self, start_step: int = 0, shard: int | None = None) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensors((self._image, self._mask)).cache().repeat()
        return self._prefetch(dataset.batch(self.options.batch_size, drop_remainder=True))

    def eval_fn(self, count: int = 1) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensors((self._image, self._mask)).repeat(self.eval_size * count)
        return self._prefetch(dataset.batch(self.options.batch_size))

    @property
    def test_volumes(self) -> list[Volume]:
        """A grey stand-in test volume, so predict runs end to end without data files."""
        images = ArrayVolume(np.full((self.test_size, 512, 512), 128, np.uint8), "synthetic")
        return [Volume(images, None, Path("synthetic"), [f"test_{index:03d}" for index in range(self.test_size)])]

    def test_fn(self, count: int | None = 1, drop_remainder: bool = False) -> tf.data.Dataset:
        repeats = None if count is None else self.test_size * count
        dataset = tf.data.Dataset.from_tensors(self._image).repeat(repeats)
        return self._prefetch(dataset.batch(self.options.batch_size, drop_remainder=drop_remainder))

    def describe_split(self) -> dict[str, list[int]]:
        return {"train_slices": [], "val_slices": []}
