"""A 3x3 convolution + bias + ReLU whose weight gradient is computed with matrix products.

Why: on CPUs, oneDNN computes the weight gradient of a convolution with an
older kernel than the forward pass (on this project's AVX512-BF16 machine,
250-600 GFLOP/s in bf16 against 700-1000 forward; 210-280 in float32), and
it is about half of a training step. The same gradient is, for each kernel
tap (r, s), ``input shifted by (r, s)`` transposed times ``output gradient``,
with the pixels as the long inner dimension. Written over the flattened
NHWC tensors, each shift is a row offset, so the operands are views, not
copies, and oneDNN's matmul runs them 1.2-1.6x faster for layers with 128
or more channels (measured in ``benchmarks/filter_gradient.py``).

The forward pass and the input gradient stay TensorFlow's own kernels. The
layer is a ``keras.layers.Conv2D`` with the same variables, so checkpoints and
exported models are interchangeable with the plain layer.
"""

from __future__ import annotations

import tensorflow as tf

from common.compat import keras
from model.bias import bias_gradient

MIN_CHANNELS = 128  # below this, oneDNN's own weight-gradient kernel is as fast or faster (measured)


def _tap_rows(row_width: int) -> list[int]:
    """Row offsets, in the flattened NHWC input, of the three kernel rows."""
    return [r * row_width for r in range(3)]


def filter_gradient(inputs: tf.Tensor, output_grad: tf.Tensor) -> tf.Tensor:
    """dLoss/dkernel of a 3x3, stride-1, valid convolution, as nine matmuls over views.

    The output gradient is zero-padded to the input's width and height, so
    that pixel (h, w) of it and pixel (h + r, w + s) of the input sit exactly
    ``r * width + s`` rows apart in the flattened tensors; the padded rows
    contribute zeros. Each tap's input operand is then a row range of the
    flattened input, which TensorFlow slices without copying (rows of 128+
    channels are always aligned). Stacking the three column shifts into one
    taller product ran at the same speed but raised the peak memory of a
    float32 step at batch 8 from 9.0 to 13.7 GiB.
    """
    _, height, width, channels_in = inputs.shape
    channels_out = output_grad.shape[-1]
    pad = [[0, 0], [0, height - output_grad.shape[1]], [0, width - output_grad.shape[2]], [0, 0]]
    rows = tf.shape(inputs)[0] * height * width - (2 * width + 2)  # past the last tap's offset: only padding
    grad_rows = tf.reshape(tf.pad(output_grad, pad), [-1, channels_out])[:rows]
    input_rows = tf.reshape(inputs, [-1, channels_in])
    taps = [tf.matmul(input_rows[offset + s:offset + s + rows], grad_rows, transpose_a=True)
            for offset in _tap_rows(width) for s in range(3)]
    return tf.reshape(tf.stack(taps), [3, 3, channels_in, channels_out])


@tf.custom_gradient
def conv3x3_bias_relu(inputs: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor):
    """relu(conv(inputs, kernel) + bias), valid padding, with the matmul weight gradient.

    Bias and ReLU sit inside the custom gradient so that TensorFlow still
    fuses the forward pass into one convolution kernel. The bias gradient is
    summed in float32 (model/bias.py: TensorFlow's own loses most of a bf16 sum).
    """
    outputs = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(inputs, kernel, strides=1, padding="VALID"), bias))

    def gradient(output_grad: tf.Tensor):
        pre_activation_grad = tf.raw_ops.ReluGrad(gradients=output_grad, features=outputs)
        input_grad = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(inputs), filter=kernel, out_backprop=pre_activation_grad,
            strides=[1, 1, 1, 1], padding="VALID")
        return input_grad, filter_gradient(inputs, pre_activation_grad), bias_gradient(pre_activation_grad)

    return outputs, gradient


@keras.utils.register_keras_serializable(package="unet2d")
class MatmulGradConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (3x3, valid, ReLU) taking the matmul weight gradient where that is faster."""

    def uses_matmul_gradient(self, input_shape) -> bool:
        """True for the layer shapes where the matmul weight gradient is the faster one."""
        return (tuple(self.kernel_size) == (3, 3) and self.padding == "valid" and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.use_bias and self.groups == 1
                and self.activation is keras.activations.relu and self.data_format == "channels_last"
                and None not in tuple(input_shape)[1:] and min(input_shape[-1], self.filters) >= MIN_CHANNELS)

    def call(self, inputs):
        if not self.uses_matmul_gradient(inputs.shape):
            return super().call(inputs)
        return conv3x3_bias_relu(inputs, tf.cast(self.kernel, inputs.dtype), tf.cast(self.bias, inputs.dtype))
