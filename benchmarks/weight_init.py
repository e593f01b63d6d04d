#!/usr/bin/env python3
"""How large a UNet's activations are, layer by layer: fresh under each --weight_init, or trained (dead units
included), and how much its output depends on its input. Why a Glorot start can get stuck at one class.

    python -m benchmarks.weight_init --data_dir $DATA --base_filters 8 --seeds 1-5
    python -m benchmarks.weight_init --data_dir $DATA --base_filters 8 --models DIR [DIR ...]

Fresh models see one ISBI training slice (a 572 x 572 crop, grey values in [-1, 1] as training scales them);
the table gives the root mean square of each block's last activation, and the spread over pixels of the
logit difference between the classes (0: a constant predictor). ``--models`` reads the latest checkpoint of
each model dir instead and sees three training slices (0, 10, 20); a unit counts as dead when its ReLU is
zero on every pixel of them.
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
from runtime.loop.checkpoints import checkpoint_dir, restore_model

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("input_conv2", "down1_conv2", "down2_conv2", "down3_conv2", "bottleneck_conv2", "up3_conv2",
          "up2_conv2", "up1_conv2", "output_conv1", "output_conv2", "output_logits")


def training_tiles(data_dir: Path, slices: tuple[int, ...] = (0,)) -> np.ndarray:
    """572 x 572 crops of training slices, mirrored at their edges, scaled to [-1, 1] as training does."""
    volume = TiffVolume(data_dir / "train-volume.tif")
    try:
        images = [np.asarray(scale_intensity(volume.read(z))) for z in slices]
    finally:
        volume.close()
    return np.stack([np.pad(image, 30, mode="reflect")[:572, :572, None] for image in images])


def scales(model: keras.Model, tiles: np.ndarray) -> dict[str, float]:
    """Each layer's RMS and dead share (ReLU zero on every pixel of ``tiles``), the logits' spread and the
    share of pixels predicted as the most predicted class."""
    probe = keras.Model(model.input, [model.get_layer(name).output for name in LAYERS])
    outputs = [np.asarray(out) for out in probe(tiles, training=False)]
    found = {name: float(np.sqrt(np.mean(np.square(out)))) for name, out in zip(LAYERS, outputs, strict=True)}
    found.update({f"{name} dead": float(np.mean(out.max(axis=(0, 1, 2)) <= 0))
                  for name, out in zip(LAYERS[:-1], outputs, strict=False)})
    difference = outputs[-1][..., 1] - outputs[-1][..., 0]
    found["logit_spread"] = float(np.std(difference))
    found["majority_share"] = float(max(np.mean(difference > 0), np.mean(difference <= 0)))
    return found


def trained(folder: Path, base_filters: int) -> keras.Model:
    model = build_unet(0, base_filters=base_filters)
    restore_model(model, checkpoint_dir(folder), lambda message: print(f"warning: {message}", file=sys.stderr))
    return model


def trained_table(folders: list[Path], base_filters: int, tiles: np.ndarray) -> list[str]:
    found = {folder.name: scales(trained(folder, base_filters), tiles) for folder in folders}
    names = list(found)
    lines = ["| layer | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for layer in LAYERS[:-1]:
        lines.append(f"| {layer}: RMS (dead) | " + " | ".join(
            f"{found[name][layer]:.2g} ({found[name][layer + ' dead']:.0%})" for name in names) + " |")
    for key in ("logit_spread", "majority_share"):
        lines.append(f"| {key} | " + " | ".join(f"{found[name][key]:.3f}" for name in names) + " |")
    return lines


def fresh_table(seeds: list[int], base_filters: int, tile: np.ndarray) -> list[str]:
    rows = {init: [scales(build_unet(seed, base_filters=base_filters, weight_init=init), tile) for seed in seeds]
            for init in WEIGHT_INITS}
    lines = ["| layer | " + " | ".join(WEIGHT_INITS) + " |", "|---|" + "---:|" * len(WEIGHT_INITS)]
    for column in [*LAYERS, "logit_spread"]:
        cells = []
        for init in WEIGHT_INITS:
            values = [row[column] for row in rows[init]]
            cells.append(f"{np.mean(values):.2g} ({min(values):.2g}-{max(values):.2g})")
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="the ISBI 2012 stacks [../shared or ./data]")
    parser.add_argument("--base_filters", type=int, default=8)
    parser.add_argument("--seeds", default="1-5", help="fresh models: '1-5' or '1,5,7'")
    parser.add_argument("--models", type=Path, nargs="+", default=None, help="trained model dirs instead")
    parser.add_argument("--out", type=Path, default=None,
                        help="the record [benchmarks/results/weight_init.md, or dead_units.md with --models]")
    args = parser.parse_args()
    args.data_dir = args.data_dir or default_data_dir()
    check_data_dir(args.data_dir)
    head = ["", f"- date: {date.today().isoformat()}",
            f"- machine: {machine_name()}, TensorFlow {tensorflow_version()}",
            f"- command: `python -m benchmarks.weight_init {' '.join(sys.argv[1:])}`"]
    if args.models:
        tiles = training_tiles(args.data_dir, (0, 10, 20))
        out = args.out or ROOT / "benchmarks" / "results" / "dead_units.md"
        lines = ["# Activations and dead units of trained UNets", *head,
                 "- input: ISBI training slices 0, 10 and 20, 572 x 572, grey values in [-1, 1]",
                 "- each cell: the RMS of the layer's output (the share of its units whose ReLU is zero on every "
                 "pixel); logit_spread: the standard deviation over pixels of logit 1 - logit 0; majority_share: "
                 "the share of pixels predicted as the most predicted class", "",
                 *trained_table(args.models, args.base_filters, tiles)]
    else:
        tile = training_tiles(args.data_dir)
        out = args.out or ROOT / "benchmarks" / "results" / "weight_init.md"
        lines = ["# Activation scale of a fresh UNet by --weight_init", *head,
                 f"- input: the first ISBI training slice, 572 x 572, grey values in [-1, 1] (RMS "
                 f"{float(np.sqrt(np.mean(np.square(tile)))):.3f})",
                 "- each cell: the root mean square of the layer's output, mean over the seeds (min-max); "
                 "logit_spread: the standard deviation over pixels of logit 1 - logit 0", "",
                 *fresh_table(seeds_of(args.seeds), args.base_filters, tile)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
