"""Stacks as microscopes write them: 16-bit and float grey values, single images, and the intensity rule.

The rule (data_loading/intensity.py): 8-bit images as they are, others through
the window of the training images' 0.5/99.5 percentiles, kept with the model
and its export so that predict maps new stacks the same way.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import TEST_BASE_FILTERS, run_main, run_predict
from PIL import Image

from common.errors import UserInputError
from data_loading.data_loader import Dataset, DataSources, StreamOptions
from data_loading.image_stack import read_image_stack, stack_shape
from data_loading.intensity import (
    INTENSITY_FILE,
    IntensityWindow,
    fit_window,
    load_window,
    map_stacks,
    save_window,
    to_eight_bit,
)
from data_loading.volumes import plan_pairs, plan_stacks

OPTIONS = StreamOptions(batch_size=1, seed=0)


def test_eight_bit_images_pass_unchanged_and_others_map_through_the_window():
    eight = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert to_eight_bit(eight, IntensityWindow(1000.0, 2000.0, "any")) is eight  # not even copied
    wide = np.array([[[900, 1000, 1500, 2000, 2100]]], np.uint16)
    mapped = to_eight_bit(wide, IntensityWindow(1000.0, 2000.0, "test"))
    np.testing.assert_array_equal(mapped, [[[0, 0, 128, 255, 255]]])  # 127.5 rounds to even: 128
    floats = np.array([[[-0.5, 0.0, 0.25, 1.0, 3.0]]], np.float32)
    np.testing.assert_array_equal(to_eight_bit(floats, IntensityWindow(0.0, 1.0, "test")), [[[0, 0, 64, 255, 255]]])


def test_the_window_is_the_percentiles_so_outliers_do_not_squeeze_the_contrast():
    rng = np.random.default_rng(0)
    stack = rng.integers(2000, 6001, size=(4, 100, 100)).astype(np.uint16)
    stack[0, :3, :3] = 65535  # hot pixels
    stack[1, 0, :5] = 0  # a dead border
    window = fit_window([stack, np.zeros((1, 4, 4), np.uint8)], "the training images")
    assert 2000 <= window.low < 2030 and 5970 < window.high <= 6000, window
    assert "uint16" in window.source and "0.5/99.5" in window.source
    assert fit_window([np.zeros((2, 8, 8), np.uint8)], "x") is None  # all 8-bit: nothing to map
    flat = fit_window([np.full((1, 8, 8), 7.0, np.float32)], "x")
    assert flat.high > flat.low  # a flat image still has a window


def test_a_stack_without_a_model_window_gets_its_own_and_a_note():
    stack = (np.arange(64, dtype=np.uint16).reshape(1, 8, 8) * 100)
    mapped, notes = map_stacks([stack, np.zeros((1, 8, 8), np.uint8)], None, ["wide.tif", "narrow.tif"])
    assert mapped[0].dtype == np.uint8 and mapped[0].min() == 0 and mapped[0].max() == 255
    assert len(notes) == 1 and notes[0].startswith("wide.tif: uint16 grey values mapped to 8 bits by [")


def test_the_window_file_round_trips_and_a_damaged_one_is_one_line(tmp_path):
    window = IntensityWindow(12.5, 3000.0, "percentiles 0.5/99.5 of the training images (uint16)")
    save_window(tmp_path, window)
    assert load_window(tmp_path) == window
    assert "round(255 * clip(" in json.loads((tmp_path / INTENSITY_FILE).read_text())["rule"]
    assert load_window(tmp_path / "nothing here") is None
    (tmp_path / INTENSITY_FILE).write_text('{"low": 5, "high": 5}')
    with pytest.raises(UserInputError, match="high must exceed its low"):
        load_window(tmp_path)
    (tmp_path / INTENSITY_FILE).write_text("{not json")
    with pytest.raises(UserInputError, match=r"intensity.json is unreadable \(.*\); it holds the grey-value window"):
        load_window(tmp_path)


def test_single_images_and_wide_grey_values_are_read_as_stored(tmp_path):
    wide = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tifffile.imwrite(tmp_path / "single.tif", wide.astype(np.float32) / 7)
    Image.fromarray(wide[:, :20].astype(np.uint8)).save(tmp_path / "eight.png")
    for name, expected in (("wide.png", wide), ("single.tif", wide.astype(np.float32) / 7),
                           ("eight.png", wide[:, :20].astype(np.uint8))):
        stack, names = read_image_stack(tmp_path / name)
        assert stack.dtype == expected.dtype and stack.shape == (1, *expected.shape), name
        np.testing.assert_array_equal(stack[0], expected)
        assert names == [Path(name).stem] if name.endswith(".png") else names == ["single_000"]
        assert stack_shape(tmp_path / name) == (1, *expected.shape)


@pytest.mark.parametrize("content, message", [
    (b"II*\x00" + struct.pack("<I", 0), "it holds no image .no pages."),  # a TIFF header and nothing else
    (b"hello, this is not a TIFF at all", "not a TIFF file"),
])
def test_a_file_that_is_no_tiff_says_so_in_one_line(tmp_path, content, message):
    (tmp_path / "broken.tif").write_bytes(content)
    with pytest.raises(UserInputError, match=f"cannot read .*broken.tif as a TIFF stack: {message}"):
        stack_shape(tmp_path / "broken.tif")


def test_the_isbi_stacks_stay_bit_identical(isbi_dir):
    data = Dataset.isbi(isbi_dir, OPTIONS, fold=0)
    assert data.window is None and "intensity" not in data.describe_split()
    np.testing.assert_array_equal(data.train_volumes[0].images.read_all(),
                                  tifffile.imread(isbi_dir / "train-volume.tif"))
    np.testing.assert_array_equal(data.test_volumes[0].images.read_all(), tifffile.imread(isbi_dir / "test-volume.tif"))


def sixteen_bit(images: np.ndarray) -> np.ndarray:
    """8-bit slices as a 16-bit camera might give them: offset, a wider range, and a few hot pixels."""
    wide = (images.astype(np.uint16) * 37 + 1200).astype(np.uint16)
    wide[:, 0, :4] = 65535
    return wide


def test_sixteen_bit_own_data_is_mapped_by_the_training_window_test_stacks_too(isbi_dir, tmp_path):
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:4]
    tifffile.imwrite(tmp_path / "images.tif", sixteen_bit(images))
    tifffile.imwrite(tmp_path / "labels.tif", tifffile.imread(isbi_dir / "train-labels.tif")[:4].astype(np.uint16))
    tifffile.imwrite(tmp_path / "test.tif", sixteen_bit(images[:1]) + 100)  # another exposure: the same window
    sources = DataSources(plan_pairs([str(tmp_path / "images.tif")], [str(tmp_path / "labels.tif")], "--train_images",
                                     "--train_labels"), [], plan_stacks([str(tmp_path / "test.tif")], "--test_images"))
    data = Dataset(sources, OPTIONS, fold=0)
    window = fit_window([sixteen_bit(images)], "the training images")
    assert data.window == window and data.describe_split()["intensity"] == window.describe()
    np.testing.assert_array_equal(data.train_volumes[0].images.read_all(), to_eight_bit(sixteen_bit(images), window))
    np.testing.assert_array_equal(data.test_volumes[0].images.read_all(),
                                  to_eight_bit(sixteen_bit(images[:1]) + 100, window))
    labels = data.train_volumes[0].labels.read_all()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
    kept = IntensityWindow(0.0, 65535.0, "a model's")  # a model dir's window wins over the stacks' own
    assert Dataset(sources, OPTIONS, fold=0, window=kept).window == kept


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One untrained narrow model exported twice: as an 8-bit model, and with a 16-bit window."""
    from model.unet import build_unet
    from runtime.inference.export import export_model

    root = tmp_path_factory.mktemp("exports")
    model = build_unet(3, 2, base_filters=TEST_BASE_FILTERS)
    window = IntensityWindow(1000.0, 1000.0 + 255 * 20, "percentiles 0.5/99.5 of the training images (uint16)")
    return {"eight": export_model(model, root / "eight")[0].parent,
            "wide": export_model(model, root / "wide", window)[0].parent, "window": window}


