"""The UNet of the reference: shapes, parameter count, seeded initialisation, dropout only in training."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.layers import CentreCrop
from model.unet import build_unet
from runtime import compat


@pytest.fixture(scope="module")
def model():
    return build_unet(seed=123)


def test_shapes_and_parameter_count(model):
    assert model.input_shape == (None, 572, 572, 1)
    assert model.output_shape == (None, 388, 388, 2)
    assert model.count_params() == 34_512_258
    assert len(model.trainable_variables) == 46


def test_same_seed_same_weights_other_seed_other_weights(model):
    again = build_unet(seed=123)
    other = build_unet(seed=124)
    for a, b in zip(model.trainable_variables, again.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    kernel = model.trainable_variables[0].numpy()
    assert not np.array_equal(kernel, other.trainable_variables[0].numpy())
    # Kernels of equal shape must not share values (one seed per layer).
    assert not np.array_equal(model.get_layer("input_conv2").kernel.numpy()[..., :1, :],
                              model.get_layer("down1_conv1").kernel.numpy()[..., :1, :64])


def test_dropout_only_in_training(model):
    x = tf.random.stateless_uniform((1, 572, 572, 1), seed=[1, 2], minval=-1, maxval=1)
    inference_a = model(x, training=False).numpy()
    inference_b = model(x, training=False).numpy()
    training = model(x, training=True).numpy()
    np.testing.assert_array_equal(inference_a, inference_b)
    assert not np.allclose(inference_a, training)


def test_mixed_bfloat16_computes_in_bf16_with_float32_weights():
    compat.set_mixed_bfloat16(True)
    try:
        model = build_unet(seed=1)
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
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert ours.compute_output_shape((None, 11, 11, 3)) == (None, 5, 5, 3)
    assert CentreCrop.from_config(ours.get_config()).margin == 3
