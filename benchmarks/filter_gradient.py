#!/usr/bin/env python3
"""Experiment (issue 5's stretch goal): the convolutions' weight gradient as nine matrix products.

On CPUs, oneDNN computes the weight gradient of a bfloat16 convolution with an
older, slower kernel than the forward pass (250-510 GFLOP/s against 700-1000
here), and it takes about half of a training step. The same gradient is a sum
over the nine kernel taps of (input shifted by the tap)^T x (output gradient),
each a plain matrix product with the channels as rows and the pixels as the
long inner dimension, which oneDNN's bf16 matmul runs faster for layers with
many channels. The forward pass and the input gradient are TensorFlow's own.

Result on this project's CPU (2 cores, AVX512-BF16, TF 2.21, bf16, batch 2):
per layer the matmul form is 1.3-1.5x faster for 128 to 512 channels and
slower for 64; in a whole training step it gains only 1-4% (within noise),
so the model does not use it. Rerun to check another machine:

    python benchmarks/filter_gradient.py --batch_size 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from runtime.compat import keras, set_mixed_bfloat16  # noqa: E402

MIN_CHANNELS = 128  # below this the matmul form is slower than the convolution kernel (measured)


def _filter_gradient(inputs: tf.Tensor, output_grad: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """dL/dkernel of a valid, stride-1 convolution, as kernel_size**2 matmuls over channels-first copies."""
    channels_in, channels_out = inputs.shape[-1], output_grad.shape[-1]
    height, width = tf.shape(output_grad)[1], tf.shape(output_grad)[2]
    inputs_cf = tf.transpose(inputs, [3, 0, 1, 2])  # channels first: each tap is then one strided copy
    grad_cf = tf.reshape(tf.transpose(output_grad, [3, 0, 1, 2]), [channels_out, -1])
    taps = []
    for row in range(kernel_size):
        for col in range(kernel_size):
            shifted = tf.reshape(inputs_cf[:, :, row:row + height, col:col + width], [channels_in, -1])
            taps.append(tf.matmul(shifted, grad_cf, transpose_b=True))
    return tf.reshape(tf.stack(taps), [kernel_size, kernel_size, channels_in, channels_out])


@tf.custom_gradient
def conv_valid_matmul_grad(inputs: tf.Tensor, kernel: tf.Tensor):
    outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="VALID")

    def gradient(output_grad: tf.Tensor):
        input_grad = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(inputs), filter=kernel,
                                                    out_backprop=output_grad, strides=[1, 1, 1, 1],
                                                    padding="VALID")
        return input_grad, _filter_gradient(inputs, output_grad, kernel.shape[0])

    return outputs, gradient


class MatmulGradConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D with the matmul weight gradient where it is faster (bf16, many channels).

    Same variables and names as Conv2D, so checkpoints are interchangeable.
    """

    def convolution_op(self, inputs, kernel):
        eligible = (inputs.dtype == tf.bfloat16 and self.padding == "valid" and tuple(self.strides) == (1, 1)
                    and tuple(self.dilation_rate) == (1, 1) and min(kernel.shape[2], kernel.shape[3]) >= MIN_CHANNELS)
        if not eligible:
            return super().convolution_op(inputs, kernel)
        return conv_valid_matmul_grad(inputs, kernel)


def check_equal_gradients() -> float:
    """Largest relative difference between the two bf16 weight gradients, each against a float32 one."""
    x = tf.cast(tf.random.normal([2, 40, 40, 128]), tf.bfloat16)
    kernel = tf.cast(tf.random.normal([3, 3, 128, 128]) * 0.05, tf.bfloat16)
    output_grad = tf.cast(tf.random.normal([2, 38, 38, 128]), tf.bfloat16)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(kernel)
        default, matmul = tf.nn.conv2d(x, kernel, 1, "VALID"), conv_valid_matmul_grad(x, kernel)
    grads = [tf.cast(tape.gradient(y, kernel, output_gradients=output_grad), tf.float32) for y in (default, matmul)]
    kernel32 = tf.Variable(tf.cast(kernel, tf.float32))
    with tf.GradientTape() as tape:
        y = tf.nn.conv2d(tf.cast(x, tf.float32), kernel32, 1, "VALID")
    reference = tape.gradient(y, kernel32, output_gradients=tf.cast(output_grad, tf.float32))
    scale = float(tf.reduce_max(tf.abs(reference)))
    errors = [float(tf.reduce_max(tf.abs(g - reference))) / scale for g in grads]
    print(f"weight gradient vs float32: default {errors[0]:.2e}, matmul {errors[1]:.2e} (relative, max)")
    return errors[1]


def training_speed(batch_size: int, repeats: int) -> None:
    """Whole bf16 training steps of the UNet, alternating the two gradients, in one process."""
    from model.unet import build_unet
    from runtime.losses import partial_losses

    set_mixed_bfloat16(True)
    images = tf.random.normal([batch_size, 572, 572, 1])
    labels = tf.one_hot(tf.cast(tf.random.uniform([batch_size, 388, 388]) > 0.5, tf.int32), 2)

    def make_step(model):
        optimizer = keras.optimizers.Adam(1e-4)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                ce, dice = partial_losses(model(images, training=True), labels)
                loss = ce + dice
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return step

    default_model = build_unet(1)
    with mock.patch.object(keras.layers, "Conv2D", MatmulGradConv2D):
        matmul_model = build_unet(1)
    matmul_model.set_weights(default_model.get_weights())
    steps = {"default": make_step(default_model), "matmul": make_step(matmul_model)}
    times = {name: [] for name in steps}
    for step in steps.values():
        step().numpy()  # trace
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step().numpy()
            times[name].append(time.perf_counter() - start)
    rates = {name: batch_size / float(np.median(t)) for name, t in times.items()}
    print(f"training, bf16, batch {batch_size}: default {rates['default']:.3f} images/s, "
          f"matmul weight gradient {rates['matmul']:.3f} images/s ({rates['matmul'] / rates['default']:.3f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")
    check_equal_gradients()
    training_speed(args.batch_size, args.repeats)


if __name__ == "__main__":
    main()