def test_predict_maps_a_stack_through_the_window_the_export_keeps(exports, isbi_dir, tmp_path):
    """A 16-bit stack whose grey values are 1000 + 20 x (8-bit value) is segmented by the model with that
    window exactly as the 8-bit stack by the same model without one; a single PNG is a stack of one."""
    assert load_window(exports["wide"]) == exports["window"] and not (exports["eight"] / INTENSITY_FILE).exists()
    slices = tifffile.imread(isbi_dir / "test-volume.tif")[:2, :200, :240]
    tifffile.imwrite(tmp_path / "eight.tif", slices)
    tifffile.imwrite(tmp_path / "wide.tif", (slices.astype(np.uint16) * 20 + 1000))
    Image.fromarray(slices[1].astype(np.uint16) * 20 + 1000).save(tmp_path / "one.png")
    for model, stack in ((exports["eight"], "eight.tif"), (exports["wide"], "wide.tif"),
                         (exports["wide"] / "saved_model", "wide.tif"), (exports["wide"], "one.png")):
        output = tmp_path / f"{model.name}-{Path(stack).stem}.tif"
        result = run_predict(str(model), str(tmp_path / stack), "-o", str(output))
        assert result.returncode == 0 and "mapped to 8 bits" not in result.stderr, result.stderr[-1500:]
    reference = tifffile.imread(tmp_path / "eight-eight.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "wide-wide.tif"), reference)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "saved_model-wide.tif"), reference)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "wide-one.tif"), reference[1:])


def test_predict_says_how_it_maps_a_wide_stack_for_an_eight_bit_model(exports, tmp_path):
    stack = tmp_path / "wide.tif"
    tifffile.imwrite(stack, np.random.default_rng(1).normal(0.0, 1.0, (1, 100, 100)).astype(np.float32))
    result = run_predict(str(exports["eight"]), str(stack))
    assert result.returncode == 0, result.stderr[-1500:]
    assert "float32 grey values mapped to 8 bits by [" in result.stderr and "trained on 8-bit images" in result.stderr
    both = run_predict(str(exports["eight"]), str(exports["wide"]), str(stack))
    last = both.stderr.strip().splitlines()[-1]
    assert both.returncode == 2 and "map float32 grey values differently" in last, last
    assert run_predict(str(exports["eight"]), str(exports["wide"]), str(tmp_path / "none.tif")).returncode == 2
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((1, 64, 64), np.nan, np.float32))
    result = run_predict(str(exports["eight"]), str(nan))
    assert result.returncode == 2 and "NaN or infinite values (slice 0)" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "nan-masks.tif").exists()


