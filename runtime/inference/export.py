"""Saving a trained model for serving, and loading it back without the training code's flags.

An export folder holds two forms of the same float32 weights:

- ``unet2d.keras``: the Keras model (572x572x1 normalised input -> 388x388xK logits);
- ``saved_model/``: a TensorFlow SavedModel with these signatures:
  ``serving_default`` (uint8 slices [count, height, width], any count and
  size -> ``masks`` at the same size by the recipe's resize strategy: 0/255
  for two classes, class ids for more; and ``probabilities``, P(cell) for two
  classes, [count, height, width, K] for more); ``class_probabilities``
  (normalised 572x572 tiles -> 388x388xK), which the overlap-tile strategy
  needs; and, for two-class models, ``cell_probabilities`` (tiles -> 388x388
  P(cell)), as exports before K classes had it.

``load_probability_fn`` accepts either form and returns what
``runtime.inference.strategies`` predicts with.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf

import model.layers  # noqa: F401  (registers the UNet's own Keras layers, which load_model needs)
from common.compat import KERAS_MAJOR, keras
from common.errors import UserInputError
from common.geometry import INPUT_SIZE
from data_loading import preprocessing as pre
from data_loading.intensity import INTENSITY_FILE, IntensityWindow, load_window, parse_window, save_window
from runtime.inference.strategies import ProbabilityFn

KERAS_FILE = "unet2d.keras"
SAVED_MODEL_DIR = "saved_model"
ZOO_DESCRIPTION = "bioimageio.yaml"  # a zoo package folder (runtime/inference/zoo.py) holds it
ZOO_PACKAGE = "bioimageio"  # the package folder in an export folder; the zip beside it takes its name
TILE_SPEC = tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 1], tf.float32, name="inputs")
SLICES_SPEC = tf.TensorSpec([None, None, None], tf.uint8, name="slices")


def class_probabilities(logits: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)


class ServingModule(tf.Module):
    """The model with its pre- and post-processing, as the SavedModel's signatures."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__(name="unet2d")
        self.model = model
        self.num_classes = int(model.output_shape[-1])

    @tf.function(input_signature=[TILE_SPEC])
    def class_probabilities(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": class_probabilities(self.model(inputs, training=False))}

    @tf.function(input_signature=[TILE_SPEC])
    def cell_probabilities(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self.class_probabilities(inputs)["probabilities"][..., 1]}

    @tf.function(input_signature=[SLICES_SPEC])
    def segment(self, slices: tf.Tensor) -> dict[str, tf.Tensor]:
        size = tf.shape(slices)[1:3]
        inputs = pre.normalize_image(slices)  # works on a batch as on one slice
        probabilities = tf.image.resize(self.class_probabilities(inputs)["probabilities"], size, method="bilinear")
        if self.num_classes == 2:
            cell = probabilities[..., 1]
            masks = tf.where(cell >= 0.5, tf.constant(255, tf.uint8), tf.constant(0, tf.uint8))
            return {"masks": masks, "probabilities": cell}
        strongest = self.num_classes - 1 - tf.argmax(tf.reverse(probabilities, axis=[-1]), axis=-1)
        return {"masks": tf.cast(strongest, tf.uint8), "probabilities": probabilities}

    def signatures(self) -> dict[str, tf.types.experimental.GenericFunction]:
        signatures = {"serving_default": self.segment, "class_probabilities": self.class_probabilities}
        if self.num_classes == 2:
            signatures["cell_probabilities"] = self.cell_probabilities
        return signatures


def _replace_dir(staged: Path, target: Path) -> None:
    """Move a complete staged folder onto ``target``; an earlier export there is removed only after."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, previous)
    os.replace(staged, target)
    if previous is not None:
        shutil.rmtree(previous)


def export_model(model: keras.Model, folder: Path, window: IntensityWindow | None = None) -> tuple[Path, Path]:
    """Write both forms into ``folder``; each appears under its final name only once complete. ``window``:
    the grey-value window of a model trained on non-8-bit images, kept beside them as intensity.json (an
    earlier export's is removed when the model has none)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        model.save(staging / KERAS_FILE)
        module = ServingModule(model)
        tf.saved_model.save(module, str(staging / SAVED_MODEL_DIR), signatures=module.signatures())
        os.replace(staging / KERAS_FILE, folder / KERAS_FILE)
        _replace_dir(staging / SAVED_MODEL_DIR, folder / SAVED_MODEL_DIR)
        if window is not None:
            save_window(folder, window)
        else:
            (folder / INTENSITY_FILE).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / KERAS_FILE, folder / SAVED_MODEL_DIR


def trained_input_mode(path: Path) -> str | None:
    """The ``--input_mode`` a model was trained in (resize or tile), as its zoo package's description records
    it: the package itself (folder or zip), or the one beside an export's .keras file or SavedModel; None where
    nothing says."""
    import yaml

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / "saved_model.pb").is_file() and not (folder / ZOO_DESCRIPTION).is_file():
        folder = folder.parent
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                text = archive.read(ZOO_DESCRIPTION).decode("utf-8")
        else:
            described = next((candidate for candidate in (folder / ZOO_DESCRIPTION,
                                                          folder / ZOO_PACKAGE / ZOO_DESCRIPTION)
                              if candidate.is_file()), None)
            if described is None:
                return None
            text = described.read_text(encoding="utf-8")
        mode = yaml.safe_load(text)["config"]["unet2d"]["input_mode"]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile, yaml.YAMLError):
        return None
    return mode if mode in ("resize", "tile") else None


