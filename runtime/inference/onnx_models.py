"""ONNX: converting the exported graphs (tf2onnx) and running them (ONNX Runtime).

Both packages are imported only here and only when asked for, so that
training never needs them; a missing one is one line that names it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from common.errors import UserInputError
from common.geometry import INPUT_SIZE
from runtime.inference.strategies import ProbabilityFn

OPSET = 17  # ONNX Runtime 1.14 and later, ilastik's and deepImageJ's runtimes included
NETWORK_FILE = "unet2d-network.onnx"  # 572x572 tiles -> 388x388 probabilities: what predict.py's strategies run


def _require(package: str, purpose: str):
    try:
        return __import__(package)
    except ImportError:
        raise UserInputError(f"{purpose} needs the Python package '{package}', which is not installed "
                             f"(pip install {package}, or scripts/setup_env.sh current)") from None


def convert(function, path: Path) -> Path:
    """Write a traced TensorFlow function with an input signature as an ONNX file at ``path``.

    The file appears under its name only once whole (written beside it, then renamed)."""
    tf2onnx = _require("tf2onnx", "ONNX export")
    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=OPSET)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(proto.SerializeToString())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def session(source: Path | bytes, name: Path | str = ""):
    """An ONNX Runtime session (a file, or a model's bytes read from a zip) on the providers this
    onnxruntime build offers, the CPU last."""
    ort = _require("onnxruntime", "Running ONNX models")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's concern
    try:
        model = source if isinstance(source, bytes) else str(source)
        return ort.InferenceSession(model, sess_options=options, providers=ort.get_available_providers())
    except Exception as error:  # onnxruntime raises its own classes, not OSError, for unreadable files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"cannot load the ONNX model {name or source}: {reason}") from None


def package_network(path: Path) -> tuple[Path | bytes, str]:
    """The tile network of a zoo package written by this project: its folder, description file or zip, or
    one of its ONNX files (the whole-slice weights.onnx leads to the network file beside it)."""
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.read(NETWORK_FILE), f"{path}:{NETWORK_FILE}"
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            raise UserInputError(f"cannot read {NETWORK_FILE} from the zoo package {path}: {error}") from None
    folder = path if path.is_dir() else path.parent
    if path.suffix == ".onnx" and (path.name == NETWORK_FILE or not (folder / NETWORK_FILE).is_file()):
        return path, str(path)
    if not (folder / NETWORK_FILE).is_file():
        raise UserInputError(f"{path} holds no {NETWORK_FILE}: not a zoo package written by this project")
    return folder / NETWORK_FILE, str(folder / NETWORK_FILE)


def network_probability_fn(path: Path) -> tuple[ProbabilityFn, int]:
    """``ProbabilityFn`` and class count of this project's ONNX tile network (572x572 tiles -> 388x388
    probabilities), from the file itself or from the zoo package that holds it."""
    source, name = package_network(Path(path))
    model = session(source, name)
    inputs, outputs = model.get_inputs(), model.get_outputs()
    if len(inputs) != 1 or list(inputs[0].shape[1:]) != [INPUT_SIZE, INPUT_SIZE, 1]:
        raise UserInputError(f"{name} is not this project's tile network (its input is "
                             f"{inputs[0].shape if inputs else 'missing'}): give predict.py the zoo package "
                             f"or its {NETWORK_FILE}")
    classes = outputs[0].shape[-1]
    if not isinstance(classes, int):
        raise UserInputError(f"{name} does not state its number of classes (output shape {outputs[0].shape})")
    input_name = inputs[0].name

    def probabilities(tiles) -> np.ndarray:
        return model.run(None, {input_name: np.asarray(tiles, np.float32)})[0]
    return probabilities, classes