@pytest.mark.slow
@pytest.mark.one_stack  # the window's path is the same on both stacks; each stack's export is tested elsewhere
def test_a_model_trained_on_sixteen_bit_stacks_keeps_its_window_through_export_and_the_zoo(isbi_dir, tmp_path):
    """Train on a 16-bit stack: the window lands in the model dir, the export, and the zoo package (its
    pre-processing clips to it; the test input is 16-bit). predict.py segments the 16-bit stack with the
    export and with the package alike; with the zoo's environment, ``bioimageio test`` passes the package."""
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:6]
    tifffile.imwrite(tmp_path / "images.tif", sixteen_bit(images))
    tifffile.imwrite(tmp_path / "labels.tif", tifffile.imread(isbi_dir / "train-labels.tif")[:6])
    model, logs = tmp_path / "model", tmp_path / "logs"
    data = ["--train_images", str(tmp_path / "images.tif"), "--train_labels", str(tmp_path / "labels.tif"),
            "--fold", "0", "--model_dir", str(model), "--log_dir", str(logs), "--input_mode", "tile", "--dtype", "fp32"]
    trained = run_main("--exec_mode", "train_and_evaluate", "--max_steps", "2", "--batch_size", "1", *data)
    assert trained.returncode == 0, trained.stderr[-2000:]
    window = load_window(model)
    assert window == fit_window([sixteen_bit(images)], "the training images")
    assert window.describe() in trained.stdout + trained.stderr  # the DATA line says how the stack was mapped
    exported = run_main("--exec_mode", "export", *data)
    assert exported.returncode == 0, exported.stderr[-2000:]
    export, package = model / "export", model / "export" / "bioimageio"
    assert load_window(export) == window == load_window(package)
    description = yaml.safe_load((package / "bioimageio.yaml").read_text())
    steps = description["inputs"][0]["preprocessing"]
    assert description["inputs"][0]["data"]["type"] == "uint16"
    assert steps[1] == {"id": "clip", "kwargs": {"min": window.low, "max": window.high}}
    assert np.load(package / "test_input.npy").dtype == np.uint16
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, sixteen_bit(tifffile.imread(isbi_dir / "test-volume.tif")[:2]))
    for name, source in (("export", export), ("package", package)):
        result = run_predict(str(source), str(stack), "-o", str(tmp_path / f"{name}.tif"), "--strategy", "tile")
        assert result.returncode == 0 and "mapped" not in result.stderr, result.stderr[-1500:]
    predicted = run_main("--exec_mode", "predict", "--predict_input", str(stack), *data)  # the model dir's window
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    export_masks = tifffile.imread(tmp_path / "export.tif")
    np.testing.assert_array_equal(tifffile.imread(model / "predictions" / "stack-masks.tif"), export_masks)
    agree = np.mean(export_masks == tifffile.imread(tmp_path / "package.tif"))
    assert agree >= 0.999, agree
    zoo_env = os.environ.get("UNET2D_ZOO_PYTHON")
    if zoo_env:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        tested = subprocess.run([str(Path(zoo_env).parent / "bioimageio"), "test", str(package.with_suffix(".zip"))],
                                cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
        assert "passed" in tested.stdout
