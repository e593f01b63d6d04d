"""The offline demo dataset: deterministic, exact two-valued labels that match the image, usable by the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import download_dataset
from data_loading.synthetic_em import generate_volume
from runtime.parse_results import merged_data, read_log
from tests.conftest import run_cli


def test_deterministic_for_a_seed():
    a, b, c = generate_volume(2, 96, 5), generate_volume(2, 96, 5), generate_volume(2, 96, 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_labels_are_exact_and_match_the_image():
    images, labels = generate_volume(3, 256, 1)
    assert images.dtype == labels.dtype == np.uint8 and images.shape == labels.shape == (3, 256, 256)
    assert set(np.unique(labels)) == {0, 255}
    assert 0.65 < np.mean(labels == 255) < 0.9  # ISBI: about 0.78
    membrane, cell = images[labels == 0].astype(float), images[labels == 255].astype(float)
    assert cell.mean() - membrane.mean() > 50
    # Dark vesicles inside cells: some cell pixels are as dark as membranes (not a pure threshold task).
    assert np.mean(cell < np.median(membrane) + 20) > 0.002
    # Consecutive slices are similar (serial sections), unrelated slices are not.
    same = np.mean(labels[0] == labels[1])
    other = np.mean(labels[0] == generate_volume(1, 256, 99)[1][0])
    assert same > other


@pytest.mark.one_stack
@pytest.mark.slow
def test_cli_writes_files_the_training_cli_accepts(tmp_path):
    data = tmp_path / "demo"
    assert download_dataset.main(["--synthetic", "--data_dir", str(data), "--slices", "10", "--size", "128"]) == 0
    for name in ("train-volume.tif", "train-labels.tif", "test-volume.tif"):
        stack = tifffile.imread(data / name)
        assert stack.shape == (10, 128, 128) and stack.dtype == np.uint8
    result = run_cli("--data_dir", str(data), "--exec_mode", "train_and_evaluate", "--fold", "0", "--max_steps", "1",
                     "--batch_size", "1", "--disable_ckpt_saving", "--model_dir", str(tmp_path / "m"),
                     "--log_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "eval_dice_score" in merged_data(read_log(tmp_path / "log.json"), [])


def test_three_classes_add_mitochondria_and_leave_two_class_stacks_as_they_were():
    two_images, two_labels = generate_volume(2, 256, 3)
    images, labels = generate_volume(2, 256, 3, num_classes=3)
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels == 0, two_labels == 0)  # the same membranes
    assert 0.01 < np.mean(labels == 2) < 0.08  # organelles are a small class, as in real EM
    mitochondria, interior = images[labels == 2].astype(float), images[labels == 1].astype(float)
    assert interior.mean() - mitochondria.mean() > 30  # darker than the cell around them
    np.testing.assert_array_equal(generate_volume(2, 256, 3)[0], two_images)  # two classes: unchanged
    np.testing.assert_array_equal(generate_volume(2, 256, 3, num_classes=3)[1], labels)  # deterministic
