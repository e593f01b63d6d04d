"""The BioImage Model Zoo package that export writes, its ONNX weights, and predict.py on ONNX Runtime.

The in-process tests use an untrained narrow UNet: what they check (the
graphs, the package's files, the agreement of the formats) does not depend on
training. The CLI test trains one for a few steps, exports it, and hands the
package to the zoo's own tools (``bioimageio test`` and its prediction, in the
environment ``scripts/setup_env.sh zoo`` builds) as another user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tifffile
import yaml

from common.errors import UserInputError
from data_loading.preprocessing import scale_intensity
from data_loading.volume_reader import ArrayVolume, read_mirrored
from model.unet import build_unet
from runtime.inference import onnx_models, strategies, zoo
from runtime.inference.export import (
    class_probabilities,
    export_model,
    load_ensemble_probability_fn,
    load_probability_fn,
)
from runtime.inference.whole_slice import slice_probabilities
from runtime.reporting.overlays import cover_picture
from tests.conftest import ROOT, TEST_BASE_FILTERS, run_main

EXPECTED_FILES = {"bioimageio.yaml", "saved_model.zip", "weights.onnx", onnx_models.NETWORK_FILE, "test_input.npy",
                  "test_output.npy", "sample_input.tif", "sample_output.tif", "cover.png", "README.md", "LICENSE"}


def network_of(model):
    return tf.function(lambda tiles: class_probabilities(model(tiles, training=False)))


@pytest.fixture(scope="module")
def models():
    return {classes: build_unet(seed=7, num_classes=classes, base_filters=TEST_BASE_FILTERS) for classes in (2, 3)}


@pytest.fixture(scope="module")
def slice_(isbi_dir):
    return np.asarray(tifffile.imread(isbi_dir / "test-volume.tif")[0])


@pytest.mark.parametrize("strategy", ["resize", "tile"])
def test_whole_slice_graphs_segment_as_the_strategies_do(models, slice_, strategy):
    """The graph the package's weights hold gives predict.py's probabilities, on slices smaller than the 92-pixel
    context too (mirrored again, as NumPy's reflect does) and on non-square ones."""
    network = network_of(models[2])
    graph = slice_probabilities(network, strategy)
    for height, width in ((512, 512), (130, 100), (40, 70)):
        image = slice_[:height, :width]
        expected = strategies.predict_probabilities(network, [image], 1, strategy)[0]
        actual = graph(scale_intensity(image[np.newaxis, :, :, np.newaxis]))["probabilities"].numpy()[0]
        np.testing.assert_allclose(actual, expected, atol=2e-5, err_msg=f"{strategy} {height}x{width}")


def write(model, folder: Path, strategy: str, sample: np.ndarray, **info) -> tuple[Path, Path]:
    classes = int(model.output_shape[-1])
    description = zoo.PackageInfo(name="UNet2D test model", strategy=strategy, base_filters=TEST_BASE_FILTERS,
                                  num_classes=classes, training_precision="bf16", engine="single",
                                  sample_source="a test slice", **info)
    return zoo.write_package(model, folder, description, sample,
                             lambda image, ids: cover_picture(image, ids, classes))


@pytest.fixture(scope="module")
def packages(models, slice_, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {"resize": write(models[2], root / "resize" / "bioimageio", "resize", slice_[:300, :260],
                            authors=("Ada Lovelace",), scores={"eval_dice_score": 0.9, "eval_v_rand_thinned": 0.8},
                            dataset="isbi2012"),
            "tile": write(models[3], root / "tile" / "bioimageio", "tile", slice_[:200, :420])}


@pytest.mark.slow
def test_the_package_holds_what_the_zoo_reads(packages):
    folder, archive = packages["resize"]
    assert {path.name for path in folder.iterdir()} == EXPECTED_FILES
    with zipfile.ZipFile(archive) as opened:
        assert set(opened.namelist()) == EXPECTED_FILES
    description = yaml.safe_load((folder / "bioimageio.yaml").read_text())
    assert description["format_version"].startswith("0.5.") and description["type"] == "model"
    weights = description["weights"]
    assert weights["onnx"]["parent"] == "tensorflow_saved_model_bundle"
    assert weights["onnx"]["opset_version"] == onnx_models.OPSET
    assert weights["tensorflow_saved_model_bundle"]["tensorflow_version"] == tf.__version__.split("-")[0]
    steps = [step["id"] for step in description["inputs"][0]["preprocessing"]]
    assert steps == ["ensure_dtype", "scale_linear", "ensure_dtype"]  # the last: else the zoo casts back to uint8
    assert description["authors"] == [{"name": "Ada Lovelace"}]
    assert description["config"]["unet2d"]["training_precision"] == "bf16"
    assert description["config"]["unet2d"]["weights_precision"] == "float32"
    assert len(description["cite"]) == 4 and description["license"] == zoo.LICENSE_ID
    assert "isbi2012" in description["tags"] and "electron microscopy" in description["description"]
    other = yaml.safe_load((packages["tile"][0] / "bioimageio.yaml").read_text())  # trained on what, unknown
    assert len(other["cite"]) == 2 and not {"isbi2012", "neurons"} & set(other["tags"])
    assert "ISBI" not in (packages["tile"][0] / "README.md").read_text().split("## Licence")[1]
    readme = (folder / "README.md").read_text()
    assert "## Validation" in readme and "0.9000" in readme and "resize" in readme
    test_input, test_output = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    assert test_input.dtype == np.uint8 and test_input.shape == (1, 300, 260, 1)
    assert test_output.shape == (1, 300, 260, 2)
    np.testing.assert_allclose(test_output.sum(axis=-1), 1.0, atol=1e-5)  # class probabilities
    tile_description = yaml.safe_load((packages["tile"][0] / "bioimageio.yaml").read_text())
    assert tile_description["outputs"][0]["axes"][-1]["channel_names"] == ["class_0", "class_1", "class_2"]
    assert tile_description["authors"] == [{"name": zoo.PLACEHOLDER_AUTHOR}]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["resize", "tile"])
def test_both_weight_formats_reproduce_the_test_output(packages, tmp_path, strategy):
    folder, _ = packages[strategy]
    raw = np.load(folder / "test_input.npy")
    expected = np.load(folder / "test_output.npy")
    scaled = (raw.astype(np.float32) * zoo.GAIN + zoo.OFFSET).astype(np.float32)  # the package's preprocessing
    with zipfile.ZipFile(folder / "saved_model.zip") as opened:
        opened.extractall(tmp_path / "saved")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.serve(scaled)["probabilities"].numpy(), expected, atol=1e-5)
    onnx = onnx_models.session(folder / "weights.onnx")
    np.testing.assert_allclose(onnx.run(None, {onnx.get_inputs()[0].name: scaled})[0], expected, atol=1e-4)


