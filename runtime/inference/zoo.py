"""A BioImage Model Zoo package of a trained model, for Fiji/deepImageJ, ilastik, napari and bioimage.io.

The package is a folder and the same files as one zip (what the zoo takes):

- ``bioimageio.yaml``: the model description, format 0.5 (``FORMAT_VERSION``);
- ``saved_model.zip``: weights as ``tensorflow_saved_model_bundle`` (the
  zoo's TensorFlow loader calls its ``serve`` function, which returns a dict);
- ``weights.onnx``: the same graph converted by tf2onnx, its parent named;
- ``unet2d-network.onnx``: the bare network (572x572 tiles -> 388x388
  probabilities), an attachment that ``predict.py`` runs with its own
  strategies, test-time augmentation and ensembles;
- ``test_input.npy`` / ``test_output.npy``: one real slice and the model's
  class probabilities for it; ``sample_input.tif`` / ``sample_output.tif``;
- ``cover.png`` (the slice with its segmentation), ``README.md`` and ``LICENSE``.

The weights are whole-slice graphs (runtime/inference/whole_slice.py): any
height and width in, the same size out, by the strategy the model was trained
for. The pre-processing is the zoo's standard ``ensure_dtype`` and
``scale_linear`` (grey value / 127.5 - 1, as training scaled it). A model
trained on 16-bit or float images (data_loading/intensity.py) takes their
grey values: ``clip`` to its window, then ``scale_linear`` onto [-1, 1], and
the package holds the window as ``intensity.json`` for ``predict.py``. The output
is already class probabilities (a softmax inside the graph). Before the package
appears under its name, each weight format is run on the test input and must
reproduce the test output within the zoo's default tolerance; otherwise
nothing is written.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tifffile
import yaml
from PIL import Image

from common.compat import keras
from common.errors import UserInputError
from data_loading.intensity import INTENSITY_FILE, IntensityWindow, save_window
from runtime.inference import onnx_models
from runtime.inference.export import TILE_SPEC, class_probabilities
from runtime.inference.export import ZOO_DESCRIPTION as DESCRIPTION_FILE
from runtime.inference.strategies import class_ids
from runtime.inference.whole_slice import slice_probabilities

FORMAT_VERSION = "0.5.4"  # the newest model format that bioimageio.core 0.11's spec 0.5.12 and older readers share
SAVED_MODEL_ZIP = "saved_model.zip"
ONNX_FILE = "weights.onnx"
LICENSE_ID = "Apache-2.0"  # the licence of the Habana and NVIDIA UNet2D recipes this project reproduces
GAIN, OFFSET = 1.0 / 127.5, -1.0  # preprocessing.scale_intensity as the zoo's scale_linear
TOLERANCE = {"relative": 1e-3, "absolute": 1e-3}  # the zoo's default ReproducibilityTolerance
PLACEHOLDER_AUTHOR = "unknown (fill in with --zoo_author)"
UNET_CITATION = {"text": "Ronneberger, Fischer and Brox (2015). U-Net: Convolutional Networks for Biomedical Image "
                         "Segmentation. MICCAI.", "doi": "10.1007/978-3-319-24574-4_28"}
ISBI_CITATIONS = (
    {"text": "Cardona et al. (2010). An integrated micro- and macroarchitectural analysis of the Drosophila brain "
             "by computer-assisted serial section electron microscopy. PLoS Biology 8(10): e1000502 (the ISBI 2012 "
             "data).", "doi": "10.1371/journal.pbio.1000502"},
    {"text": "Arganda-Carreras et al. (2015). Crowdsourcing the creation of image segmentation algorithms for "
             "connectomics. Frontiers in Neuroanatomy (the ISBI 2012 challenge and its scores).",
     "doi": "10.3389/fnana.2015.00142"},
)
PROJECT_CITATION = {
    "text": "UNet2D medical image segmentation for TensorFlow 2 (this project): the Habana Gaudi UNet2D recipe, "
            "after NVIDIA's UNet_Medical, made current.",
    "url": "https://github.com/HabanaAI/Model-References/tree/master/TensorFlow/computer_vision/Unet2D"}
BASE_TAGS = ("unet", "2d", "semantic-segmentation", "tensorflow", "onnx")
ISBI_TAGS = ("electron-microscopy", "membranes", "neurons", "isbi2012")  # only for a model trained on ISBI 2012


def citations(dataset: str) -> list[dict[str, str]]:
    """The U-Net paper and this project; the ISBI 2012 data and challenge only for a model trained on them."""
    return [UNET_CITATION, *(ISBI_CITATIONS if dataset == "isbi2012" else ()), PROJECT_CITATION]


def tags(dataset: str) -> list[str]:
    return [*BASE_TAGS[:3], *(ISBI_TAGS if dataset == "isbi2012" else ()), *BASE_TAGS[3:]]


@dataclass(frozen=True)
class PackageInfo:
    """What the description says about the run that made the model."""

    name: str
    strategy: str  # resize or tile: the --input_mode it was trained with, and so how it segments
    base_filters: int
    num_classes: int
    training_precision: str  # e.g. "bf16": the weights are exported in float32 either way
    engine: str
    authors: Sequence[str] = ()
    flags: Mapping[str, Any] = field(default_factory=dict)  # the PARAMETER line of the training run
    scores: Mapping[str, Any] = field(default_factory=dict)  # its last evaluation's log line
    data: str = ""  # what it was trained on, in words
    sample_source: str = ""  # where the test slice comes from
    window: IntensityWindow | None = None  # the grey-value window of a model trained on non-8-bit images
    dataset: str = ""  # isbi2012, layout, own, random or "" (runtime/loop/model_card.dataset_of): tags, citations


def preprocessing(window: IntensityWindow | None) -> list[dict[str, Any]]:
    """The zoo's pre-processing steps: 8-bit grey values, or the window's, onto the [-1, 1] training saw."""
    if window is None:
        steps = [{"id": "scale_linear", "kwargs": {"gain": GAIN, "offset": OFFSET}}]
    else:
        gain = 2.0 / (window.high - window.low)
        steps = [{"id": "clip", "kwargs": {"min": window.low, "max": window.high}},
                 {"id": "scale_linear", "kwargs": {"gain": gain, "offset": -1.0 - window.low * gain}}]
    float32 = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    return [float32, *steps, float32]  # the last: else the zoo casts back to the input's data type


def preprocess(raw: np.ndarray, window: IntensityWindow | None) -> np.ndarray:
    """``preprocessing(window)`` in NumPy, step for step as the zoo runs it."""
    values = raw.astype(np.float32)
    for step in preprocessing(window):
        kwargs = step["kwargs"]
        if step["id"] == "clip":
            values = np.clip(values, np.float32(kwargs["min"]), np.float32(kwargs["max"]))
        elif step["id"] == "scale_linear":
            values = (values * np.float32(kwargs["gain"]) + np.float32(kwargs["offset"])).astype(np.float32)
    return values


def _input_words(window: IntensityWindow | None, dtype: str) -> str:
    if window is None:
        return "grey EM slice, 8-bit values (0-255)"
    return f"grey EM slice, {dtype} values, the window [{window.low:g}, {window.high:g}] onto [-1, 1]"


class ZooModule(tf.Module):
    """The SavedModel of the package: ``serve`` (and ``serving_default``) for whole slices, and
    ``class_probabilities`` for tiles, both over the same float32 variables."""

    def __init__(self, model: keras.Model, strategy: str) -> None:
        super().__init__(name="unet2d_zoo")
        self.model = model
        self.network = tf.function(lambda tiles: class_probabilities(model(tiles, training=False)))
        self.serve = slice_probabilities(self.network, strategy)
        self.class_probabilities = tf.function(lambda tiles: {"probabilities": self.network(tiles)},
                                               input_signature=[TILE_SPEC])


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder))


def _class_names(num_classes: int) -> list[str]:
    return ["membrane", "cell"] if num_classes == 2 else [f"class_{k}" for k in range(num_classes)]


def _axes(kind: str, num_classes: int) -> list[dict[str, Any]]:
    """NHWC, as TensorFlow computes: batch, y, x, channel. Outputs have the input's height and width."""
    if kind == "input":
        space = [{"type": "space", "id": axis, "size": {"min": 64, "step": 1}}
                 for axis in ("y", "x")]
        channels = ["grey"]
    else:
        space = [{"type": "space", "id": axis, "size": {"tensor_id": "raw", "axis_id": axis}}
                 for axis in ("y", "x")]
        channels = _class_names(num_classes)
    return [{"type": "batch"}, *space, {"type": "channel", "channel_names": channels}]


