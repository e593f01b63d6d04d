#!/usr/bin/env python3
"""The fastest a UNet step could be on this machine: its convolution kernels alone, summed.

For every convolution of the model (its own layer shapes, at the given batch
size and dtype) this times the three kernels a training step runs: forward,
backward-data (the input gradient) and backward-filter (the weight gradient),
as bare TensorFlow ops with no Keras, casts, optimizer or input pipeline.
Their sum is the best possible step time; a measured step as a fraction of
it says how much of the kernels' speed the training loop keeps, in numbers
that compare across machines.

Where the model replaces TensorFlow's weight-gradient kernel by matrix
products (on CPUs, layers of 128+ channels: model/matmul_conv.py), that
form is timed too, and the ceiling of the kernels the model really runs
("own") is reported beside TensorFlow's.

    python -m benchmarks.kernel_ceiling --batch_size 2             # fp32 and bf16, on whichever CPU runs it
    python -m benchmarks.kernel_ceiling --dtype auto --base_filters 8

On a CPU without native bfloat16 the bf16 ceiling is that of the emulated
kernels; where bf16 cannot run at all (an AVX-512 CPU with oneDNN capped
below it, see runtime/execution/device.py) it is reported as such, not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from common.compat import keras
from common.errors import UserInputError
from model.matmul_conv import MatmulGradConv2D, filter_gradient
from model.unet import build_unet
from runtime.execution.device import choose_precision, describe_cpu, select_device

DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16}


@dataclass
class ConvShape:
    name: str
    input_shape: tuple[int, int, int]  # height, width, channels (batch left out)
    output_shape: tuple[int, int, int]
    kernel_shape: tuple[int, int, int, int]  # as the layer stores it
    strides: int
    padding: str
    transposed: bool
    first: bool  # the first layer needs no input gradient
    matmul_filter_gradient: bool  # the model computes this layer's weight gradient as matmuls

    @property
    def flops_per_image(self) -> float:
        """Multiply-adds x2 of the forward pass (the backward kernels cost the same each)."""
        kh, kw = self.kernel_shape[:2]
        small, large = (self.input_shape, self.output_shape) if self.transposed else (self.output_shape,
                                                                                      self.input_shape)
        return 2.0 * small[0] * small[1] * kh * kw * large[2] * small[2]


def model_convolutions(matmul_filter_gradient: bool, base_filters: int = 64) -> list[ConvShape]:
    shapes = []
    for layer in build_unet(0, matmul_filter_gradient=matmul_filter_gradient, base_filters=base_filters).layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            continue
        transposed = isinstance(layer, keras.layers.Conv2DTranspose)
        matmul = isinstance(layer, MatmulGradConv2D) and layer.uses_matmul_gradient(layer.input.shape)
        shapes.append(ConvShape(layer.name, tuple(layer.input.shape[1:]), tuple(layer.output.shape[1:]),
                                tuple(layer.kernel.shape), layer.strides[0], layer.padding.upper(), transposed,
                                first=not shapes, matmul_filter_gradient=matmul))
    return shapes


def _kernels(conv: ConvShape, batch: int, dtype: tf.DType) -> dict[str, callable]:
    """The forward, backward-data and backward-filter ops of one layer, as compiled functions."""
    strides = [1, conv.strides, conv.strides, 1]
    x = tf.random.normal((batch, *conv.input_shape), dtype=tf.float32)
    y_grad = tf.random.normal((batch, *conv.output_shape), dtype=tf.float32)
    kernel = tf.random.normal(conv.kernel_shape, dtype=tf.float32)
    x, y_grad, kernel = (tf.cast(t, dtype) for t in (x, y_grad, kernel))
    pad = conv.padding
    if conv.transposed:  # the forward op of a transposed convolution is Conv2D's input gradient, and so on
        ops = {
            "forward": lambda: tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(y_grad), filter=kernel,
                                                              out_backprop=x, strides=strides, padding=pad),
            "backward_data": lambda: tf.raw_ops.Conv2D(input=y_grad, filter=kernel, strides=strides, padding=pad),
            "backward_filter": lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=y_grad, filter_sizes=tf.shape(kernel), out_backprop=x, strides=strides, padding=pad),
        }
    else:
        ops = {
            "forward": lambda: tf.raw_ops.Conv2D(input=x, filter=kernel, strides=strides, padding=pad),
            "backward_data": lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=y_grad, strides=strides, padding=pad),
            "backward_filter": lambda: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(kernel), out_backprop=y_grad, strides=strides, padding=pad),
        }
    if conv.first:
        del ops["backward_data"]
    if conv.matmul_filter_gradient:
        ops["backward_filter_matmul"] = lambda: filter_gradient(x, y_grad)
    return {name: tf.function(op) for name, op in ops.items()}


def best_seconds(function, repeats: int) -> float:
    function().numpy()  # trace, and let oneDNN pick and cache its kernel
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function().numpy()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(batch_size: int, dtype: str, repeats: int = 3, base_filters: int = 64) -> dict:
    tf.get_logger().setLevel("ERROR")  # one small function per kernel: TensorFlow warns about "retracing"
    layers = []
    matmul = select_device(no_hpu=False).prefers_matmul_filter_gradient
    for conv in model_convolutions(matmul, base_filters):
        seconds = {name: best_seconds(op, repeats) for name, op in _kernels(conv, batch_size, DTYPES[dtype]).items()}
        flops = conv.flops_per_image * batch_size
        layers.append({**asdict(conv), "seconds": seconds,
                       "gflops_per_s": {name: flops / t / 1e9 for name, t in seconds.items()}})
    totals = {kind: sum(layer["seconds"].get(kind, 0.0) for layer in layers)
              for kind in ("forward", "backward_data", "backward_filter")}
    own_filter = sum(layer["seconds"].get("backward_filter_matmul", layer["seconds"]["backward_filter"])
                     for layer in layers)
    train_step = sum(totals.values())
    own_train_step = train_step - totals["backward_filter"] + own_filter
    return {"dtype": dtype, "batch_size": batch_size, "base_filters": base_filters, "machine": describe_cpu(),
            "seconds": {**totals, "backward_filter_own": own_filter},
            "train_step_s": train_step, "predict_step_s": totals["forward"],
            "train_images_per_s": batch_size / train_step, "predict_images_per_s": batch_size / totals["forward"],
            "own_train_step_s": own_train_step, "own_train_images_per_s": batch_size / own_train_step,
            "layers": layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("both", "auto", *sorted(DTYPES)), default="both",
                        help="both: the fp32 and the bf16 ceiling; auto: what --dtype auto runs here")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--base_filters", type=int, default=64, help="the UNet's width, as unet2d.py takes it")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per kernel; the best counts")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (one dtype only)")
    args = parser.parse_args()
    device = select_device(no_hpu=False)
    if args.dtype == "auto":
        args.dtype = choose_precision("auto", device).dtype
    if args.json and args.dtype == "both":
        parser.error("--json takes one --dtype")
    cpu = describe_cpu()
    print(f"# {cpu['cpu']} ({cpu['isa']}; native bf16: {cpu['native_bf16']}), base_filters {args.base_filters}",
          file=sys.stderr if args.json else sys.stdout)
    for dtype in ("fp32", "bf16") if args.dtype == "both" else (args.dtype,):
        try:
            choose_precision(dtype, device)
        except UserInputError as error:
            print(f"{dtype}: not measured: {error}")
            continue
        result = measure(args.batch_size, dtype, args.repeats, args.base_filters)
        if args.json:
            print(json.dumps(result))
            return
        for layer in result["layers"]:
            rates = "  ".join(f"{k} {v:6.0f}" for k, v in layer["gflops_per_s"].items())
            print(f"{layer['name']:24s} GFLOP/s: {rates}")
        print(f"{dtype} batch {args.batch_size}: TensorFlow's kernels alone {result['train_step_s']:.3f} s per "
              f"training step ({result['train_images_per_s']:.3f} images/s); the model's own "
              f"{result['own_train_step_s']:.3f} s ({result['own_train_images_per_s']:.3f} images/s); "
              f"{result['predict_step_s']:.3f} s per inference step ({result['predict_images_per_s']:.3f} images/s)")


if __name__ == "__main__":
    main()
