"""Training on your own stacks: several volumes of different sizes, K classes, tile mode, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from common.errors import UserInputError
from data_loading.data_loader import Dataset, DataSources, StreamOptions, fold_indices
from data_loading.memory import slice_working_bytes
from data_loading.synthetic_em import generate_volume
from data_loading.tiff_io import read_stack
from data_loading.tiles import TileSampler, covered_size, evaluation_tiles, mirror_pad, slice_refs, tile_offsets
from data_loading.volumes import plan_pairs
from runtime.parse_results import final_eval, read_log
from tests.conftest import ROOT, run_cli, run_main, run_predict, unet2d_command
from tests.horovod_support import MPIRUN, require_horovod

CLASSES = 3


def write_stack(path: Path, stack: np.ndarray, as_folder: bool = False) -> Path:
    """A multipage TIFF, or a folder of one PNG per slice."""
    if as_folder:
        path.mkdir(parents=True)
        for index, image in enumerate(stack):
            Image.fromarray(image).save(path / f"slice_{index:02d}.png")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, stack, photometric="minisblack")
    return path


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> dict[str, list[str]]:
    """Three-class EM stacks of three sizes (one smaller than 388 high), as TIFFs and as a slice folder."""
    root = tmp_path_factory.mktemp("own")
    images, labels = generate_volume(7, 512, seed=4, num_classes=CLASSES)
    train = [(images[0:2, :300, :450], labels[0:2, :300, :450], False),
             (images[2:4, :420, :500], labels[2:4, :420, :500], False),
             (images[4:5, :400, :400], labels[4:5, :400, :400], True)]
    data: dict[str, list[str]] = {"train_images": [], "train_labels": []}
    for index, (image, label, as_folder) in enumerate(train):
        suffix = "" if as_folder else ".tif"
        data["train_images"].append(str(write_stack(root / "images" / f"vol{index}{suffix}", image, as_folder)))
        data["train_labels"].append(str(write_stack(root / "labels" / f"vol{index}{suffix}", label, as_folder)))
    data["val_images"] = [str(write_stack(root / "val" / "images.tif", images[5:6, :450, :420]))]
    data["val_labels"] = [str(write_stack(root / "val" / "labels.tif", labels[5:6, :450, :420]))]
    write_stack(root / "test" / "a.tif", images[6:7, :200, :300])
    write_stack(root / "test" / "b", images[5:7, :390, :410], as_folder=True)
    data["test_images"] = [str(root / "test" / "*.tif"), str(root / "test" / "b")]
    data["root"] = [str(root)]
    return data


def flags(data: dict[str, list[str]], *names: str) -> list[str]:
    return [item for name in names for item in (f"--{name}", *data[name])]


def own_dataset(data, input_mode: str, fold: int | None = 0, augment: bool = True, **options) -> Dataset:
    sources = DataSources(plan_pairs(data["train_images"], data["train_labels"], "--train_images", "--train_labels"))
    return Dataset(sources, StreamOptions(batch_size=2, seed=5, augment=augment, **options), fold,
                   input_mode=input_mode, num_classes=CLASSES)


# The data layer ---------------------------------------------------------------


def test_folds_split_the_slices_of_all_volumes_together(own_data):
    data = own_dataset(own_data, "resize", fold=1)
    train, val = fold_indices(5, 1, seed=5)
    np.testing.assert_array_equal(data.train_indices, train)
    np.testing.assert_array_equal(data.val_indices, val)
    every_slice = [image for path in own_data["train_images"][:2] for image in tifffile.imread(path)]
    every_slice.append(np.asarray(Image.open(Path(own_data["train_images"][2]) / "slice_00.png")))
    for index, (image, label) in zip(val, data.validation_slices(), strict=True):
        np.testing.assert_array_equal(image, every_slice[index])
        assert label.shape == image.shape and label.max() < CLASSES


@pytest.mark.parametrize("input_mode", ["resize", "tile"])
def test_streams_of_volumes_of_different_sizes(own_data, input_mode):
    data = own_dataset(own_data, input_mode)
    images, labels = next(iter(data.train_fn()))
    assert images.shape == (2, 572, 572, 1) and labels.shape == (2, 388, 388, CLASSES)
    np.testing.assert_array_equal(tf.reduce_sum(labels, -1).numpy(), 1.0)  # exactly one class per pixel
    batches = list(data.eval_fn())
    count = sum(int(batch[0].shape[0]) for batch in batches)
    if input_mode == "tile":  # every validation slice cut into tiles that cover it
        shapes = [image.shape for image, _ in data.validation_slices()]
        assert count == sum(len(tile_offsets(covered_size(s)[0])) * len(tile_offsets(covered_size(s)[1]))
                            for s in shapes)
    else:
        assert count == data.eval_size
    assert all(batch[1].shape[1:] == (388, 388, CLASSES) for batch in batches)


def test_tile_crops_lie_in_the_slice_or_its_mirror_with_labels_aligned():
    """Random content makes every 572x572 window unique, so each crop's place can be found and checked."""
    rng = np.random.default_rng(3)
    shapes = [(300, 700), (500, 420)]  # one smaller than 388 in height: mirrored out to 388
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    labels = [rng.integers(0, CLASSES, shape, dtype=np.uint8) for shape in shapes]
    sampler = TileSampler(slice_refs(images), slice_refs(labels))
    for draw in range(40):
        chosen = draw % 2
        corner = sampler.offset(tf.constant(chosen, tf.int64), tf.constant([7, draw], tf.int64)).numpy()
        height, width = covered_size(shapes[chosen])
        assert 0 <= corner[0] <= height - 388 and 0 <= corner[1] <= width - 388
        image, label = (t.numpy() for t in sampler.crop(tf.constant(chosen, tf.int32), tf.constant(corner)))
        window = np.s_[corner[0]:corner[0] + 572, corner[1]:corner[1] + 572]
        np.testing.assert_array_equal(image, mirror_pad(images[chosen], height, width)[window])
        np.testing.assert_array_equal(label, mirror_pad(labels[chosen], height, width)[window])
        # The centre the network predicts is the slice's own label there, pixel for pixel.
        centre = label[92:92 + 388, 92:92 + 388]
        inside = mirror_pad(labels[chosen], height, width, context=0)[corner[0]:corner[0] + 388,
                                                                       corner[1]:corner[1] + 388]
        np.testing.assert_array_equal(centre, inside)
        if shapes[chosen][0] >= 388:
            np.testing.assert_array_equal(centre, labels[chosen][corner[0]:corner[0] + 388, corner[1]:corner[1] + 388])