def _describe(info: PackageInfo, tensorflow_version: str, input_type: str) -> dict[str, Any]:
    authors = [{"name": name} for name in (info.authors or [PLACEHOLDER_AUTHOR])]
    classes = _class_names(info.num_classes)
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": info.name,
        "description": (f"UNet (Ronneberger et al. 2015) for {info.num_classes}-class segmentation of "
                        f"{'electron microscopy slices' if info.dataset == 'isbi2012' else 'grey-value slices'} "
                        f"({', '.join(classes)}), width {info.base_filters}, trained with "
                        f"--input_mode {info.strategy} in {info.training_precision}, exported in float32."),
        "authors": authors,
        "cite": citations(info.dataset),
        "license": LICENSE_ID,
        "tags": tags(info.dataset),
        "documentation": "README.md",
        "covers": ["cover.png"],
        "attachments": [{"source": onnx_models.NETWORK_FILE}, {"source": "LICENSE"}]
        + ([{"source": INTENSITY_FILE}] if info.window else []),
        "inputs": [{
            "id": "raw",
            "description": f"{_input_words(info.window, input_type)}; any height and width from 64 pixels",
            "axes": _axes("input", info.num_classes),
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": input_type},
            "preprocessing": preprocessing(info.window),
        }],
        "outputs": [{
            "id": "probabilities",
            "description": f"class probabilities per pixel ({', '.join(classes)}), summing to 1 over the channels",
            "axes": _axes("output", info.num_classes),
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            "tensorflow_saved_model_bundle": {
                "source": SAVED_MODEL_ZIP,
                "tensorflow_version": tensorflow_version,
                "comment": f"trained in {info.training_precision}, saved in float32; signature 'serve' (whole "
                           "slices) and 'class_probabilities' (572x572 tiles)",
            },
            "onnx": {
                "source": ONNX_FILE,
                "opset_version": onnx_models.OPSET,
                "parent": "tensorflow_saved_model_bundle",
                "comment": "converted from the SavedModel's 'serve' function by tf2onnx",
            },
        },
        "config": {"unet2d": {"base_filters": info.base_filters, "num_classes": info.num_classes,
                              "input_mode": info.strategy, "training_precision": info.training_precision,
                              "weights_precision": "float32", "engine": info.engine,
                              "network_input": [572, 572, 1], "network_output": [388, 388, info.num_classes]}},
    }


