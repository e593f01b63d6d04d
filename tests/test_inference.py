"""Full-resolution prediction: the overlap-tile and resize strategies, and reading a user's own stack."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from common.errors import UserInputError
from data_loading.image_stack import read_image_stack
from runtime.inference.strategies import (
    CONTEXT,
    class_ids,
    mask_values,
    predict_class_ids,
    predict_probabilities,
    tile_grid,
    unview,
    view,
    views_mapped_back,
)

OUT = 388


def centre_as_probability(inputs: tf.Tensor) -> tf.Tensor:
    """A stand-in two-class network: P(cell) is the 388x388 centre of each input, mapped from [-1, 1] to [0, 1]."""
    cell = (inputs[:, CONTEXT:CONTEXT + OUT, CONTEXT:CONTEXT + OUT, 0] + 1.0) / 2.0
    return tf.stack([1.0 - cell, cell], axis=-1)


def predict_tiled(probabilities, slices, batch_size):
    return np.stack(predict_probabilities(probabilities, slices, batch_size, "tile"))[..., 1]


def predict_resized(probabilities, slices, batch_size):
    return np.stack(predict_probabilities(probabilities, slices, batch_size, "resize"))[..., 1]


def seen_tiles(record: list) -> callable:
    def probabilities(inputs):
        record.append(tuple(inputs.shape))
        return centre_as_probability(inputs)
    return probabilities


@pytest.mark.parametrize("height, width", [(500, 777), (388, 388), (50, 30), (389, 1)])
def test_tiles_stitch_back_to_every_pixel_at_full_resolution(height, width):
    """Not a multiple of 388: each output pixel comes from the tile whose centre holds it, at its own place."""
    slices = np.random.default_rng(0).integers(0, 256, (2, height, width), dtype=np.uint8)
    shapes = []
    probabilities = predict_tiled(seen_tiles(shapes), slices, batch_size=3)
    assert probabilities.shape == (2, height, width)
    np.testing.assert_allclose(probabilities, slices / 255.0, atol=1e-6)
    rows, cols = tile_grid(height, width)
    assert sum(shape[0] for shape in shapes) == 2 * rows * cols
    assert all(shape[1:] == (572, 572, 1) for shape in shapes)


def test_tile_context_is_mirrored_not_zero():
    """The 92-pixel context around the slice is its mirror image, as in the UNet paper."""
    slices = np.arange(400 * 400, dtype=np.int64).reshape(1, 400, 400) % 251
    slices = slices.astype(np.uint8)
    tiles = []

    def keep(inputs):
        tiles.append(inputs.numpy())
        return centre_as_probability(inputs)

    predict_tiled(keep, slices, batch_size=4)
    first = np.concatenate(tiles)[0, :, :, 0]
    normalised = slices[0].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(first[CONTEXT - 1, CONTEXT:CONTEXT + 10], normalised[1, :10], atol=1e-6)
    np.testing.assert_allclose(first[CONTEXT:CONTEXT + 10, CONTEXT - 5], normalised[:10, 5], atol=1e-6)


def test_resize_strategy_returns_the_input_size():
    slices = np.full((3, 300, 450), 200, np.uint8)
    probabilities = predict_resized(centre_as_probability, slices, batch_size=2)
    assert probabilities.shape == (3, 300, 450)
    masks = mask_values(class_ids(np.stack([1 - probabilities, probabilities], axis=-1)), 2)
    assert set(np.unique(masks)) <= {0, 255}


def test_class_ids_threshold_two_classes_and_take_the_strongest_of_more():
    two = np.array([[0.5, 0.5], [0.6, 0.4], [0.3, 0.7]], np.float32)
    np.testing.assert_array_equal(class_ids(two), [1, 0, 1])  # the recipe's P(cell) >= 0.5
    three = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [0.1, 0.1, 0.8]], np.float32)
    np.testing.assert_array_equal(class_ids(three), [1, 2, 2])  # a tie goes to the higher id
    np.testing.assert_array_equal(mask_values(np.array([0, 1], np.uint8), 2), [0, 255])
    np.testing.assert_array_equal(mask_values(np.array([0, 2], np.uint8), 3), [0, 2])


@pytest.mark.parametrize("strategy", ["resize", "tile"])
def test_class_ids_of_slices_of_different_sizes_in_small_chunks(strategy):
    """Three classes from grey bands; slices of two sizes mixed; each comes back at its own size."""
    def bands(inputs):
        centre = inputs[:, CONTEXT:CONTEXT + OUT, CONTEXT:CONTEXT + OUT, 0]
        return tf.one_hot(tf.cast(tf.clip_by_value((centre + 1.0) * 1.5, 0, 2.999), tf.int32), 3)

    rng = np.random.default_rng(2)
    def striped(height, width):  # vertical bands 25 pixels wide, of three grey levels
        levels = np.repeat(rng.choice([20, 128, 240], width // 25 + 1), 25)[:width].astype(np.uint8)
        return np.repeat(levels[np.newaxis], height, axis=0)

    slices = [striped(420, 600), striped(90, 150), striped(420, 600), striped(90, 150)]
    ids = predict_class_ids(bands, slices, batch_size=1, strategy=strategy)
    assert [i.shape for i in ids] == [s.shape for s in slices]
    expected = [np.select([s < 64, s < 192], [0, 1], 2) for s in slices]
    agreement = np.mean(np.concatenate([(i == e).ravel() for i, e in zip(ids, expected, strict=True)]))
    assert agreement == 1.0 if strategy == "tile" else agreement > 0.9


def test_stack_from_a_folder_of_png_and_tiff_slices(tmp_path):
    rng = np.random.default_rng(1)
    slices = rng.integers(0, 256, (3, 40, 70), dtype=np.uint8)
    Image.fromarray(slices[0]).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", slices[1])
    Image.fromarray(slices[2]).save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("ignored")
    stack, names = read_image_stack(tmp_path)
    np.testing.assert_array_equal(stack, slices)
    assert names == ["a", "b", "c"]


@pytest.mark.parametrize("make, message", [
    (lambda d: Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "rgb.png"), "must be a grey image"),
    (lambda d: [Image.fromarray(np.zeros(s, np.uint8)).save(d / f"{i}.png")
                for i, s in enumerate([(4, 4), (5, 4)])], "differ in size"),
    (lambda d: (d / "x.png").write_bytes(b"\x89PNG broken"), "cannot read"),
    (lambda d: None, "no PNG or TIFF slices"),
])
def test_bad_slice_folders_are_refused_in_one_line(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UserInputError, match=message):
        read_image_stack(tmp_path)


def left_leaning(inputs: tf.Tensor) -> tf.Tensor:
    """A network that is not symmetric: P(cell) mixes the centre's grey value with the column position."""
    cell = (inputs[:, CONTEXT:CONTEXT + OUT, CONTEXT:CONTEXT + OUT, 0] + 1.0) / 4.0
    ramp = tf.linspace(0.0, 0.5, OUT)[tf.newaxis, tf.newaxis, :]
    return tf.stack([1.0 - cell - ramp, cell + ramp], axis=-1)


