#!/usr/bin/env python3
"""TensorFlow's weight-gradient kernel against the matmul form (model/matmul_conv.py), per layer and per step.

Per layer: every 3x3 convolution of the UNet at its own shapes, both ways,
with the largest difference between the two. Per step: whole training steps
of two UNets with equal weights, one plain and one with the matmul gradient
where the model uses it, alternated in one process so that the machine's
noise hits both alike.

    python -m benchmarks.filter_gradient --dtype bf16 --batch_size 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from benchmarks.kernel_ceiling import DTYPES, best_seconds, model_convolutions
from common.compat import set_mixed_bfloat16
from model.matmul_conv import filter_gradient
from model.unet import build_unet
from runtime.loop.losses import partial_losses
from runtime.loop.optimizer import FusedAdam


def per_layer(batch_size: int, dtype: tf.DType, repeats: int) -> None:
    print(f"{'layer':18s} {'channels':>11s} {'TensorFlow':>11s} {'matmul':>9s} {'speed-up':>8s}  used  difference")
    totals = {"tensorflow": 0.0, "matmul": 0.0, "used": 0.0}
    for conv in model_convolutions(matmul_filter_gradient=True):
        if conv.transposed or conv.kernel_shape[:2] != (3, 3) or conv.first:
            continue
        x = tf.cast(tf.random.normal((batch_size, *conv.input_shape)), dtype)
        y_grad = tf.cast(tf.random.normal((batch_size, *conv.output_shape)), dtype)
        theirs = tf.function(lambda x=x, y=y_grad, shape=conv.kernel_shape: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=shape, out_backprop=y, strides=[1, 1, 1, 1], padding="VALID"))
        ours = tf.function(lambda x=x, y=y_grad: filter_gradient(x, y))
        reference = tf.cast(theirs(), tf.float32)
        difference = float(tf.reduce_max(tf.abs(tf.cast(ours(), tf.float32) - reference))
                           / tf.reduce_max(tf.abs(reference)))
        t_theirs, t_ours = best_seconds(theirs, repeats), best_seconds(ours, repeats)
        totals["tensorflow"] += t_theirs
        totals["matmul"] += t_ours
        totals["used"] += t_ours if conv.matmul_filter_gradient else t_theirs
        channels = f"{conv.kernel_shape[2]}->{conv.kernel_shape[3]}"
        print(f"{conv.name:18s} {channels:>11s} {t_theirs * 1e3:8.1f} ms {t_ours * 1e3:6.1f} ms "
              f"{t_theirs / t_ours:7.2f}x  {'yes' if conv.matmul_filter_gradient else 'no ':4s}  {difference:.1e}")
    print(f"3x3 weight gradients in total: TensorFlow {totals['tensorflow']:.3f} s, matmul everywhere "
          f"{totals['matmul']:.3f} s, as the model uses them {totals['used']:.3f} s")


def training_step(model, batch_size: int):
    """One compiled training step of ``model`` on a fixed random batch (the CLI's loss and optimizer)."""
    images = tf.random.normal([batch_size, 572, 572, 1])
    labels = tf.one_hot(tf.cast(tf.random.uniform([batch_size, 388, 388]) > 0.5, tf.int32), 2)
    optimizer = FusedAdam(1e-4)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            ce, dice = partial_losses(model(images, training=True), labels)
            loss = ce + dice
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss
    return step


def per_step(batch_size: int, bf16: bool, repeats: int) -> None:
    set_mixed_bfloat16(bf16)
    plain, matmul = build_unet(1), build_unet(1, matmul_filter_gradient=True)
    steps = {"TensorFlow": training_step(plain, batch_size), "matmul": training_step(matmul, batch_size)}
    times = {name: [] for name in steps}
    for step in steps.values():
        step().numpy()  # trace
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step().numpy()
            times[name].append(time.perf_counter() - start)
    rates = {name: batch_size / float(np.median(t)) for name, t in times.items()}
    print(f"training steps, batch {batch_size}: TensorFlow's weight gradient {rates['TensorFlow']:.3f} images/s, "
          f"matmul {rates['matmul']:.3f} images/s ({rates['matmul'] / rates['TensorFlow']:.3f}x, "
          f"median of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_step", action="store_true", help="per layer only")
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")
    per_layer(args.batch_size, DTYPES[args.dtype], args.repeats)
    if not args.no_step:
        per_step(args.batch_size, args.dtype == "bf16", args.repeats)


if __name__ == "__main__":
    main()
