"""Building blocks of the UNet: every block is two valid 3x3 convolutions plus one extra step."""

from __future__ import annotations

import itertools

from runtime.compat import keras


class SeededInitializers:
    """Glorot-uniform initialisers with distinct, reproducible seeds.

    One seeded initialiser reused for every layer would give layers of equal
    shape equal weights; a counter gives each kernel its own seed.
    """

    def __init__(self, seed: int) -> None:
        self._seeds = itertools.count(seed * 1000)

    def __call__(self) -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=next(self._seeds))


def conv_block(x, filters: int, name: str, init: SeededInitializers):
    """Two unpadded 3x3 convolutions with ReLU: the body every UNet block shares."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="valid", activation="relu",
                                kernel_initializer=init(), name=f"{name}_conv{i}")(x)
    return x


def upsample(x, filters: int, name: str, init: SeededInitializers):
    """3x3 stride-2 transposed convolution with ReLU, doubling the spatial size."""
    return keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu",
                                        kernel_initializer=init(), name=f"{name}_upconv")(x)


def crop_and_concat(x, skip, name: str):
    """Centre-crop the skip tensor to ``x``'s size and stack it on the channels."""
    margin = (skip.shape[1] - x.shape[1]) // 2
    skip = keras.layers.Cropping2D(margin, name=f"{name}_crop")(skip)
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([x, skip])


def down_block(x, filters: int, name: str, init: SeededInitializers):
    """Convolve, keep the result for the skip connection, and halve with 2x2 max-pooling."""
    skip = conv_block(x, filters, name, init)
    return keras.layers.MaxPooling2D(2, strides=2, name=f"{name}_pool")(skip), skip


def bottleneck_block(x, filters: int, seed: int, init: SeededInitializers):
    """Convolve at the lowest resolution, drop out half the activations in training, upsample."""
    x = conv_block(x, filters, "bottleneck", init)
    x = keras.layers.Dropout(0.5, seed=seed, name="bottleneck_dropout")(x)
    return upsample(x, filters // 2, "bottleneck", init)


def up_block(x, skip, filters: int, name: str, init: SeededInitializers):
    """Join the skip connection, convolve, upsample."""
    x = conv_block(crop_and_concat(x, skip, name), filters, name, init)
    return upsample(x, filters // 2, name, init)


def output_block(x, skip, filters: int, num_classes: int, init: SeededInitializers):
    """Join the last skip connection, convolve, and map to per-class logits with a 1x1 convolution."""
    x = conv_block(crop_and_concat(x, skip, "output"), filters, "output", init)
    return keras.layers.Conv2D(num_classes, 1, kernel_initializer=init(), name="output_logits")(x)
