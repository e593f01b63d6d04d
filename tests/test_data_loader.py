"""The tf.data streams on the real ISBI stacks, and the loader's errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from common.errors import UserInputError
from data_loading.data_loader import Dataset, StreamOptions, SyntheticDataset


def test_streams_on_real_data(isbi_dir):
    data = Dataset.isbi(isbi_dir, StreamOptions(batch_size=2, seed=123), fold=0)
    assert (data.train_size, data.eval_size) == (24, 6)
    assert sum(volume.images.shape[0] for volume in data.test_volumes) == 30
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
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


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


def break_isbi(folder: Path, case: str) -> Path:
    """Spoil a copy of the ISBI files one way; the data dir to hand the loader."""
    volume, labels = folder / "train-volume.tif", folder / "train-labels.tif"
    if case == "truncated TIFF":
        volume.write_bytes(volume.read_bytes()[:5000])
    elif case == "garbage TIFF":
        volume.write_bytes(b"II*\x00 not really a tiff")
    elif case == "empty stack":
        volume.write_bytes(b"")
    elif case == "colour stack":
        tifffile.imwrite(volume, np.zeros((30, 64, 64, 3), np.uint8), photometric="rgb")
    elif case == "complex stack":
        tifffile.imwrite(volume, np.zeros((30, 64, 64), np.complex64))
    elif case == "NaN in a float stack":
        values = np.zeros((30, 512, 512), np.float32)
        values[7, 1, 2] = np.nan
        tifffile.imwrite(volume, values)
    elif case == "float labels":
        tifffile.imwrite(labels, tifffile.imread(labels).astype(np.float32))
    elif case == "labels not two-valued":
        values = np.arange(30 * 512 * 512, dtype=np.uint32) % 7
        tifffile.imwrite(labels, values.reshape(30, 512, 512).astype(np.uint8))
    elif case == "count differs":
        tifffile.imwrite(labels, np.zeros((29, 512, 512), np.uint8))
    elif case == "size differs":
        tifffile.imwrite(labels, np.zeros((30, 256, 256), np.uint8))
    elif case == "missing file":
        (folder / "test-volume.tif").unlink()
    elif case == "data dir is a file":
        return volume
    elif case == "missing data dir":
        return folder / "nowhere"
    else:
        raise AssertionError(case)
    return folder


BAD_ISBI = {
    "truncated TIFF": "cannot read", "garbage TIFF": "cannot read", "empty stack": "cannot read",
    "colour stack": "stack of grey slices", "complex stack": "integer or float grey values",
    "NaN in a float stack": "NaN or infinite values .slice 7.", "float labels": "labels must be integer class ids",
    "labels not two-valued": "must be two-valued", "count differs": "differ", "size differs": "differ",
    "missing file": "data file not found: .*test-volume.tif", "data dir is a file": "not a folder",
    "missing data dir": "data dir not found",
}


@pytest.mark.parametrize("case", BAD_ISBI)
def test_bad_stacks_are_named_in_one_line(isbi_copy, case):
    """Every way the recipe's files can be bad, at the loader; tests/test_cli.py shows one of them through the CLI."""
    data_dir = break_isbi(isbi_copy, case)
    with pytest.raises(UserInputError, match=BAD_ISBI[case]) as error:
        Dataset.isbi(data_dir, StreamOptions(batch_size=1, seed=0), fold=0)
    assert "\n" not in str(error.value)
