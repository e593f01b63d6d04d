"""The U-Net paper's border weight map against NumPy by hand, and its way through the pipeline and the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tifffile

from common.errors import UserInputError
from data_loading.border_weights import border_weight_map, class_weights, training_weight_maps
from data_loading.data_loader import Dataset, DataSources, StreamOptions
from data_loading.volumes import plan_pairs
from runtime.loop.losses import cross_entropy, partial_losses
from tests.conftest import run_main


def by_hand(ids: np.ndarray, balance: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula pixel by pixel: every distance to every pixel of every cell, sorted per pixel."""
    from scipy.ndimage import label

    cells, count = label(ids != 0)
    rows, cols = np.indices(ids.shape)
    per_cell = []
    for cell in range(1, count + 1):
        ys, xs = np.nonzero(cells == cell)
        d = np.sqrt((rows[..., None] - ys) ** 2 + (cols[..., None] - xs) ** 2).min(axis=-1)
        per_cell.append(d)
    weights = balance[ids].astype(np.float64)
    if count >= 2:
        d1, d2 = np.sort(np.stack(per_cell), axis=0)[:2]
        weights += w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return weights


def three_cells() -> np.ndarray:
    """Class ids: three cells of different shapes, membranes one and two pixels wide, a class-2 organelle."""
    ids = np.ones((14, 17), np.uint8)
    ids[:, 6] = 0  # a 1-pixel membrane
    ids[7:9, 7:] = 0  # a 2-pixel membrane splitting the right half
    ids[2:4, 2:4] = 2  # inside the left cell
    ids[0, :] = 0
    return ids


def test_two_cells_across_a_one_pixel_membrane():
    """On the membrane, d1 = d2 = 1: w = w_c(membrane) + w0 exp(-4 / (2 sigma^2))."""
    ids = np.ones((6, 11), np.uint8)
    ids[:, 5] = 0
    balance = class_weights([ids], 2)
    weights = border_weight_map(ids, balance, w0=10.0, sigma=5.0)
    assert weights[3, 5] == pytest.approx(balance[0] + 10.0 * math.exp(-4 / 50), rel=1e-6)
    assert weights[3, 4] == pytest.approx(balance[1] + 10.0 * math.exp(-4 / 50), rel=1e-6)  # d1 = 0, d2 = 2
    np.testing.assert_allclose(weights, by_hand(ids, balance, 10.0, 5.0), rtol=1e-6)


@pytest.mark.parametrize("w0, sigma", [(10.0, 5.0), (3.0, 1.5), (25.0, 12.0)])
def test_the_map_is_the_formula_on_hand_made_labels(w0, sigma):
    ids = three_cells()
    balance = class_weights([ids], 3)
    np.testing.assert_allclose(border_weight_map(ids, balance, w0, sigma), by_hand(ids, balance, w0, sigma),
                               rtol=1e-6)


def test_class_weights_balance_the_classes():
    ids = three_cells()
    balance = class_weights([ids], 3)
    counts = np.bincount(ids.ravel(), minlength=3)
    np.testing.assert_allclose(balance * counts, ids.size / 3)  # every class carries the same total weight
    assert balance[ids].mean() == pytest.approx(1.0)
    assert class_weights([ids], 4)[3] == 1.0  # a class with no pixel


def test_a_single_cell_has_no_border_and_far_cells_none_either():
    one = np.zeros((9, 9), np.uint8)
    one[2:7, 2:7] = 1
    balance = class_weights([one], 2)
    np.testing.assert_allclose(border_weight_map(one, balance), balance[one])
    far = np.zeros((12, 400), np.uint8)
    far[:, :3], far[:, -3:] = 1, 1  # 394 pixels apart: exp(-394^2 / 50) is 0 in float64
    balance = class_weights([far], 2)
    np.testing.assert_allclose(border_weight_map(far, balance), by_hand(far, balance, 10.0, 5.0), atol=1e-6)


def test_uniform_class_weights_leave_only_the_border_term():
    """--border_class_weights uniform: w_c = 1 for every class, the border term as in the paper."""
    ids = three_cells()
    maps, w_c = training_weight_maps([ids, ids[::-1]], 3, 10.0, 5.0, balance=False)
    np.testing.assert_array_equal(w_c, np.ones(3))
    np.testing.assert_allclose(maps[0], by_hand(ids, np.ones(3), 10.0, 5.0), rtol=1e-6)
    balanced, _ = training_weight_maps([ids, ids[::-1]], 3, 10.0, 5.0)
    np.testing.assert_allclose(maps[0] - 1.0, balanced[0] - class_weights([ids, ids[::-1]], 3)[ids], atol=1e-5)


def test_labels_without_cells_are_refused():
    with pytest.raises(UserInputError, match="needs cells in the training labels"):
        training_weight_maps([np.zeros((8, 8), np.uint8)] * 2, 2, 10.0, 5.0)


def test_weights_weigh_the_cross_entropy_and_leave_the_dice_alone():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 5, 5, 2)), tf.float32)
    labels = tf.one_hot(rng.integers(0, 2, (2, 5, 5)), 2)
    weights = tf.constant(rng.uniform(0.5, 12.0, (2, 5, 5)), tf.float32)
    packed = tf.concat([labels, weights[..., None]], axis=-1)
    ce, dice = partial_losses(logits, packed)
    plain_ce, plain_dice = partial_losses(logits, labels)
    terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits).numpy()
    assert float(ce) == pytest.approx(float(np.mean(terms * weights.numpy()[..., None])), rel=1e-6)
    assert float(dice) == pytest.approx(float(plain_dice), rel=1e-6)
    ones = tf.concat([labels, tf.ones_like(weights)[..., None]], axis=-1)
    assert float(partial_losses(logits, ones)[0]) == pytest.approx(float(plain_ce), rel=1e-6)
    assert float(cross_entropy(logits, labels, weights)) == pytest.approx(float(ce), rel=1e-6)


