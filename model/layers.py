"""Building blocks of the UNet: every block is two valid 3x3 convolutions plus one extra step."""

from __future__ import annotations

import itertools

import tensorflow as tf

from common.compat import keras
from common.config import WEIGHT_INITS
from model.bias import bias_add
from model.matmul_conv import MatmulGradConv2D


def exact_bias_conv(layer: keras.layers.Conv2D, inputs):
    """A Conv2D layer's output with its bias gradient summed in float32 (model/bias.py)."""
    outputs = tf.nn.conv2d(inputs, tf.cast(layer.kernel, inputs.dtype), strides=list(layer.strides),
                           padding=layer.padding.upper(), dilations=list(layer.dilation_rate))
    return layer.activation(bias_add(outputs, tf.cast(layer.bias, inputs.dtype)))


def _plain(layer: keras.layers.Conv2D) -> bool:
    return not layer.use_bias or layer.data_format != "channels_last" or layer.groups != 1


@keras.utils.register_keras_serializable(package="unet2d")
class ExactBiasConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D whose bias gradient is summed in float32; same variables as the plain layer.

    Where bf16 runs on TensorFlow's own kernels (CPUs without native bf16),
    no oneDNN kernel folds the bias gradient into the weight gradient, and
    BiasAddGrad's bf16 sum loses almost all of it (measured: the output
    layer's bias gradient 99.8% off float32's). Only built there: on oneDNN
    the plain layer's fused kernels are exact and faster.
    """

    def call(self, inputs):
        return super().call(inputs) if _plain(self) else exact_bias_conv(self, inputs)


@keras.utils.register_keras_serializable(package="unet2d")
class MatmulGradExactBiasConv2D(MatmulGradConv2D):
    """MatmulGradConv2D whose narrow layers (left to TensorFlow's weight gradient) also sum the bias in float32."""

    def call(self, inputs):
        if self.uses_matmul_gradient(inputs.shape) or _plain(self):
            return super().call(inputs)
        return exact_bias_conv(self, inputs)


class LayerFactory:
    """Makes the UNet's layers: seeded initialisers and the convolution classes to use.

    One seeded initialiser reused for every layer would give layers of equal
    shape equal weights; a counter gives each kernel its own seed. On CPUs the
    3x3 convolutions take the faster matmul weight gradient (model.matmul_conv);
    where bf16 runs on TensorFlow's own kernels, every bias gradient is summed
    in float32 (``ExactBiasConv2D``).
    """

    def __init__(self, seed: int, matmul_filter_gradient: bool = False, exact_bias_gradient: bool = False,
                 weight_init: str = "glorot") -> None:
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {weight_init!r}")
        self._seeds = itertools.count(seed * 1000)
        self._weight_init = weight_init
        self._conv3x3 = {(False, False): keras.layers.Conv2D, (True, False): MatmulGradConv2D,
                         (False, True): ExactBiasConv2D, (True, True): MatmulGradExactBiasConv2D}[
            matmul_filter_gradient, exact_bias_gradient]
        self._conv1x1 = ExactBiasConv2D if exact_bias_gradient else keras.layers.Conv2D

    def initializer(self) -> keras.initializers.Initializer:
        if self._weight_init == "he":
            return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=next(self._seeds))
        return keras.initializers.GlorotUniform(seed=next(self._seeds))

    def conv3x3_relu(self, filters: int, name: str) -> keras.layers.Conv2D:
        return self._conv3x3(filters, 3, padding="valid", activation="relu",
                             kernel_initializer=self.initializer(), name=name)

    def conv1x1(self, filters: int, name: str) -> keras.layers.Conv2D:
        return self._conv1x1(filters, 1, kernel_initializer=self.initializer(), name=name)


def conv_block(x, filters: int, name: str, make: LayerFactory):
    """Two unpadded 3x3 convolutions with ReLU: the body every UNet block shares."""
    for i in (1, 2):
        x = make.conv3x3_relu(filters, f"{name}_conv{i}")(x)
    return x