def test_tile_stream_without_augmentation_pairs_each_crop_with_its_own_labels(own_data):
    """Through the real stream: each crop is found in a slice's mirror padding, and its label is that place's."""
    data = own_dataset(own_data, "tile", fold=None, augment=False)
    slices = [(image, label) for volume in data.train_volumes
              for image, label in zip(volume.images.read_all(), volume.labels.read_all(), strict=True)]
    for images, labels in data.train_fn().take(3):
        for image, label in zip(images.numpy(), labels.numpy(), strict=True):
            grey = np.round((image[..., 0] + 1.0) * 127.5).astype(np.uint8)
            found = _locate(grey, slices)
            assert found is not None, "crop not found in any slice's mirror padding"
            (source_label, top, left) = found
            np.testing.assert_array_equal(np.argmax(label, -1), source_label[top:top + 388, left:left + 388])


def _locate(crop: np.ndarray, slices) -> tuple[np.ndarray, int, int] | None:
    """Where a 572x572 crop sits in some slice's mirror padding: (its padded labels, top, left)."""
    for image, label in slices:
        height, width = covered_size(image.shape)
        padded = mirror_pad(image, height, width)
        for top in range(height - 388 + 1):
            for left in np.flatnonzero(padded[top, :width - 388 + 1] == crop[0, 0]):
                if np.array_equal(padded[top:top + 572, left:left + 572], crop):
                    return mirror_pad(label, height, width, context=0), top, int(left)
    return None


def test_tile_stream_is_a_pure_function_of_seed_and_step(own_data):
    """A resumed run (start_step=k) sees exactly batches k, k+1, ... of an uninterrupted one."""
    data = own_dataset(own_data, "tile")
    whole = [(i.numpy(), lbl.numpy()) for i, lbl in data.train_fn().take(5)]
    resumed = [(i.numpy(), lbl.numpy()) for i, lbl in data.train_fn(start_step=3).take(2)]
    for (a, b), (c, d) in zip(whole[3:], resumed, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    other = own_dataset(own_data, "tile", rank=1, num_workers=2)
    assert not np.array_equal(next(iter(other.train_fn()))[0].numpy(), whole[0][0])


def test_evaluation_tiles_cover_the_slice_with_real_labels_only():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (500, 800), dtype=np.uint8)
    label = rng.integers(0, CLASSES, (500, 800), dtype=np.uint8)
    images, labels = evaluation_tiles(image, label)
    assert tile_offsets(500) == [0, 112] and tile_offsets(800) == [0, 388, 412]
    assert len(images) == len(labels) == 6
    covered = np.zeros(label.shape, bool)
    for tile, (top, left) in zip(labels, [(t, s) for t in (0, 112) for s in (0, 388, 412)], strict=True):
        np.testing.assert_array_equal(tile, label[top:top + 388, left:left + 388])
        covered[top:top + 388, left:left + 388] = True
    assert covered.all()