def _score_lines(scores: Mapping[str, Any]) -> list[str]:
    if not scores:
        return ["This model's log holds no evaluation: evaluate it (`--exec_mode evaluate`) before sharing it."]
    lines = ["| score | value |", "|---|---:|"]
    names = (("eval_dice_score", "eval Dice (the recipe's score)"), ("eval_ce_loss", "eval cross-entropy"),
             ("eval_v_rand_thinned", "V_Rand, thinned (ISBI 2012 organisers' score)"),
             ("eval_v_rand_thinned_threshold", "its threshold on P(cell)"),
             ("eval_v_info_thinned", "V_Info, thinned (organisers' score)"),
             ("eval_v_info_thinned_threshold", "its threshold on P(cell)"),
             ("eval_mask_dice", "Dice of the masks"))
    for key, label in names:
        if key in scores:
            value = scores[key]
            lines.append(f"| {label} | {value:.4f} |" if isinstance(value, float) else f"| {label} | {value} |")
    return lines


def _documentation(info: PackageInfo, agreement: Mapping[str, float]) -> str:
    flags = " ".join(f"--{key} {value}" for key, value in sorted(info.flags.items())
                     if value not in (None, False, "", []) and key not in ("data_dir", "model_dir", "log_dir"))
    checks = "\n".join(f"- `{name}`: largest difference to the test output {diff:.2e}"
                       for name, diff in agreement.items())
    return "\n".join([
        f"# {info.name}",
        "",
        "A UNet for the segmentation of electron-microscopy slices into "
        f"{', '.join(_class_names(info.num_classes))}, trained and exported by the UNet2D recipe for TensorFlow 2.",
        "",
        "## Inputs and outputs",
        ("- Input `raw`: one grey channel, 8-bit grey values (0-255), batch x height x width x 1, any size from "
         "64 pixels. The pre-processing scales them to [-1, 1] (`scale_linear`, gain 1/127.5, offset -1), as "
         "training did." if info.window is None else
         "- Input `raw`: one grey channel, batch x height x width x 1, any size from 64 pixels. The model was "
         f"trained on images that were not 8-bit: the pre-processing clips grey values to the window "
         f"[{info.window.low:g}, {info.window.high:g}] ({info.window.source}) and scales it onto [-1, 1] "
         f"(`clip`, `scale_linear`); the window is also in `{INTENSITY_FILE}`."),
        f"- Output `probabilities`: batch x height x width x {info.num_classes}, class probabilities at the "
        "input's own size.",
        f"- Inside the graph: the `{info.strategy}` strategy the model was trained for. "
        + ("The slice is resized to 388x388, zero-padded to the network's 572x572 input, and the probabilities "
           "resized back." if info.strategy == "resize" else
           "The slice is mirrored out by 92 pixels and cut into 572x572 tiles whose 388x388 centres are "
           "stitched at full resolution."),
        "- A tool that cuts large images into blocks should give each block at least 388 pixels a side; the "
        "model adds its own context at a block's edges.",
        "",
        "## Training data",
        info.data or "Not recorded.",
        "",
        "## Training",
        f"Width {info.base_filters} (`--base_filters`), {info.num_classes} classes, `--input_mode "
        f"{info.strategy}`, trained in {info.training_precision} on the `{info.engine}` engine; the weights are "
        "float32 in every format here.",
        "",
        f"Flags of the training run: `{flags}`" if flags else "The flags of the training run were not logged.",
        "",
        "## Validation",
        *_score_lines(info.scores),
        "",
        f"The test tensors are {info.sample_source}. At export every weight format was run on the test input:",
        checks,
        "",
        "## Use",
        "- bioimage.io / `bioimageio.core`: `bioimageio predict` or `bioimageio test` on this folder or its zip.",
        "- ilastik (Neural Network Classification) and deepImageJ: load the zip; ilastik runs the ONNX weights, "
        "deepImageJ the TensorFlow ones.",
        f"- This project: `python predict.py <this folder> stack.tif --strategy {info.strategy}` (ONNX Runtime).",
        "",
        "## Licence and citation",
        f"{LICENSE_ID}. Cite the U-Net paper"
        + (" and the ISBI 2012 data" if info.dataset == "isbi2012" else "") + f" (see `cite` in {DESCRIPTION_FILE}).",
        "",
    ])