@pytest.mark.slow
def test_predict_reads_the_package_on_onnx_runtime_as_tensorflow_computes(models, packages, slice_, tmp_path):
    """The package folder, its zip and its network file all give TensorFlow's probabilities within 1e-3, and
    an ensemble may mix an ONNX package with a Keras export."""
    network = network_of(models[2])
    first = read_mirrored(ArrayVolume(slice_[np.newaxis, :400, :400]), 0, -92, -92, 572, 572)  # its first tile
    tiles = np.stack([np.asarray(scale_intensity(first))[..., np.newaxis], np.zeros((572, 572, 1), np.float32)])
    expected = network(tf.constant(tiles)).numpy()
    folder, archive = packages["resize"]
    for source in (folder, archive, folder / onnx_models.NETWORK_FILE, folder / "weights.onnx",
                   folder / "bioimageio.yaml"):
        probabilities, classes = load_probability_fn(source)
        assert classes == 2
        np.testing.assert_allclose(np.asarray(probabilities(tiles)), expected, atol=1e-3, err_msg=str(source))
    keras_file, _ = export_model(models[2], tmp_path / "export")
    mixed, classes = load_ensemble_probability_fn([keras_file, folder])
    np.testing.assert_allclose(np.asarray(mixed(tf.constant(tiles))), expected, atol=1e-3)
    with pytest.raises(UserInputError, match="same number of classes"):
        load_ensemble_probability_fn([folder, packages["tile"][0]])