def model_window(path: Path) -> IntensityWindow | None:
    """The grey-value window kept with an exported model (data_loading/intensity.py): in its export folder or
    zoo package (folder or zip), beside its .keras file, or above its SavedModel; None for 8-bit models."""
    path = Path(path)
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                if INTENSITY_FILE not in archive.namelist():
                    return None
                return parse_window(archive.read(INTENSITY_FILE).decode("utf-8"), f"{path}:{INTENSITY_FILE}")
        except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as error:
            raise UserInputError(f"cannot read {path}: {error}") from None
    if (path / "saved_model.pb").is_file() and not (path / INTENSITY_FILE).is_file():
        return load_window(path.parent)
    return load_window(path if path.is_dir() else path.parent)


def load_probability_fn(path: Path) -> tuple[ProbabilityFn, int]:
    """Normalised 572x572 tiles -> class probabilities, and the number of classes, from a .keras file, a
    SavedModel or an export folder (TensorFlow), or from an ONNX network or a zoo package (ONNX Runtime).

    SavedModels exported before K classes have only ``cell_probabilities``;
    their P(cell) is taken as the two-class probabilities [1 - P, P].
    """
    path = Path(path)
    if path.suffix in (".onnx", ".zip", ".yaml") or (path / ZOO_DESCRIPTION).is_file():
        from runtime.inference.onnx_models import network_probability_fn  # ONNX Runtime only when asked for
        return network_probability_fn(path)
    path = readable_form(path)
    try:
        if path.is_file() and path.suffix == ".keras":
            model = keras.models.load_model(path, compile=False)
            return tf.function(lambda inputs: class_probabilities(model(inputs, training=False))), \
                int(model.output_shape[-1])
        if (path / "saved_model.pb").is_file():
            return _saved_model_probabilities(tf.saved_model.load(str(path)).signatures)
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError) as error:
        raise UserInputError(f"cannot load the model {path}: {str(error).strip().splitlines()[0][:300]}") from None
    raise UserInputError(f"not an exported model: {path} (expected a .keras file, a SavedModel folder "
                         f"or an export folder holding {KERAS_FILE})")


def keras_file_major(path: Path) -> int | None:
    """The major version of the Keras that wrote a .keras file (from its metadata), None if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            written = json.loads(archive.read("metadata.json"))["keras_version"]
        return int(str(written).split(".")[0])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None


def readable_form(path: Path) -> Path:
    """The form of an exported model this stack reads: in an export folder the Keras file when this Keras
    wrote it (the quicker to load), else the SavedModel, which both stacks read; a .keras file of the other
    Keras leads to the SavedModel beside it, or is refused in one line that says why."""
    if path.is_dir() and (path / KERAS_FILE).is_file() and not (path / "saved_model.pb").exists():
        if keras_file_major(path / KERAS_FILE) == KERAS_MAJOR or not (path / SAVED_MODEL_DIR).is_dir():
            path = path / KERAS_FILE
        else:
            return path / SAVED_MODEL_DIR
    if path.is_file() and path.suffix == ".keras":
        written = keras_file_major(path)
        if written is not None and written != KERAS_MAJOR:
            beside = path.parent / SAVED_MODEL_DIR
            if (beside / "saved_model.pb").is_file():
                return beside
            raise UserInputError(f"{path} was written by Keras {written}, which this stack (Keras {KERAS_MAJOR}) "
                                 f"cannot read: give the export's {SAVED_MODEL_DIR}/ or its zoo package instead")
    return path


def load_ensemble_probability_fn(paths: list[Path]) -> tuple[ProbabilityFn, int]:
    """``load_probability_fn`` of several exported models, their probabilities averaged; they must agree on
    the classes (their widths may differ: each is only asked for probabilities)."""
    loaded = [load_probability_fn(path) for path in paths]
    classes = [count for _, count in loaded]
    if len(set(classes)) > 1:
        named = ", ".join(f"{path} ({count})" for path, count in zip(paths, classes, strict=True))
        raise UserInputError(f"the models of an ensemble must have the same number of classes: {named}")
    functions = [function for function, _ in loaded]
    if len(functions) == 1:
        return functions[0], classes[0]
    return (lambda inputs: tf.add_n([function(inputs) for function in functions]) / len(functions)), classes[0]


def ensemble_window(paths: list[Path], input_type: np.dtype) -> IntensityWindow | None:
    """The one grey-value window of these models, for an input of ``input_type``; models that keep different
    windows are refused for an input that needs one (8-bit inputs need none)."""
    windows = {path: model_window(path) for path in paths}
    distinct = set(windows.values())
    if len(distinct) > 1 and np.dtype(input_type) != np.uint8:
        named = ", ".join(f"{path} ({window.describe() if window else 'none: trained on 8-bit images'})"
                          for path, window in windows.items())
        raise UserInputError(f"the models of this ensemble map {np.dtype(input_type)} grey values differently, "
                             f"so it cannot segment this input: {named}")
    return next(iter(distinct)) if len(distinct) == 1 else None


def _saved_model_probabilities(signatures) -> tuple[ProbabilityFn, int]:
    if "class_probabilities" in signatures:
        signature = signatures["class_probabilities"]
        classes = int(signature.structured_outputs["probabilities"].shape[-1])
        return lambda inputs: signature(inputs=tf.convert_to_tensor(inputs, tf.float32))["probabilities"], classes
    signature = signatures["cell_probabilities"]

    def two_classes(inputs: tf.Tensor) -> tf.Tensor:
        cell = signature(inputs=tf.convert_to_tensor(inputs, tf.float32))["probabilities"]
        return tf.stack([1.0 - cell, cell], axis=-1)
    return two_classes, 2
