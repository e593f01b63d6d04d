"""Adding a bias, with its gradient summed in float32.

TensorFlow's ``BiasAddGrad`` on CPU sums a bfloat16 gradient in bfloat16:
once the running sum is large, each further term is below its rounding step
and is lost. A gradient of ones over 2x392x392 pixels comes out as 512
instead of 307328. In a training step TensorFlow folds the bias gradient of
a plain convolution into oneDNN's weight-gradient kernel, which is exact;
the transposed convolutions (and any op outside that fusion) get the broken
sum. Summing in float32 costs the same single pass over the gradient.
"""

from __future__ import annotations

import tensorflow as tf


def bias_gradient(output_grad: tf.Tensor) -> tf.Tensor:
    """Sum over every axis but the last (NHWC), in float32, rounded once to the gradient's dtype."""
    axes = list(range(len(output_grad.shape) - 1))
    return tf.cast(tf.reduce_sum(tf.cast(output_grad, tf.float32), axis=axes), output_grad.dtype)


@tf.custom_gradient
def bias_add(inputs: tf.Tensor, bias: tf.Tensor):
    def gradient(output_grad: tf.Tensor):
        return output_grad, bias_gradient(output_grad)

    return tf.nn.bias_add(inputs, bias), gradient