def test_labels_outside_the_classes_name_file_slice_and_value(tmp_path):
    images = np.zeros((3, 40, 40), np.uint8)
    labels = np.zeros((3, 40, 40), np.uint8)
    labels[2, 5, 5] = 3
    write_stack(tmp_path / "i.tif", images)
    write_stack(tmp_path / "l.tif", labels)
    sources = DataSources(plan_pairs([str(tmp_path / "i.tif")], [str(tmp_path / "l.tif")], "--train_images",
                                     "--train_labels"))
    with pytest.raises(UserInputError, match=r"label value 3 in slice 2 \(l_002\) of .*l.tif is outside 0..2"):
        Dataset(sources, StreamOptions(batch_size=1, seed=0), None, num_classes=3)


def test_memory_estimate_counts_every_copy_and_one_slice_at_work(own_data):
    """In memory: uint8 images and class ids, the largest label volume once more as stored and sorted while it is
    checked, border weight maps as float32; both ways: the largest slice while it is predicted and scored."""
    sources = DataSources(plan_pairs(own_data["train_images"], own_data["train_labels"], "-i", "-l"))
    pixels = 2 * 300 * 450 + 2 * 420 * 500 + 400 * 400
    largest_labels = max(2 * 300 * 450, 2 * 420 * 500, 400 * 400)  # 8-bit label stacks: 2 bytes a pixel to load
    working = slice_working_bytes(420 * 500, CLASSES)
    needs = sources.memory_needs(CLASSES)
    assert needs.in_memory == 2 * pixels + 2 * largest_labels + working and needs.streamed == working
    assert needs.unstreamable is None
    weighted = sources.memory_needs(CLASSES, border_weights=True)
    assert weighted.in_memory == needs.in_memory + 4 * pixels and "--border_weights" in weighted.unstreamable


# Through the command line -------------------------------------------------------


@pytest.mark.slow
def test_train_evaluate_and_predict_own_volumes_with_three_classes_in_tile_mode(own_data, tmp_path):
    """Trained in a process as a user would; predict, export and predict.py then run in this one (run_main)."""
    model, logs = tmp_path / "model", tmp_path / "logs"
    common = ["--num_classes", "3", "--input_mode", "tile", "-b", "1", "--model_dir", str(model),
              "--log_dir", str(logs), "--warmup_steps", "0", "--overlays", "1"]
    result = run_cli("--exec_mode", "train_and_evaluate", "--max_steps", "2",
                     *flags(own_data, "train_images", "train_labels", "val_images", "val_labels"), *common)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_log(logs / "log.json")
    scores = final_eval(records)
    assert {f"eval_dice_class_{k}" for k in range(3)} <= set(scores)
    assert all(0.0 <= scores[f"eval_dice_class_{k}"] <= 1.0 for k in range(3))
    assert "eval_v_rand" in scores and "eval_mask_dice" in scores
    data_record = next(r["data"] for r in records if r.get("step") == "DATA")
    assert data_record["input_mode"] == "tile" and data_record["num_classes"] == 3
    assert [v["size"] for v in data_record["volumes"]][:4] == [[300, 450], [420, 500], [400, 400], [450, 420]]
    overlay = Image.open(next((logs / "overlays").glob("*.png")))
    assert overlay.size == (2 * 420 + 8, 450)  # predicted classes beside the true ones

    result = run_main("--exec_mode", "predict", *flags(own_data, "test_images"), *common)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, shape in (("a", (1, 200, 300)), ("b", (2, 390, 410))):
        masks = tifffile.imread(model / "predictions" / f"{name}-masks.tif")
        assert masks.shape == shape and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1, 2}
    assert (model / "predictions" / "overlays" / "slice_00.png").is_file()
    predict_records = [r["data"] for r in read_log(logs / "log.json") if r.get("step") == "PREDICT"]
    assert [len(r["class_fractions"]) for r in predict_records] == [3, 3]
    assert all(abs(sum(r["class_fractions"]) - 1.0) < 1e-4 for r in predict_records)

    # The export serves the three classes the same way: predict.py on its SavedModel (tile) and on its Keras
    # file (resize), and the SavedModel's own serving signature (resize, in the graph).
    export = tmp_path / "export"
    result = run_main("--exec_mode", "export", "--num_classes", "3", "--model_dir", str(model),
                      "--log_dir", str(logs), "--export_dir", str(export))
    assert result.returncode == 0, result.stderr[-2000:]
    stack = Path(own_data["root"][0]) / "test" / "a.tif"
    for model_form, strategy in ((export / "saved_model", "tile"), (export, "resize")):
        output = tmp_path / f"{strategy}.tif"
        done = run_predict(str(model_form), str(stack), "-o", str(output), "--strategy", strategy)
        assert done.returncode == 0, done.stderr[-2000:]
    # The checkpoint predicted in bf16, the export in float32: an all but untrained model's near-ties differ.
    ours = tifffile.imread(model / "predictions" / "a-masks.tif")
    agreement = np.mean(tifffile.imread(tmp_path / "tile.tif") == ours)
    assert agreement > 0.99, agreement
    served = tf.saved_model.load(str(export / "saved_model")).signatures["serving_default"]
    answer = served(slices=tf.constant(read_stack(stack)))
    assert answer["probabilities"].shape == (1, 200, 300, 3)
    np.testing.assert_array_equal(answer["masks"].numpy(), read_stack(tmp_path / "resize.tif"))

    # A checkpoint of three classes asked for two: one line that names the likely cause, nothing else after it.
    result = run_main("--exec_mode", "predict", "--num_classes", "2", *flags(own_data, "test_images"),
                      "--model_dir", str(model), "--log_dir", str(tmp_path / "logs2"))
    assert result.returncode == 2
    assert "another --num_classes" in result.stderr.strip().splitlines()[-1], result.stderr[-1000:]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["mirrored", pytest.param("horovod", marks=pytest.mark.serial)])  # ranks in step