@pytest.mark.slow
def test_predict_py_on_the_package_does_all_it_does_on_tensorflow(models, packages, slice_, tmp_path):
    """TTA, tile strategy, cell labels and overlays through predict.py's command line: the package (ONNX
    Runtime) writes what the Keras export (TensorFlow) writes."""
    import predict

    keras_file, _ = export_model(models[2], tmp_path / "export")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([slice_[:200, :300], slice_[200:400, 100:400]]))
    outputs = {}
    for name, model in (("tensorflow", keras_file), ("onnx", packages["resize"][0])):
        target = tmp_path / name / "masks.tif"
        assert predict.main([str(model), str(stack), "-o", str(target), "--strategy", "tile", "--tta",
                             "--cell_labels", "--overlays", "1", "--batch_size", "2"]) == 0
        outputs[name] = [tifffile.imread(target), tifffile.imread(target.with_name("masks-cells.tif"))]
        assert len(list((target.parent / "masks-overlays").glob("*.png"))) == 1
    for ours, theirs in zip(outputs["onnx"], outputs["tensorflow"], strict=True):
        assert ours.shape == theirs.shape == (2, 200, 300)
        assert np.mean(ours == theirs) >= 0.999
    # Blockwise into OME-Zarr: the package's fixed 572 network takes 388 tiles, and gives the TIFF's masks up to
    # ONNX Runtime's float sums, which vary with how the tiles are batched (each block batches its own): the
    # barely trained model has many pixels near P = 0.5: 3 of 120,000 flipped when this was written, 19 with ONNX
    # Runtime 1.32. TensorFlow's masks are identical (tests/test_blockwise.py). The bound, 120 pixels, still fails
    # a misplaced block or a wrong overlap, which changes a tile's border rows (hundreds of pixels or more).
    blockwise = tmp_path / "onnx" / "masks.ome.zarr"
    assert predict.main([str(packages["resize"][0]), str(stack), "-o", str(blockwise), "--strategy", "tile",
                         "--tta", "--chunks", "128", "--batch_size", "2"]) == 0
    from data_loading.readers import open_volume

    assert np.mean(open_volume(blockwise).read_all() == outputs["onnx"][0]) >= 0.999