def small_volume(tmp_path, classes: int = 2):
    """Four 200x240 slices of a grid of cells behind 2-pixel membranes (class ids), with a grey picture of them."""
    ids = np.ones((4, 200, 240), np.uint8)
    for k in range(4):
        ids[k, (np.arange(200) + 7 * k) % 40 < 2, :] = 0
        ids[k, :, (np.arange(240) + 5 * k) % 48 < 2] = 0
        if classes == 3:
            ids[k, 15:25, 20 + 5 * k:30 + 5 * k] = 2  # an organelle inside a cell
    images = (ids * 90 + 20).astype(np.uint8)
    tifffile.imwrite(tmp_path / "i.tif", images)
    tifffile.imwrite(tmp_path / "l.tif", ids)
    return DataSources(plan_pairs([str(tmp_path / "i.tif")], [str(tmp_path / "l.tif")], "image", "label"))


@pytest.mark.parametrize("input_mode, classes", [("resize", 2), ("tile", 2), ("tile", 3)])
def test_the_stream_carries_the_map_and_is_otherwise_unchanged(tmp_path, input_mode, classes):
    """Labels get one channel more (the map, moved by the same flips, crops and elastic field); image and class
    channels are exactly those of the stream without it; batch k is the same whether the stream starts at 0 or k."""
    sources = small_volume(tmp_path, classes)

    def batches(w0: float, start: int = 0, count: int = 3):
        options = StreamOptions(batch_size=2, seed=5, elastic_sigma=10.0, border_w0=w0)
        data = Dataset(sources, options, fold=None, input_mode=input_mode, num_classes=classes)
        return [(image.numpy(), label.numpy()) for image, label in data.train_fn(start_step=start).take(count)]

    weighted, plain = batches(10.0), batches(0.0)
    for (image, label), (plain_image, plain_label) in zip(weighted, plain, strict=True):
        assert label.shape == (2, 388, 388, classes + 1)
        np.testing.assert_array_equal(image, plain_image)
        np.testing.assert_array_equal(label[..., :classes], plain_label)
        weights = label[..., classes]
        assert np.all(np.isfinite(weights)) and weights.min() > 0 and weights.max() > 3.0
        membrane = label[..., 0] == 1
        assert weights[membrane].mean() > 2 * weights[~membrane].mean()  # the map follows the membranes
    resumed = batches(10.0, start=2, count=1)[0]
    np.testing.assert_array_equal(resumed[1], weighted[2][1])


def test_the_flags_reach_the_stream_options():
    from runtime.cli.arguments import parse_config
    from runtime.cli.setup import stream_options
    from runtime.execution.device import select_device
    from runtime.execution.distribution import Workers

    def options(*flags: str) -> StreamOptions:
        config = parse_config(["--data_dir", "x", "--exec_mode", "train", *flags])
        return stream_options(config.data, Workers(), select_device(no_hpu=True))

    assert options().border_w0 == 0.0  # off by default: the recipe
    paper = options("--border_weights")
    assert (paper.border_w0, paper.border_sigma, paper.border_balance) == (10.0, 5.0, True)
    uniform = options("--border_weights", "--border_w0", "4", "--border_class_weights", "uniform")
    assert (uniform.border_w0, uniform.border_balance) == (4.0, False)


@pytest.mark.parametrize("input_mode", ["resize", "tile"])
def test_the_stream_weighs_with_the_class_balance_chosen(tmp_path, input_mode):
    """Balanced, the majority class (cells) weighs below 1 away from borders; uniform, nothing weighs below 1."""
    sources = small_volume(tmp_path)

    def lowest_weight(balance: bool) -> float:
        options = StreamOptions(batch_size=2, seed=5, elastic_sigma=10.0, border_w0=10.0, border_balance=balance)
        data = Dataset(sources, options, fold=None, input_mode=input_mode, num_classes=2)
        return min(float(label[..., 2].numpy().min()) for _, label in data.train_fn().take(2))

    assert lowest_weight(True) < 0.6
    assert 1.0 - 1e-4 <= lowest_weight(False) < 1.01  # cell centres: w_c = 1, the border term all but gone


@pytest.mark.slow
def test_cli_trains_with_border_weights_and_refuses_labels_without_cells(tmp_path):
    small_volume(tmp_path)
    common = ["--exec_mode", "train", "--max_steps", "2", "--batch_size", "1", "--base_filters", "4",
              "--train_images", str(tmp_path / "i.tif"), "--log_every", "1", "--model_dir", str(tmp_path / "m"),
              "--log_dir", str(tmp_path / "log")]
    result = run_main(*common, "--train_labels", str(tmp_path / "l.tif"), "--border_weights",
                      "--border_w0", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(2, 2) train_ce_loss" in result.stdout
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((4, 200, 240), np.uint8))
    result = run_main(*common, "--train_labels", str(tmp_path / "empty.tif"), "--border_weights")
    assert result.returncode == 2 and "needs cells in the training labels" in result.stderr
    assert "Traceback" not in result.stderr