def test_tile_mode_on_two_replicas(own_data, tmp_path, engine):
    """Each replica draws its own crops; the run completes and checkpoints (tf.distribute now, Horovod on TF 2.15)."""
    from common.compat import KERAS_MAJOR

    flags_ = ["--exec_mode", "train", "--max_steps", "2", "-b", "1", "--num_classes", "3", "--input_mode", "tile",
              "--warmup_steps", "0", *flags(own_data, "train_images", "train_labels"),
              "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "l")]
    if engine == "mirrored":
        if KERAS_MAJOR < 3:
            pytest.skip("the tf.distribute engines are the current stack's (TF 2.15 scales with Horovod)")
        result = run_cli("--distribution", "mirrored", *flags_, env={"UNET2D_CPU_REPLICAS": "2"})
    else:
        require_horovod()
        command = [*MPIRUN, *unet2d_command("--distribution", "horovod", *flags_)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    setup = next(r["data"] for r in read_log(tmp_path / "l" / "log.json") if r.get("step") == "SETUP")
    assert setup["replicas"] == 2
    assert (tmp_path / "m" / "model_checkpoint" / "checkpoint-1.index").is_file()


def _bad_input(root: Path, case: str) -> tuple[list[str], str, dict[str, str]]:
    """Flags for one bad input, the words its error must hold, and extra environment."""
    image, label = np.zeros((2, 64, 64), np.uint8), np.zeros((2, 64, 64), np.uint8)
    write_stack(root / "i.tif", image)
    write_stack(root / "l.tif", label)
    pair = ["--train_images", str(root / "i.tif"), "--train_labels", str(root / "l.tif")]
    if case == "count of stacks":
        write_stack(root / "i2.tif", image)
        return (["--train_images", str(root / "i.tif"), str(root / "i2.tif"), "--train_labels", str(root / "l.tif")],
                "--train_images names 2 stack(s) but --train_labels names 1", {})
    if case == "count of slices":
        write_stack(root / "l.tif", label[:1])
        return pair, "differ: 2 slice(s) of 64x64 vs 1 slice(s) of 64x64", {}
    if case == "size":
        write_stack(root / "l.tif", np.zeros((2, 64, 60), np.uint8))
        return pair, "differ: 2 slice(s) of 64x64 vs 2 slice(s) of 64x60", {}
    if case == "glob matches nothing":
        return ["--train_images", str(root / "nothing*.tif"), "--train_labels", str(root / "l.tif")], \
            "matches no file or folder", {}
    if case == "float labels":
        write_stack(root / "l.tif", label.astype(np.float32))
        return pair, "holds float32 values; labels must be integer class ids", {}
    if case == "colour images":
        tifffile.imwrite(root / "i.tif", np.zeros((2, 64, 64, 3), np.uint8), photometric="rgb")
        return pair, "colour (RGB), not a stack of grey slices", {}
    if case == "colour slice in a folder":
        folder = write_stack(root / "folder", image, as_folder=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "slice_01.png")
        return ["--train_images", str(folder), "--train_labels", str(root / "l.tif")], "must be a grey image", {}
    if case == "label out of range":
        label[1, 3, 3] = 7
        write_stack(root / "l.tif", label)
        return pair, "label value 7 in slice 1 (l_001) of", {}
    if case == "too big for memory":
        return pair, "need about", {"UNET2D_MEMORY_LIMIT_GIB": "0.00001"}
    raise AssertionError(case)


BAD_OWN_DATA = ["count of stacks", "count of slices", "size", "glob matches nothing", "float labels", "colour images",
                "colour slice in a folder", "label out of range", "too big for memory"]


# Found in the headers (shapes, counts, kinds of pixel) or by arithmetic, before any pixel is read: a worker of a
# cluster then fails alone, before its peers wait for it. A label value (or type: any grey image may be a
# label image by its header) needs the labels read.
FOUND_BEFORE_READING = set(BAD_OWN_DATA) - {"label out of range", "float labels"}


@pytest.mark.parametrize("case", BAD_OWN_DATA)
def test_bad_own_data_is_refused_in_one_line_and_header_faults_before_reading(tmp_path, monkeypatch, case):
    """Every kind, through what unet2d.py runs: plan_run before the cluster join (flags, plan from the
    headers, memory check), then load_dataset with that plan (the read); one case also goes through the CLI."""
    from runtime.cli.arguments import parse_config
    from runtime.cli.inputs import load_dataset, plan_run

    data_flags, message, env = _bad_input(tmp_path, case)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = parse_config(["--exec_mode", "train", "--num_classes", "3", "--max_steps", "1", *data_flags])
    stage = "plan_run"
    with pytest.raises(UserInputError) as error:
        plan = plan_run(config)
        stage = "load_dataset"
        load_dataset(config.data, StreamOptions(batch_size=1, seed=0), plan)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert stage == ("plan_run" if case in FOUND_BEFORE_READING else "load_dataset"), stage


@pytest.mark.slow
def test_bad_own_data_through_the_cli_is_status_2_and_no_checkpoint(tmp_path, monkeypatch):
    data_flags, message, env = _bad_input(tmp_path, "label out of range")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_main("--exec_mode", "train", "--num_classes", "3", "--max_steps", "1", *data_flags,
                      "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "logs"))
    assert result.returncode == 2, result.stderr[-1500:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("unet2d.py: error:") and message in last, last
    assert "Traceback" not in result.stderr
    checkpoints = tmp_path / "m" / "model_checkpoint"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--train_images", "x.tif"], "--train_images and --train_labels go together"),
    (["--data_dir", "d", "--val_images", "v", "--val_labels", "w", "--fold", "0"], "give one of them"),
    (["--data_dir", "d", "--num_classes", "1"], "--num_classes must be in 2..255"),
    (["--exec_mode", "predict", "--test_images", "a", "--predict_input", "b"], "give one"),
    (["--exec_mode", "evaluate", "--train_images", "a", "--train_labels", "b"], "needs --fold 0..4 or --val_images"),
])
def test_own_data_flag_errors(argv, message):
    result = run_cli(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_predict_strategy_follows_the_input_mode():
    from runtime.cli.arguments import parse_args

    assert parse_args(["--synth_data"]).predict_strategy == "resize"
    assert parse_args(["--synth_data", "--input_mode", "tile"]).predict_strategy == "tile"
    assert parse_args(["--synth_data", "--input_mode", "tile", "--predict_strategy", "resize"]).predict_strategy \
        == "resize"
    logged = vars(parse_args(["--synth_data", "--input_mode", "tile"]))  # PARAMETER logs them: JSON through and back
    assert json.loads(json.dumps(logged)) == logged


def test_more_replicas_than_training_slices_is_a_one_line_error(tmp_path):
    write_stack(tmp_path / "i.tif", np.zeros((1, 40, 40), np.uint8))
    write_stack(tmp_path / "l.tif", np.zeros((1, 40, 40), np.uint8))
    sources = DataSources(plan_pairs([str(tmp_path / "i.tif")], [str(tmp_path / "l.tif")], "-i", "-l"))
    data = Dataset(sources, StreamOptions(batch_size=1, seed=0, rank=1, num_workers=2), None, input_mode="tile",
                   num_classes=CLASSES)
    with pytest.raises(UserInputError, match="1 training slice.s. cannot feed 2 replicas"):
        data.train_fn()
