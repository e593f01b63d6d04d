#!/usr/bin/env python3
"""Segment a grey TIFF stack with a BioImage Model Zoo package through bioimageio.core: another client's
reading of what ``unet2d.py --exec_mode export`` writes, for checking it against ``predict.py``.

Runs in the zoo's environment (``scripts/setup_env.sh zoo``), with none of this project's code:

    $(scripts/setup_env.sh zoo | tail -n 1) scripts/zoo_predict.py model/export/bioimageio.zip stack.tif \\
        -o masks.tif --weight_format onnx

Each slice goes through the package's own pre-processing and weights as one
whole sample (no blocking); the masks are the most probable class per pixel
(0/255 for two classes, as predict.py writes them; class ids for more).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from bioimageio.core import Tensor, create_prediction_pipeline, load_model_description
from bioimageio.core.sample import Sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="the package's folder, its bioimageio.yaml or its zip")
    parser.add_argument("stack", help="multipage grey 8-bit TIFF")
    parser.add_argument("-o", "--output", required=True, help="masks TIFF to write")
    parser.add_argument("--weight_format", choices=("onnx", "tensorflow_saved_model_bundle"), default="onnx")
    args = parser.parse_args(argv)
    package, stack, output = (str(Path(path).resolve()) for path in (args.package, args.stack, args.output))
    # bioimageio.core's TensorFlow backend unzips the weights into ./bioimageio_unzipped_tf_weights: not here.
    with tempfile.TemporaryDirectory(prefix="zoo_predict-") as scratch:
        os.chdir(scratch)
        return predict(package, stack, output, args.weight_format)


def predict(package: str, stack: str, output: str, weight_format: str) -> int:
    description = load_model_description(package)
    slices = np.asarray(tifffile.imread(stack))
    slices = slices[np.newaxis] if slices.ndim == 2 else slices
    source, target = description.inputs[0], description.outputs[0]
    axes = [str(axis.id) for axis in source.axes]  # batch, y, x, channel
    masks = []
    with create_prediction_pipeline(description, weight_format=weight_format) as pipeline:
        for index, image in enumerate(slices):
            tensor = Tensor.from_numpy(image[np.newaxis, :, :, np.newaxis], dims=axes)
            result = pipeline.predict_sample_without_blocking(
                Sample(members={source.id: tensor}, stat={}, id=index))
            probabilities = result.members[target.id].data.transpose("batch", "y", "x", "channel").values[0]
            classes = probabilities.shape[-1]
            ids = (probabilities[..., 1] >= 0.5) if classes == 2 else np.argmax(probabilities, axis=-1)
            masks.append((ids * 255).astype(np.uint8) if classes == 2 else ids.astype(np.uint8))
    tifffile.imwrite(output, np.stack(masks))
    print(f"zoo_predict.py: {len(masks)} masks by bioimageio.core ({weight_format}) to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