@pytest.mark.slow
def test_weights_that_disagree_with_the_test_output_are_refused_and_nothing_is_written(models, slice_, tmp_path,
                                                                                        monkeypatch):
    folder, archive = write(models[2], tmp_path / "bioimageio", "resize", slice_[:100, :100])
    before = {path.name: path.read_bytes() for path in folder.iterdir()}, archive.read_bytes()
    real = zoo._onnx_output
    monkeypatch.setattr(zoo, "_onnx_output", lambda path, inputs: real(path, inputs) + 0.01)  # a wrong converter
    with pytest.raises(UserInputError, match="onnx weights disagree with the test output"):
        write(models[2], folder, "resize", slice_[:100, :100])
    assert ({path.name: path.read_bytes() for path in folder.iterdir()}, archive.read_bytes()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bioimageio", "bioimageio.zip"]  # no staging left


def test_a_missing_converter_is_one_line_that_names_it(models, slice_, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx now raises ImportError
    with pytest.raises(UserInputError, match="'tf2onnx', which is not installed"):
        write(models[2], tmp_path / "bioimageio", "resize", slice_[:80, :80])
    assert list(tmp_path.iterdir()) == []


def test_predict_py_refuses_a_damaged_onnx_file_in_one_line(tmp_path, capsys):
    import predict

    damaged, stack = tmp_path / "model.onnx", tmp_path / "stack.tif"
    damaged.write_bytes(b"\x08\x07" + os.urandom(200))
    tifffile.imwrite(stack, np.zeros((1, 64, 64), np.uint8))
    assert predict.main([str(damaged), str(stack)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("predict.py: error: cannot load the ONNX model") and "\n" not in error, error
    assert not (tmp_path / "stack-masks.tif").exists()


def zoo_python() -> str:
    python = os.environ.get("UNET2D_ZOO_PYTHON")
    if not python:
        pytest.skip("UNET2D_ZOO_PYTHON is unset: scripts/run_tests.sh builds the zoo's environment and sets it")
    return python


@pytest.mark.slow
def test_export_writes_a_package_the_zoo_tool_passes_and_reads_as_predict_py_does(isbi_dir, tmp_path):
    """Train, evaluate and export on this stack; then the zoo's own ``bioimageio test`` (every weight format,
    default tolerances, its size tests) passes, and bioimageio.core segments the test slices as predict.py."""
    zoo_env = zoo_python()
    model, stack = tmp_path / "model", tmp_path / "stack.tif"
    tifffile.imwrite(stack, tifffile.imread(isbi_dir / "test-volume.tif")[:3])
    # The README's workflow, logs by default in the model dir: a prediction between training and export keeps
    # the training's and evaluation's lines, which the package reports.
    for mode, extra in (("train_and_evaluate", ("--max_steps", "3")), ("predict", ("--test_images", str(stack))),
                        ("export", ("--zoo_author", "Ada"))):
        done = run_main("--data_dir", str(isbi_dir), "--fold", "0", "--exec_mode", mode, "--batch_size", "1",
                        "--model_dir", str(model), *extra)
        assert done.returncode == 0, done.stderr[-2000:]
    package = model / "export" / "bioimageio"
    readme = (package / "README.md").read_text()
    assert "eval Dice" in readme and "validation slice of fold 0" in readme and "--max_steps 3" in readme

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    tested = subprocess.run([str(Path(zoo_env).parent / "bioimageio"), "test", str(package.with_suffix(".zip"))],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "passed" in tested.stdout and "tensorflow_saved_model_bundle" in tested.stdout and "onnx" in tested.stdout

    ours = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(package), str(stack), "-o",
                           str(tmp_path / "ours.tif")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert ours.returncode == 0, ours.stderr[-2000:]
    theirs = subprocess.run([zoo_env, str(ROOT / "scripts" / "zoo_predict.py"), str(package.with_suffix(".zip")),
                             str(stack), "-o", str(tmp_path / "theirs.tif")], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=600)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    agree = np.mean(tifffile.imread(tmp_path / "ours.tif") == tifffile.imread(tmp_path / "theirs.tif"))
    assert agree >= 0.999, agree


@pytest.mark.slow
def test_an_export_target_that_is_a_file_or_a_model_dir_without_checkpoint_is_one_line(tmp_path):
    target = tmp_path / "export"
    target.write_text("mine")
    result = run_main("--exec_mode", "export", "--model_dir", str(tmp_path / "model"),
                      "--export_dir", str(target))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last == f"unet2d.py: error: --export_dir is not a folder: {target}", last
    assert target.read_text() == "mine"
    empty = tmp_path / "empty"
    result = run_main("--exec_mode", "export", "--model_dir", str(empty), "--log_dir", str(tmp_path / "logs"))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "no checkpoint" in last and "Traceback" not in result.stderr, last
    assert not (empty / "export").exists()


@pytest.mark.slow
def test_a_package_is_a_source_to_fine_tune_from(models, packages, tmp_path):
    """--init_from takes the package's folder, its description file, its zip, and the export folder around it;
    each gives the packaged weights; a 3-class package into a 2-class run loads all but the output layer."""
    from runtime.loop import warm_start

    folder, archive = packages["resize"]
    for given in (folder, folder / "bioimageio.yaml", archive, folder.parent):
        source = warm_start.find_source(str(given), tmp_path / "run", TEST_BASE_FILTERS, pytest.fail)
        model = build_unet(1, 2, base_filters=TEST_BASE_FILTERS)
        loaded, fresh = warm_start.initialise(model, source, 1)
        assert fresh == [] and len(loaded) == 23, given
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(models[2].weights, model.weights,
                                                                        strict=True)), given
    source = warm_start.find_source(str(packages["tile"][1]), tmp_path / "run", TEST_BASE_FILTERS, pytest.fail)
    assert source.classes == 3
    loaded, fresh = warm_start.initialise(build_unet(1, 2, base_filters=TEST_BASE_FILTERS), source, 1)
    assert fresh == ["output_logits"] and len(loaded) == 22
