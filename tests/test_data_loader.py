"""The tf.data streams on the real ISBI stacks, and the loader's errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from data_loading.data_loader import Dataset, StreamOptions, SyntheticDataset
from runtime.errors import UserInputError


def test_streams_on_real_data(isbi_dir):
    data = Dataset.isbi(isbi_dir, StreamOptions(batch_size=2, seed=123), fold=0)
    assert (data.train_size, data.eval_size, data.test_size) == (24, 6, 30)
    images, labels = next(iter(data.train_fn()))
    assert images.shape == (2, 572, 572, 1) and labels.shape == (2, 388, 388, 2)
    assert set(np.unique(labels.numpy())) <= {0.0, 1.0}
    eval_batches = list(data.eval_fn(count=1))
    assert [int(b[0].shape[0]) for b in eval_batches] == [2, 2, 2]
    test_batches = list(data.test_fn(count=1))
    assert sum(int(b.shape[0]) for b in test_batches) == 30
    assert [volume.images.shape[1:] for volume in data.test_volumes] == [(512, 512)]


def test_training_stream_is_reproducible(isbi_dir):
    def first_batches(seed):
        data = Dataset.isbi(isbi_dir, StreamOptions(batch_size=1, seed=seed), fold=1, need_test=False)
        return [b[0].numpy() for b in data.train_fn().take(3)]
    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_workers_get_disjoint_shards(isbi_dir):
    def slices_seen(rank):
        data = Dataset.isbi(isbi_dir, StreamOptions(batch_size=1, seed=3, augment=False, rank=rank, num_workers=2),
                            fold=None, need_test=False)
        return {float(np.sum(b[0].numpy())) for b in data.train_fn().take(60)}
    first, second = slices_seen(0), slices_seen(1)
    assert len(first) == 15 and len(second) == 15 and not first & second


def test_synthetic_streams():
    data = SyntheticDataset(StreamOptions(batch_size=3, seed=0))
    images, masks = next(iter(data.train_fn()))
    assert images.shape == (3, 572, 572, 1) and masks.shape == (3, 388, 388, 2)
    assert abs(float(np.mean(images)) - 127.5) < 0.1


@pytest.mark.parametrize("name, stack, message", [
    ("train-volume.tif", np.zeros((4, 8, 8, 3), np.uint8), "stack of grey slices"),
    ("train-volume.tif", np.zeros((30, 64, 64), np.uint16), "8-bit"),
    ("train-labels.tif", np.zeros((29, 512, 512), np.uint8), "differ"),
    ("train-labels.tif", np.zeros((30, 256, 256), np.uint8), "differ"),
])
def test_bad_stacks_are_named(isbi_copy, name, stack, message):
    tifffile.imwrite(isbi_copy / name, stack)
    with pytest.raises(UserInputError, match=message):
        Dataset.isbi(isbi_copy, StreamOptions(batch_size=1, seed=0), fold=0)


def test_missing_and_garbage_files(isbi_copy, tmp_path):
    (isbi_copy / "test-volume.tif").unlink()
    with pytest.raises(UserInputError, match="data file not found: .*test-volume.tif"):
        Dataset.isbi(isbi_copy, StreamOptions(batch_size=1, seed=0), fold=0)
    (isbi_copy / "train-volume.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(UserInputError, match="cannot read"):
        Dataset.isbi(isbi_copy, StreamOptions(batch_size=1, seed=0), fold=0, need_test=False)
    with pytest.raises(UserInputError, match="data dir not found"):
        Dataset.isbi(tmp_path / "nowhere", StreamOptions(batch_size=1, seed=0), fold=0)