def _license_text() -> str:
    return (f"SPDX-License-Identifier: {LICENSE_ID}\n\nLicensed under the Apache License, Version 2.0; you may not "
            "use this model except in compliance with the License. You may obtain a copy of the License at "
            "https://www.apache.org/licenses/LICENSE-2.0\n")


COVER_WIDTH = 640  # the zoo asks for covers under 500 KB; an EM slice's noise compresses poorly


def _png(picture: np.ndarray) -> bytes:
    image = Image.fromarray(picture)
    if image.width > COVER_WIDTH:
        image = image.resize((COVER_WIDTH, round(image.height * COVER_WIDTH / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _largest_difference(actual: np.ndarray, expected: np.ndarray, name: str) -> float:
    """Refuses (UserInputError) what the zoo's own test would fail: more than 100 per million elements
    outside its default tolerance."""
    if actual.shape != expected.shape:
        raise UserInputError(f"the {name} weights give an output of shape {actual.shape}, the test output is "
                             f"{expected.shape}; nothing was written")
    difference = np.abs(actual.astype(np.float64) - expected)
    outside = difference > TOLERANCE["absolute"] + TOLERANCE["relative"] * np.abs(expected)
    if outside.sum() * 1e6 > 100 * outside.size:
        raise UserInputError(f"the {name} weights disagree with the test output (largest difference "
                             f"{difference.max():.3g}); nothing was written")
    return float(difference.max())


CoverFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # uint8 slice, its class ids -> RGB picture


def write_package(model: keras.Model, folder: Path, info: PackageInfo, sample: np.ndarray,
                  draw_cover: CoverFn) -> tuple[Path, Path]:
    """Write the package into ``folder`` and ``folder``.zip; each appears under its name only once whole and
    checked, an earlier package there being replaced only then. ``sample``: one slice, 8-bit for a model
    without a window, else in grey values of the window's range."""
    folder = Path(folder)
    archive = folder.with_suffix(".zip")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        package = staging / folder.name
        package.mkdir()
        module = ZooModule(model, info.strategy)
        saved = staging / "saved_model"
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
        _zip_folder(saved, package / SAVED_MODEL_ZIP)
        onnx_models.convert(module.serve, package / ONNX_FILE)
        onnx_models.convert(module.class_probabilities, package / onnx_models.NETWORK_FILE)

        raw = sample[np.newaxis, :, :, np.newaxis]
        scaled = preprocess(raw, info.window)
        expected = module.serve(scaled)["probabilities"].numpy()
        np.save(package / "test_input.npy", raw)
        np.save(package / "test_output.npy", expected)
        tifffile.imwrite(package / "sample_input.tif", sample)
        tifffile.imwrite(package / "sample_output.tif", expected[0].transpose(2, 0, 1), photometric="minisblack")
        reloaded = tf.saved_model.load(str(saved))  # held: its functions need the object's variables alive
        agreement = {
            "tensorflow_saved_model_bundle": _largest_difference(
                reloaded.serve(scaled)["probabilities"].numpy(), expected,
                "tensorflow_saved_model_bundle"),
            "onnx": _largest_difference(_onnx_output(package / ONNX_FILE, scaled), expected,
                                        "onnx"),
        }
        grey = np.rint(np.clip((scaled[0, :, :, 0] + 1.0) * 127.5, 0, 255)).astype(np.uint8)  # as the network saw it
        (package / "cover.png").write_bytes(_png(draw_cover(grey, class_ids(expected[0]))))
        if info.window is not None:
            save_window(package, info.window)
        (package / "README.md").write_text(_documentation(info, agreement), encoding="utf-8")
        (package / "LICENSE").write_text(_license_text(), encoding="utf-8")
        description = _describe(info, tf.__version__.split("-")[0], str(sample.dtype))
        (package / DESCRIPTION_FILE).write_text(yaml.safe_dump(description, sort_keys=False, width=110),
                                                encoding="utf-8")
        _zip_folder(package, staging / archive.name)
        _replace(package, folder)
        os.replace(staging / archive.name, archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, archive


def _onnx_output(path: Path, inputs: np.ndarray) -> np.ndarray:
    model = onnx_models.session(path)
    return model.run(None, {model.get_inputs()[0].name: inputs})[0]


def _replace(staged: Path, target: Path) -> None:
    """``staged`` onto ``target``; a package already there is moved aside first and removed only after."""
    if target.exists() and not (target / DESCRIPTION_FILE).is_file():
        raise UserInputError(f"{target} exists and is not a model package written by this project; "
                             "choose another --export_dir")
    previous = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
    if previous is not None:
        os.replace(target, previous)
    os.replace(staged, target)
    if previous is not None:
        shutil.rmtree(previous)
