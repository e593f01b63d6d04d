"""The UNet of the reference: shapes, parameter count (at the recipe's width and narrower), seeded initialisation,
dropout only in training."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from common import compat
from model.layers import CentreCrop
from model.unet import build_unet, encoder_filters
from tests.conftest import TEST_BASE_FILTERS


@pytest.fixture(scope="module")
def model():
    return build_unet(seed=123)


def test_shapes_and_parameter_count(model):
    assert model.input_shape == (None, 572, 572, 1)
    assert model.output_shape == (None, 388, 388, 2)
    assert model.count_params() == 34_512_258
    assert len(model.trainable_variables) == 46


def unet_parameters(n: int, classes: int = 2) -> int:
    """The UNet's parameter count written out: 3x3 convolutions (weights + bias), 3x3 up-convolutions, 1x1 output."""
    conv = lambda c_in, c_out, k=3: k * k * c_in * c_out + c_out  # noqa: E731
    down = conv(1, n) + conv(n, n) + sum(conv(c // 2, c) + conv(c, c) for c in (2 * n, 4 * n, 8 * n))
    bottleneck = conv(8 * n, 16 * n) + conv(16 * n, 16 * n) + conv(16 * n, 8 * n)  # and its up-convolution
    up = sum(conv(2 * c, c) + conv(c, c) + conv(c, c // 2) for c in (8 * n, 4 * n, 2 * n))
    return down + bottleneck + up + conv(2 * n, n) + conv(n, n) + conv(n, classes, k=1)


@pytest.mark.parametrize("base_filters", [4, 8, 16, 64])
def test_width_sets_every_channel_count(base_filters):
    narrow = build_unet(seed=1, base_filters=base_filters)
    assert encoder_filters(base_filters) == (base_filters, 2 * base_filters, 4 * base_filters, 8 * base_filters)
    assert narrow.get_layer("bottleneck_conv2").kernel.shape[-1] == 16 * base_filters
    assert narrow.output_shape == (None, 388, 388, 2) and len(narrow.trainable_variables) == 46
    assert narrow.count_params() == unet_parameters(base_filters)
    assert unet_parameters(64) == 34_512_258  # the formula is the recipe's model at its width


def test_same_seed_same_weights_other_seed_other_weights(model):
    again = build_unet(seed=123)
    other = build_unet(seed=124)
    for a, b in zip(model.trainable_variables, again.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    kernel = model.trainable_variables[0].numpy()
    assert not np.array_equal(kernel, other.trainable_variables[0].numpy())
    # Kernels of equal shape must not share values (one seed per layer).
    assert not np.array_equal(model.get_layer("input_conv2").kernel.numpy()[..., :1, :],
                              model.get_layer("down1_conv1").kernel.numpy()[..., :1, :64])


def test_dropout_only_in_training():
    model = build_unet(seed=123, base_filters=TEST_BASE_FILTERS)
    x = tf.random.stateless_uniform((1, 572, 572, 1), seed=[1, 2], minval=-1, maxval=1)
    inference_a = model(x, training=False).numpy()
    inference_b = model(x, training=False).numpy()
    training = model(x, training=True).numpy()
    np.testing.assert_array_equal(inference_a, inference_b)
    assert not np.allclose(inference_a, training)


@pytest.mark.bf16_kernels
def test_mixed_bfloat16_computes_in_bf16_with_float32_weights():
    compat.set_mixed_bfloat16(True)
    try:
        model = build_unet(seed=1, base_filters=TEST_BASE_FILTERS)
        assert compat.compute_dtype() == "bfloat16"
        assert all(v.dtype == tf.float32 for v in model.trainable_variables)
        out = model(tf.zeros((1, 572, 572, 1)), training=False)
        assert out.dtype == tf.bfloat16
    finally:
        compat.set_mixed_bfloat16(False)


def test_centre_crop_is_cropping2d_with_the_same_gradient_and_config():
    x = tf.random.stateless_normal((2, 11, 11, 3), seed=[1, 1])
    upstream = tf.random.stateless_normal((2, 5, 5, 3), seed=[2, 2])
    ours, theirs = CentreCrop(3), compat.keras.layers.Cropping2D(3)
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        results.append((y.numpy(), tape.gradient(y, x, output_gradients=upstream).numpy()))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.compute_output_shape((None, 11, 11, 3)) == (None, 5, 5, 3)
    assert CentreCrop.from_config(ours.get_config()).margin == 3


@pytest.mark.parametrize(("wanted", "hint"), [
    ({"base_filters": 8}, "(trained with another --base_filters: 4, this run 8)"),
    ({"base_filters": 4, "num_classes": 3}, "(trained with another --num_classes: 2, this run 3)"),
    ({"base_filters": 8, "num_classes": 3},
     "(trained with another --base_filters: 4, this run 8; another --num_classes: 2, this run 3)"),
])
def test_a_checkpoint_of_another_width_or_class_count_names_the_flag(tmp_path, wanted, hint):
    from common.errors import UserInputError
    from runtime.loop.checkpoints import restore

    path = tf.train.Checkpoint(model=build_unet(seed=1, base_filters=4)).save(str(tmp_path / "ckpt"))
    with pytest.raises(UserInputError, match="does not fit this model") as error:
        restore(tf.train.Checkpoint(model=build_unet(seed=1, **wanted)), path, partial=True)
    assert hint in str(error.value) and "\n" not in str(error.value)


def _activation_scale(weight_init: str) -> dict[str, float]:
    """Root mean square of the bottleneck's and the logits' activations of a fresh width-8 UNet on noise."""
    model = build_unet(3, base_filters=8, weight_init=weight_init)
    probe = compat.keras.Model(model.input, [model.get_layer(name).output for name in ("bottleneck_conv2",
                                                                                "output_logits")])
    images = np.random.default_rng(0).uniform(0, 1, (1, 572, 572, 1)).astype(np.float32)
    return {name: float(np.sqrt(np.mean(np.square(out)))) for name, out in
            zip(("bottleneck", "logits"), probe(images, training=False), strict=True)}


def test_the_papers_start_keeps_activations_at_scale_and_glorot_does_not():
    """Why --weight_init he: under Glorot the activations shrink about 2x a ReLU layer, so a fresh UNet's output
    hardly depends on its input (docs/experiments.md, Collapsed runs); under He they keep their input's scale."""
    he, glorot = _activation_scale("he"), _activation_scale("glorot")
    assert he["bottleneck"] > 0.1 and glorot["bottleneck"] < he["bottleneck"] / 50, (he, glorot)
    assert glorot["logits"] < he["logits"] / 5, (he, glorot)
    kernel = build_unet(3, base_filters=8, weight_init="he").get_layer("down2_conv1").kernel.numpy()
    assert np.std(kernel) == pytest.approx(np.sqrt(2 / (9 * kernel.shape[2])), rel=0.1)  # sqrt(2/N), N = 9 C_in