def test_the_eight_views_are_undone_exactly():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    seen = {view(image, k).tobytes() + bytes(view(image, k).shape) for k in range(8)}
    assert len(seen) == 8  # eight different views of a non-symmetric slice
    for k in range(8):
        np.testing.assert_array_equal(unview(view(image, k), k), image)
        np.testing.assert_array_equal(unview(view(image[..., None], k), k)[..., 0], image)


@pytest.mark.parametrize("strategy", ["tile", "resize"])
def test_tta_of_a_pixelwise_network_changes_nothing(strategy):
    slices = np.random.default_rng(1).integers(0, 256, (2, 300, 450), dtype=np.uint8)
    plain = np.stack(predict_probabilities(centre_as_probability, slices, 2, strategy))
    averaged = np.stack(predict_probabilities(centre_as_probability, slices, 2, strategy, tta=True))
    # Tiles are exact; resizing 300x450 to 388x388 and back is not perfectly symmetric.
    np.testing.assert_allclose(averaged, plain, atol=1e-5 if strategy == "tile" else 0.02)


def test_tta_is_the_mean_over_views_and_commutes_with_every_view():
    slices = np.random.default_rng(2).integers(0, 256, (1, 300, 450), dtype=np.uint8)
    averaged = predict_probabilities(left_leaning, slices, 2, "tile", tta=True)[0]
    by_hand = np.mean([unview(predict_probabilities(left_leaning, [view(slices[0], k)], 2, "tile")[0], k)
                       for k in range(8)], axis=0)
    np.testing.assert_allclose(averaged, by_hand, atol=1e-6)
    plain = predict_probabilities(left_leaning, slices, 2, "tile")[0]
    assert np.abs(averaged - plain).max() > 0.1  # the ramp cancels out: TTA did something
    for k in range(8):  # the averaged network no longer cares which way the slice is turned
        turned = predict_probabilities(left_leaning, [view(slices[0], k)], 2, "tile", tta=True)[0]
        np.testing.assert_allclose(unview(turned, k), averaged, atol=1e-6)


def test_views_in_the_graph_are_the_slice_views_mapped_back():
    batch = np.random.default_rng(3).normal(size=(2, 10, 10, 1)).astype(np.float32)
    ramp = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1)

    def centre_plus_ramp(x: tf.Tensor) -> tf.Tensor:  # turning the input does not turn the ramp
        return x[:, 2:-2, 2:-2, :] + ramp

    assert len(views_mapped_back(centre_plus_ramp, tf.constant(batch), tta=False)) == 1
    outputs = views_mapped_back(centre_plus_ramp, tf.constant(batch), tta=True)
    assert len(outputs) == 8
    for k, output in enumerate(outputs):
        for image, mapped in zip(batch, output.numpy(), strict=True):
            np.testing.assert_array_equal(mapped, unview(np.asarray(centre_plus_ramp(view(image, k)[None]))[0], k))
    np.testing.assert_allclose(np.mean(outputs, axis=0), batch[:, 2:-2, 2:-2] + ramp.mean(), atol=1e-5)


def test_tta_class_ids_have_each_slices_size():
    slices = [np.full((50, 70), 200, np.uint8), np.zeros((64, 64), np.uint8)]
    ids = predict_class_ids(centre_as_probability, slices, 1, "tile", tta=True)
    assert [i.shape for i in ids] == [(50, 70), (64, 64)]
    assert ids[0].min() == 1 and ids[1].max() == 0


def test_an_ensemble_of_exports_averages_them_and_refuses_different_class_counts(monkeypatch):
    from runtime.inference import export

    models = {"a": (lambda x: tf.fill([1, 2, 2, 2], 0.2), 2), "b": (lambda x: tf.fill([1, 2, 2, 2], 0.6), 2),
              "c": (lambda x: tf.fill([1, 2, 2, 3], 0.3), 3)}
    monkeypatch.setattr(export, "load_probability_fn", lambda path: models[str(path)])
    mean, classes = export.load_ensemble_probability_fn(["a", "b"])
    assert classes == 2 and np.allclose(mean(tf.zeros([1, 572, 572, 1])).numpy(), 0.4)
    alone, _ = export.load_ensemble_probability_fn(["a"])
    assert alone is models["a"][0]
    with pytest.raises(UserInputError, match=r"same number of classes: a \(2\), c \(3\)"):
        export.load_ensemble_probability_fn(["a", "c"])