@keras.utils.register_keras_serializable(package="unet2d")
class UpConv2D(keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose (same padding, NHWC) whose bias gradient is summed in float32.

    TensorFlow's own bias gradient of a bfloat16 transposed convolution loses
    most of the sum on CPUs (model/bias.py). Same variables as the plain layer.
    """

    def call(self, inputs):
        plain = (not self.use_bias or self.padding != "same" or self.data_format != "channels_last"
                 or self.output_padding is not None or tuple(self.dilation_rate) != (1, 1))
        if plain:
            return super().call(inputs)
        height, width = inputs.shape[1] * self.strides[0], inputs.shape[2] * self.strides[1]
        output_shape = tf.stack([tf.shape(inputs)[0], height, width, self.filters])
        outputs = tf.nn.conv2d_transpose(inputs, tf.cast(self.kernel, inputs.dtype), output_shape,
                                         strides=self.strides, padding="SAME")
        outputs = tf.ensure_shape(outputs, [inputs.shape[0], height, width, self.filters])
        return self.activation(bias_add(outputs, tf.cast(self.bias, inputs.dtype)))


def upsample(x, filters: int, name: str, make: LayerFactory):
    """3x3 stride-2 transposed convolution with ReLU, doubling the spatial size."""
    return UpConv2D(filters, 3, strides=2, padding="same", activation="relu",
                    kernel_initializer=make.initializer(), name=f"{name}_upconv")(x)


@keras.utils.register_keras_serializable(package="unet2d")
class CentreCrop(keras.layers.Layer):
    """Cuts ``margin`` pixels off each side of an NHWC tensor (what Cropping2D does, with a cheaper gradient).

    Cropping2D slices with StridedSlice, whose gradient TensorFlow computes
    about 7x slower than that of Slice (a zero Pad): profiled in a bf16
    training step at batch 2, the four skip crops cost 152 ms of 3.27 s,
    against 22 ms with Slice. No weights, so checkpoints are unaffected.
    """

    def __init__(self, margin: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.margin = int(margin)

    def call(self, inputs):
        size = [-1, inputs.shape[1] - 2 * self.margin, inputs.shape[2] - 2 * self.margin, -1]
        return tf.slice(inputs, [0, self.margin, self.margin, 0], size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return batch, height - 2 * self.margin, width - 2 * self.margin, channels

    def get_config(self) -> dict:
        return {**super().get_config(), "margin": self.margin}


def crop_and_concat(x, skip, name: str):
    """Centre-crop the skip tensor to ``x``'s size and stack it on the channels."""
    margin = (skip.shape[1] - x.shape[1]) // 2
    skip = CentreCrop(margin, name=f"{name}_crop")(skip)
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([x, skip])


def down_block(x, filters: int, name: str, make: LayerFactory):
    """Convolve, keep the result for the skip connection, and halve with 2x2 max-pooling."""
    skip = conv_block(x, filters, name, make)
    return keras.layers.MaxPooling2D(2, strides=2, name=f"{name}_pool")(skip), skip


def bottleneck_block(x, filters: int, seed: int, make: LayerFactory):
    """Convolve at the lowest resolution, drop out half the activations in training, upsample."""
    x = conv_block(x, filters, "bottleneck", make)
    x = keras.layers.Dropout(0.5, seed=seed, name="bottleneck_dropout")(x)
    return upsample(x, filters // 2, "bottleneck", make)


def up_block(x, skip, filters: int, name: str, make: LayerFactory):
    """Join the skip connection, convolve, upsample."""
    x = conv_block(crop_and_concat(x, skip, name), filters, name, make)
    return upsample(x, filters // 2, name, make)


def output_block(x, skip, filters: int, num_classes: int, make: LayerFactory):
    """Join the last skip connection, convolve, and map to per-class logits with a 1x1 convolution."""
    x = conv_block(crop_and_concat(x, skip, "output"), filters, "output", make)
    return make.conv1x1(num_classes, "output_logits")(x)
