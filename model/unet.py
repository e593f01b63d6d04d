"""The UNet of Ronneberger et al. (2015) as the recipe builds it, at any width.

572x572x1 in, 388x388xK logits out. At the recipe's width (``base_filters``
64: 64, 128, 256 and 512 channels down, 1024 in the bottleneck) it has
34,512,258 parameters for two classes. Narrower models keep every layer and
shape but the channel counts: the tests run the same code paths on them at a
few hundredths of the cost, and small data or small machines may train them.
With a Keras mixed-precision policy set, the layers compute in bfloat16 while
the weights stay float32; the logits are returned in the compute dtype and
the losses cast them to float32.
"""

from __future__ import annotations

from common.compat import keras
from common.geometry import INPUT_SIZE, NUM_CLASSES
from model.layers import LayerFactory, bottleneck_block, down_block, output_block, up_block

BASE_FILTERS = 64  # the recipe's width
DEPTH = 4  # down blocks; the bottleneck sits below them


def encoder_filters(base_filters: int) -> tuple[int, ...]:
    """Channels of the down blocks: base, 2x, 4x, 8x (the bottleneck has 16x)."""
    return tuple(base_filters * 2**depth for depth in range(DEPTH))


def valid_input(size: int) -> bool:
    """Whether a square input of ``size`` pixels keeps every pooling exact: 124 + 16 k (572 = 124 + 16 * 28)."""
    return size >= 140 and (size - 124) % 16 == 0


def build_unet(seed: int = 123, num_classes: int = NUM_CLASSES, matmul_filter_gradient: bool = False,
               base_filters: int = BASE_FILTERS, exact_bias_gradient: bool = False,
               input_size: int = INPUT_SIZE, weight_init: str = "glorot") -> keras.Model:
    """The UNet; ``matmul_filter_gradient`` picks the CPU-friendly weight gradient (model/matmul_conv.py),
    ``exact_bias_gradient`` the float32 bias gradient bf16 needs on TensorFlow's own kernels (model/layers.py).
    ``input_size`` other than 572 builds the same layers (the same weights fit) for larger prediction tiles:
    the network is fully convolutional, its output ``input_size - 184``. ``weight_init`` only sets the
    random start (model/layers.py, ``WEIGHT_INITS``)."""
    if not valid_input(input_size):
        raise ValueError(f"input size {input_size} is not 124 + 16 k")
    make = LayerFactory(seed, matmul_filter_gradient, exact_bias_gradient, weight_init)
    filters = encoder_filters(base_filters)
    images = keras.Input((input_size, input_size, 1), name="images")
    x, skips = images, []
    for depth, width in enumerate(filters):
        x, skip = down_block(x, width, "input" if depth == 0 else f"down{depth}", make)
        skips.append(skip)
    x = bottleneck_block(x, 2 * filters[-1], seed, make)
    for depth, width in reversed(list(enumerate(filters))[1:]):
        x = up_block(x, skips[depth], width, f"up{depth}", make)
    logits = output_block(x, skips[0], filters[0], num_classes, make)
    return keras.Model(images, logits, name="unet2d")
