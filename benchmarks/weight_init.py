#!/usr/bin/env python3
"""How large a fresh UNet's activations are, layer by layer, under each --weight_init, and how much its output
depends on its input: why a Glorot start spends its first steps predicting one class.

    python -m benchmarks.weight_init --data_dir $DATA --base_filters 8 --seeds 1-5

Each seed's model sees one ISBI training slice (a 572 x 572 crop, grey values in [-1, 1] as training scales them);
the table gives the root mean square of each block's last activation, and the spread over pixels of the
logit difference between the classes (0: a constant predictor).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from benchmarks.collapse import seeds_of
from benchmarks.input_modes import machine_name, tensorflow_version
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from common.config import WEIGHT_INITS
from data_loading.preprocessing import scale_intensity
from data_loading.readers import TiffVolume
from model.unet import build_unet

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("input_conv2", "down1_conv2", "down2_conv2", "down3_conv2", "bottleneck_conv2", "up3_conv2",
          "up2_conv2", "up1_conv2", "output_conv2", "output_logits")


def first_tile(data_dir: Path) -> np.ndarray:
    """A 572 x 572 crop of the first training slice, mirrored at its edges, scaled to [-1, 1] as training does."""
    image = np.asarray(scale_intensity(TiffVolume(data_dir / "train-volume.tif").read(0)))
    return np.pad(image, 30, mode="reflect")[:572, :572][None, :, :, None]


def scales(weight_init: str, seed: int, base_filters: int, tile: np.ndarray) -> dict[str, float]:
    model = build_unet(seed, base_filters=base_filters, weight_init=weight_init)
    probe = keras.Model(model.input, [model.get_layer(name).output for name in LAYERS])
    outputs = [np.asarray(out) for out in probe(tile, training=False)]
    found = {name: float(np.sqrt(np.mean(np.square(out)))) for name, out in zip(LAYERS, outputs, strict=True)}
    logits = outputs[-1][0]
    found["logit_spread"] = float(np.std(logits[..., 1] - logits[..., 0]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="the ISBI 2012 stacks [../shared or ./data]")
    parser.add_argument("--base_filters", type=int, default=8)
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "weight_init.md")
    args = parser.parse_args()
    args.data_dir = args.data_dir or default_data_dir()
    check_data_dir(args.data_dir)
    tile = first_tile(args.data_dir)
    rows = {init: [scales(init, seed, args.base_filters, tile) for seed in seeds_of(args.seeds)]
            for init in WEIGHT_INITS}
    columns = [*LAYERS, "logit_spread"]
    lines = ["# Activation scale of a fresh UNet by --weight_init", "", f"- date: {date.today().isoformat()}",
             f"- machine: {machine_name()}, TensorFlow {tensorflow_version()}",
             f"- command: `python -m benchmarks.weight_init {' '.join(sys.argv[1:])}`",
             f"- input: the first ISBI training slice, 572 x 572, grey values in [-1, 1] (RMS "
             f"{float(np.sqrt(np.mean(np.square(tile)))):.3f})",
             "- each cell: the root mean square of the layer's output, mean over the seeds (min-max); "
             "logit_spread: the standard deviation over pixels of logit 1 - logit 0", "",
             "| layer | " + " | ".join(WEIGHT_INITS) + " |", "|---|" + "---:|" * len(WEIGHT_INITS)]
    for column in columns:
        cells = []
        for init in WEIGHT_INITS:
            values = [row[column] for row in rows[init]]
            cells.append(f"{np.mean(values):.2g} ({min(values):.2g}-{max(values):.2g})")
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
