"""The UNet of Ronneberger et al. (2015) as the recipe builds it.

572x572x1 in, 388x388x2 logits out, 34,512,258 parameters. With a Keras
mixed-precision policy set, the layers compute in bfloat16 while the weights
stay float32; the logits are returned in the compute dtype and the losses cast
them to float32.
"""

from __future__ import annotations

from data_loading.preprocessing import INPUT_SIZE, NUM_CLASSES
from model.layers import LayerFactory, bottleneck_block, down_block, output_block, up_block
from runtime.compat import keras

FILTERS = (64, 128, 256, 512)
BOTTLENECK_FILTERS = 1024


def build_unet(seed: int = 123, num_classes: int = NUM_CLASSES, matmul_filter_gradient: bool = False) -> keras.Model:
    """The UNet; ``matmul_filter_gradient`` picks the CPU-friendly weight gradient (model/matmul_conv.py)."""
    make = LayerFactory(seed, matmul_filter_gradient)
    images = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="images")
    x, skips = images, []
    for depth, filters in enumerate(FILTERS):
        x, skip = down_block(x, filters, "input" if depth == 0 else f"down{depth}", make)
        skips.append(skip)
    x = bottleneck_block(x, BOTTLENECK_FILTERS, seed, make)
    for depth, filters in reversed(list(enumerate(FILTERS))[1:]):
        x = up_block(x, skips[depth], filters, f"up{depth}", make)
    logits = output_block(x, skips[0], FILTERS[0], num_classes, make)
    return keras.Model(images, logits, name="unet2d")
