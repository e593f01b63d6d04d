#!/usr/bin/env python3
"""predict.py's engines side by side on one exported model: TensorFlow fp32 (the .keras file), TensorFlow
bf16 (the same weights under Keras's mixed_bfloat16 policy) and ONNX Runtime (the zoo package's network).

For each strategy and batch size it times the whole prediction of the
first ``--slices`` slices of a stack (after one warm-up pass), and measures
how far ONNX Runtime's probabilities and masks are from TensorFlow fp32's on
the whole stack.

    python -m benchmarks.predict_onnx --export model/export --stack $DATA/test-volume.tif
    python -m benchmarks.predict_onnx ... --bf16 auto|on|off --json benchmarks/results/predict_onnx.json

``--bf16 auto`` times bf16 only where the CPU computes it natively (AVX512_BF16
or AMX); elsewhere it is emulated and 7-10x slower, which says nothing about
ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
import tifffile
import yaml

from benchmarks.ablation import invocation
from benchmarks.input_modes import machine_name, tensorflow_version
from common.compat import keras
from runtime.inference import strategies
from runtime.inference.export import KERAS_FILE, ZOO_PACKAGE, class_probabilities, load_probability_fn

ROOT = Path(__file__).resolve().parents[1]


def tensorflow_fn(export: Path, bf16: bool) -> strategies.ProbabilityFn:
    """The exported model as predict.py loads it, or its weights in a bf16 copy of the same UNet."""
    if not bf16:
        return load_probability_fn(export / KERAS_FILE)[0]
    from model.unet import build_unet

    loaded = keras.models.load_model(export / KERAS_FILE, compile=False)
    config = yaml.safe_load((export / ZOO_PACKAGE / "bioimageio.yaml").read_text())["config"]["unet2d"]
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(num_classes=config["num_classes"], base_filters=config["base_filters"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.set_weights(loaded.get_weights())
    return tf.function(lambda inputs: class_probabilities(model(inputs, training=False)))


def seconds_per_slice(function: strategies.ProbabilityFn, slices: np.ndarray, batch_size: int,
                      strategy: str) -> float:
    strategies.predict_probabilities(function, list(slices[:1]), batch_size, strategy)  # trace, warm the caches
    start = time.perf_counter()
    list(strategies.iter_probabilities(function, list(slices), batch_size, strategy))
    return (time.perf_counter() - start) / len(slices)


def agreement(reference: strategies.ProbabilityFn, other: strategies.ProbabilityFn, slices: np.ndarray,
              strategy: str) -> dict:
    """Largest probability difference and the share of equal mask pixels over every slice."""
    largest, equal, total = 0.0, 0, 0
    pairs = zip(strategies.iter_probabilities(reference, list(slices), 4, strategy),
                strategies.iter_probabilities(other, list(slices), 4, strategy), strict=True)
    for expected, actual in pairs:
        largest = max(largest, float(np.abs(expected - actual).max()))
        equal += int((strategies.class_ids(expected) == strategies.class_ids(actual)).sum())
        total += expected.shape[0] * expected.shape[1]
    return {"strategy": strategy, "slices": len(slices), "max_abs_probability_difference": largest,
            "mask_agreement": equal / total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="an export folder written by unet2d.py")
    parser.add_argument("--stack", type=Path, required=True, help="grey TIFF stack (e.g. the ISBI test volume)")
    parser.add_argument("--slices", type=int, default=4, help="slices timed per configuration")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--strategies", nargs="+", default=["resize", "tile"], choices=strategies.STRATEGIES)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--no_agreement", action="store_true", help="skip the whole-stack comparison")
    parser.add_argument("--json", type=Path, default=None, help="append the results to this JSON list")
    args = parser.parse_args(argv)

    from runtime.execution.device import cpu_bf16_support, cpu_flags, onednn_isa_cap, onednn_opts_enabled, read_cpuinfo
    native = cpu_bf16_support(cpu_flags(read_cpuinfo()), onednn_isa_cap(), onednn_opts_enabled()).native
    stack = np.asarray(tifffile.imread(args.stack))
    engines = {"tensorflow fp32": tensorflow_fn(args.export, bf16=False),
               "onnxruntime": load_probability_fn(args.export / ZOO_PACKAGE)[0]}
    if args.bf16 == "on" or (args.bf16 == "auto" and native):
        engines["tensorflow bf16"] = tensorflow_fn(args.export, bf16=True)
    timings = []
    for strategy in args.strategies:
        for batch_size in args.batch_sizes:
            row = {"strategy": strategy, "batch_size": batch_size}
            for name, function in engines.items():
                row[name] = seconds_per_slice(function, stack[:args.slices], batch_size, strategy)
            row["onnxruntime / tensorflow fp32"] = row["onnxruntime"] / row["tensorflow fp32"]
            print(json.dumps(row), flush=True)
            timings.append(row)
    agreements = [] if args.no_agreement else [
        agreement(engines["tensorflow fp32"], engines["onnxruntime"], stack, strategy) for strategy in args.strategies]
    for row in agreements:
        print(json.dumps(row), flush=True)
    record = {"machine": machine_name(), "tensorflow": tensorflow_version(), "native_bf16": native,
              "date": time.strftime("%Y-%m-%d"), "command": invocation("predict_onnx.py", argv),
              "seconds_per_slice": timings, "agreement": agreements}
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps([*previous, record], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
