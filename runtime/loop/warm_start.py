"""Starting a training run from a trained model's weights (--init_from), and keeping its encoder fixed.

A source is anything this project writes that holds a trained UNet: a model
dir (its newest intact checkpoint, as evaluate takes it), a checkpoint
prefix, an export folder, its ``unet2d.keras`` or ``saved_model/``, or a zoo
package (folder, ``bioimageio.yaml`` or zip). Every kind is read into a UNet
of the source's own width and classes; its weights then go into the run's
model layer by layer, by name. A layer whose shapes differ (the output layer,
when --num_classes differs) keeps its fresh initialisation. The width must
match: the inner layers would differ everywhere.

Checks that cost next to nothing (the path, the width, damage) run in
``find_source``, before a worker joins its cluster; ``initialise`` then loads.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from common.compat import keras, stack_name
from common.errors import UserInputError
from model.unet import build_unet
from runtime.inference.export import KERAS_FILE, SAVED_MODEL_DIR, ZOO_DESCRIPTION, ZOO_PACKAGE
from runtime.inference.zoo import SAVED_MODEL_ZIP
from runtime.loop import checkpoints, portable

FLAG = "--init_from"
ENCODER_PREFIXES = ("input_", "down")  # the contracting path: the input block and the down blocks
SAVED_MODEL_VARIABLES = ("variables", "variables")  # the checkpoint inside every SavedModel


@dataclass(frozen=True)
class Source:
    """A trained UNet to start from: where the user pointed, and the checkpoint or Keras file holding it."""

    given: Path
    checkpoint: str | None  # a TensorFlow checkpoint prefix whose ``model`` is the UNet (checkpoints, SavedModels)
    keras_file: Path | None  # or a .keras file
    width: int
    classes: int

    def describe(self) -> str:
        held = self.checkpoint or self.keras_file
        return str(self.given) if Path(str(held)) == self.given else f"{self.given} ({held})"


def is_encoder(layer_name: str) -> bool:
    return layer_name.startswith(ENCODER_PREFIXES)


def encoder_variables(model: keras.Model) -> list[tf.Variable]:
    return [variable for layer in model.layers if is_encoder(layer.name) for variable in layer.trainable_weights]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _scratch() -> Path:
    """A folder for a zoo package's unpacked weights, removed when the process ends."""
    folder = Path(tempfile.mkdtemp(prefix="unet2d-init-from-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _unpack_saved_model(package: Path) -> Path:
    """The SavedModel of a zoo package written by this project (its folder, description or zip)."""
    scratch = _scratch()
    try:
        if package.suffix == ".zip":
            with zipfile.ZipFile(package) as outer:
                inner = outer.read(SAVED_MODEL_ZIP)
            (scratch / SAVED_MODEL_ZIP).write_bytes(inner)
            bundle = scratch / SAVED_MODEL_ZIP
        else:
            bundle = (package if package.is_dir() else package.parent) / SAVED_MODEL_ZIP
        with zipfile.ZipFile(bundle) as archive:
            archive.extractall(scratch / SAVED_MODEL_DIR)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise UserInputError(f"{FLAG} {package}: cannot read the zoo package's {SAVED_MODEL_ZIP} "
                             f"({error}); is it a package written by this project's export?") from None
    return scratch / SAVED_MODEL_DIR


def _checkpoint_of(path: Path, warn) -> str | Path:
    """The checkpoint prefix (or .keras file) that holds the UNet of ``path``."""
    if Path(f"{path}.index").is_file():
        return str(path)
    if path.is_file() and path.suffix == ".keras":
        return path
    if path.suffix == ".zip" or path.name == ZOO_DESCRIPTION or (path / ZOO_DESCRIPTION).is_file():
        return _checkpoint_of(_unpack_saved_model(path), warn)
    if (path / ZOO_PACKAGE / ZOO_DESCRIPTION).is_file() and not (path / SAVED_MODEL_DIR).is_dir():
        return _checkpoint_of(path / ZOO_PACKAGE, warn)
    if (path / "saved_model.pb").is_file():
        return str(path.joinpath(*SAVED_MODEL_VARIABLES))
    if (path / SAVED_MODEL_DIR / "saved_model.pb").is_file():  # an export folder: the SavedModel reads on any stack
        return str((path / SAVED_MODEL_DIR).joinpath(*SAVED_MODEL_VARIABLES))
    if (path / KERAS_FILE).is_file():
        return path / KERAS_FILE
    folder = checkpoints.checkpoint_dir(path)
    if folder.is_dir():
        newest, _ = checkpoints.newest_intact(folder, warn)  # the damaged newer ones are reported and passed over
        if newest is None:
            raise UserInputError(f"{FLAG} {path}: no checkpoint in {folder}")
        return newest
    raise UserInputError(f"{FLAG} {path}: not a trained model (expected a model dir, a checkpoint prefix, an "
                         f"export folder, {KERAS_FILE}, a SavedModel or a zoo package)")


def _keras_geometry(path: Path) -> tuple[keras.Model, int, int]:
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError) as error:
        raise UserInputError(f"{FLAG} {path}: cannot load it ({str(error).strip().splitlines()[0]})") from None
    widths = [int(layer.kernel.shape[-1]) for layer in model.layers
              if hasattr(layer, "kernel") and list(layer.kernel.shape[:3]) == [3, 3, 1]]
    if not widths:
        raise UserInputError(f"{FLAG} {path}: holds no UNet of this project")
    return model, widths[0], int(model.output_shape[-1])


def find_source(text: str, model_dir: Path, base_filters: int, warn) -> Source:
    """The source of --init_from, checked: it exists, lies outside this run's --model_dir (training there would
    replace what it starts from), reads back whole, and holds a UNet of this run's width."""
    given = Path(text).expanduser()
    if not (given.exists() or Path(f"{given}.index").is_file()):
        raise UserInputError(f"{FLAG} {given}: no such file, folder or checkpoint")
    if _inside(given if given.exists() else given.parent, Path(model_dir)):
        raise UserInputError(f"{FLAG} {given} is inside this run's --model_dir {model_dir}, which training "
                             "overwrites: start from a copy elsewhere, or give another --model_dir")
    try:
        held = _checkpoint_of(given, warn)
    except UserInputError as error:  # e.g. every checkpoint of a model dir damaged: say which flag it is about
        raise (error if str(error).startswith(FLAG) else UserInputError(f"{FLAG} {given}: {error}")) from None
    if isinstance(held, Path):
        _, width, classes = _keras_geometry(held)
        checkpoint, keras_file = None, held
    else:
        reason = checkpoints.damage(held)
        if reason is not None:
            raise UserInputError(f"{FLAG} {given}: the checkpoint {held} is damaged ({reason})")
        try:
            width, classes = checkpoints.model_shape(held)
        except (ValueError, tf.errors.OpError):
            raise UserInputError(f"{FLAG} {given}: {held} holds no UNet of this project, no layer in common with "
                                 "this run's model") from None
        checkpoint, keras_file = held, None
    if width != base_filters:
        raise UserInputError(f"{FLAG} {given} holds a UNet of width {width}; this run builds width {base_filters}: "
                             f"start from a model of the same --base_filters, or give --base_filters {width}")
    return Source(given, checkpoint, keras_file, width, classes)


def _source_model(source: Source, seed: int) -> keras.Model:
    if source.keras_file is not None:
        return _keras_geometry(source.keras_file)[0]
    model = build_unet(seed, source.classes, base_filters=source.width)
    if portable.written_by_other_keras(source.checkpoint):  # trained on the other stack: read by structure
        try:
            portable.load_weights(portable.read_state(source.checkpoint), model)
        except (ValueError, KeyError, tf.errors.OpError) as error:
            raise UserInputError(f"{FLAG} {source.describe()}: written by the other Keras, and its weights do "
                                 f"not read into a UNet on {stack_name()} ({error})") from None
        return model
    status = tf.train.Checkpoint(model=model).read(source.checkpoint).expect_partial()  # read: no save_counter
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise UserInputError(f"{FLAG} {source.describe()}: its weights do not read into a UNet on this stack "
                             f"({str(error).strip().splitlines()[0][:200]})") from None
    return model


def initialise(model: keras.Model, source: Source, seed: int) -> tuple[list[str], list[str]]:
    """Copy the source's weights into ``model`` layer by layer; the names of the layers loaded, and of those
    that keep their fresh weights (their shapes differ, e.g. the output layer of another class count)."""
    trained = {layer.name: layer for layer in _source_model(source, seed).layers if layer.weights}
    loaded, fresh = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        match = trained.get(layer.name)
        shapes = [tuple(weight.shape) for weight in layer.weights]
        if match is None or [tuple(weight.shape) for weight in match.weights] != shapes:
            fresh.append(layer.name)
            continue
        for weight, value in zip(layer.weights, match.get_weights(), strict=True):
            weight.assign(value)
        loaded.append(layer.name)
    if not loaded:
        raise UserInputError(f"{FLAG} {source.describe()}: no layer in common with this run's model")
    return loaded, fresh
