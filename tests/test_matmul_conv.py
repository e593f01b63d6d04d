"""The matmul weight gradient gives TensorFlow's gradients, and the model using it is the same model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from common import compat
from common.compat import keras, variable_path
from model.matmul_conv import MIN_CHANNELS, MatmulGradConv2D, conv3x3_bias_relu, filter_gradient
from model.unet import BASE_FILTERS, build_unet
from runtime.execution.device import select_device


def random(shape, seed: int, dtype=tf.float32) -> tf.Tensor:
    return tf.cast(tf.random.stateless_normal(shape, seed=[seed, 7]), dtype)


def tensorflow_filter_gradient(inputs: tf.Tensor, output_grad: tf.Tensor) -> tf.Tensor:
    kernel_shape = [3, 3, inputs.shape[-1], output_grad.shape[-1]]
    return tf.raw_ops.Conv2DBackpropFilter(input=inputs, filter_sizes=kernel_shape, out_backprop=output_grad,
                                           strides=[1, 1, 1, 1], padding="VALID")


@pytest.mark.parametrize("batch, height, width, channels_in, channels_out",
                         [(1, 3, 3, 1, 1), (1, 10, 10, 3, 4), (3, 9, 13, 5, 2), (2, 17, 6, 16, 8)])
def test_filter_gradient_equals_tensorflow_in_float32(batch, height, width, channels_in, channels_out):
    inputs = random([batch, height, width, channels_in], 1)
    output_grad = random([batch, height - 2, width - 2, channels_out], 2)
    expected = tensorflow_filter_gradient(inputs, output_grad).numpy()
    np.testing.assert_allclose(filter_gradient(inputs, output_grad).numpy(), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_filter_gradient_with_a_batch_size_known_only_at_run_time():
    compute = tf.function(filter_gradient, input_signature=[tf.TensorSpec([None, 8, 9, 4]),
                                                            tf.TensorSpec([None, 6, 7, 5])])
    inputs, output_grad = random([3, 8, 9, 4], 3), random([3, 6, 7, 5], 4)
    np.testing.assert_allclose(compute(inputs, output_grad).numpy(),
                               tensorflow_filter_gradient(inputs, output_grad).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.bf16_kernels
def test_bf16_filter_gradient_is_as_accurate_as_tensorflows():
    inputs = random([2, 20, 20, 128], 5, tf.bfloat16)
    output_grad = random([2, 18, 18, 128], 6, tf.bfloat16)
    reference = tensorflow_filter_gradient(tf.cast(inputs, tf.float32), tf.cast(output_grad, tf.float32))
    scale = float(tf.reduce_max(tf.abs(reference)))

    def error(gradient: tf.Tensor) -> float:
        return float(tf.reduce_max(tf.abs(tf.cast(gradient, tf.float32) - reference))) / scale

    ours, theirs = error(filter_gradient(inputs, output_grad)), error(tensorflow_filter_gradient(inputs, output_grad))
    assert ours < 1e-2
    assert ours <= 2 * theirs + 1e-3


def test_fused_op_matches_plain_ops_and_their_gradients():
    inputs, kernel, bias = random([2, 12, 11, 6], 7), random([3, 3, 6, 5], 8) * 0.3, random([5], 9)
    upstream = random([2, 10, 9, 5], 10)

    def plain(x, k, b):
        return tf.nn.relu(tf.nn.conv2d(x, k, 1, "VALID") + b)

    results = []
    for op in (plain, conv3x3_bias_relu):
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel, bias])
            outputs = op(inputs, kernel, bias)
        results.append([outputs, *tape.gradient(outputs, [inputs, kernel, bias], output_gradients=upstream)])
    assert float(tf.reduce_mean(tf.cast(results[0][0] > 0, tf.float32))) > 0.2  # ReLU active and inactive
    for expected, actual in zip(*results, strict=True):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def gradient_ops(layer: keras.layers.Layer, channels: int) -> set[str]:
    """Op types in the traced training gradient of ``layer`` on a [1, 8, 8, channels] input."""
    inputs = tf.zeros([1, 8, 8, channels])

    @tf.function
    def gradient():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(inputs))
        return tape.gradient(loss, layer.trainable_variables)

    return {op.type for op in gradient.get_concrete_function().graph.get_operations()}


def test_layer_takes_the_matmul_gradient_only_for_wide_layers():
    wide = gradient_ops(MatmulGradConv2D(MIN_CHANNELS, 3, activation="relu"), MIN_CHANNELS)
    narrow = gradient_ops(MatmulGradConv2D(MIN_CHANNELS, 3, activation="relu"), MIN_CHANNELS // 2)
    no_relu = gradient_ops(MatmulGradConv2D(MIN_CHANNELS, 3), MIN_CHANNELS)
    assert "MatMul" in wide and "Conv2DBackpropFilter" not in wide
    assert "Conv2DBackpropFilter" in narrow and "MatMul" not in narrow
    assert "Conv2DBackpropFilter" in no_relu


def tensorflow_own_bf16_kernels() -> bool:
    """Whether bf16 convolutions run on TensorFlow's own kernels here rather than oneDNN's."""
    from runtime.execution.device import cpu_flags, onednn_opts_enabled, read_cpuinfo

    return not onednn_opts_enabled() or "avx512f" not in cpu_flags(read_cpuinfo())


def unet_gradients(bf16: bool, matmul_filter_gradient: bool,
                   base_filters: int = BASE_FILTERS) -> tuple[keras.Model, tf.Tensor, list[tf.Tensor]]:
    """Logits and weight gradients of a seeded UNet on one image, for a loss that sums the logits."""
    compat.set_mixed_bfloat16(bf16)
    try:
        # As unet2d.py builds it on this machine: float32 bias gradients where bf16 runs on TensorFlow's own kernels.
        exact_bias = select_device(no_hpu=True).needs_exact_bias_gradient(bf16)
        model = build_unet(seed=5, matmul_filter_gradient=matmul_filter_gradient, exact_bias_gradient=exact_bias,
                           base_filters=base_filters)
        images = tf.random.stateless_uniform((1, 572, 572, 1), seed=[3, 4], minval=-1, maxval=1)

        @tf.function
        def forward_backward():
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=False), tf.float32)
                loss = tf.reduce_sum(logits)  # all-ones upstream: large sums, where bf16 accumulation fails
            return logits, tape.gradient(loss, model.trainable_variables)

        return (model, *forward_backward())
    finally:
        compat.set_mixed_bfloat16(False)


def relative_error(actual: tf.Tensor, expected: tf.Tensor) -> float:
    return float(tf.norm(actual - expected) / tf.norm(expected))


@pytest.fixture(scope="module")
def float32_unet():
    return unet_gradients(bf16=False, matmul_filter_gradient=False)


@pytest.mark.slow
def test_unet_with_matmul_gradient_is_the_same_model_in_float32(float32_unet):
    """Same variables (checkpoints interchange), outputs and gradients as the plain UNet."""
    plain, plain_logits, plain_grads = float32_unet
    ours, our_logits, our_grads = unet_gradients(bf16=False, matmul_filter_gradient=True)
    assert any(isinstance(layer, MatmulGradConv2D) for layer in ours.layers)
    assert [variable_path(v) for v in plain.trainable_variables] == [variable_path(v) for v in ours.trainable_variables]
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(our_logits.numpy(), plain_logits.numpy())
    for variable, expected, actual in zip(plain.trainable_variables, plain_grads, our_grads, strict=True):
        assert relative_error(actual, expected) < 1e-5, variable_path(variable)


@pytest.mark.bf16_kernels
@pytest.mark.slow
@pytest.mark.parametrize("matmul", [False, True], ids=["tensorflow-gradient", "matmul-gradient"])
def test_every_bf16_gradient_is_close_to_float32(float32_unet, matmul, request):
    """Within 5% for every variable; Keras's own transposed convolutions miss their bias gradient by 25-97%.

    Where bf16 runs on TensorFlow's own kernels (a CPU without AVX-512, or TF_ENABLE_ONEDNN_OPTS=0) their bf16
    weight gradients are off by up to 25% (input_conv2, measured under ONEDNN_MAX_CPU_ISA=AVX2 with
    TF_ENABLE_ONEDNN_OPTS=0): a known defect of emulated bf16, which --dtype auto never picks there. Strict,
    so that a fix is noticed.
    """
    if tensorflow_own_bf16_kernels():
        request.applymarker(pytest.mark.xfail(strict=True, reason="bf16 weight gradients of TensorFlow's own "
                                                                  "kernels are off by up to 25%"))
        # Emulated bf16 takes about 110 s per full-width image; width 8 (6 s) still shows the defect (8.8%).
        width = 8
        plain, _, float32_grads = unet_gradients(bf16=False, matmul_filter_gradient=False, base_filters=width)
    else:
        width = BASE_FILTERS
        plain, _, float32_grads = float32_unet
    _, _, bf16_grads = unet_gradients(bf16=True, matmul_filter_gradient=matmul, base_filters=width)
    errors = {variable_path(v): relative_error(g, ref) for v, g, ref in
              zip(plain.trainable_variables, bf16_grads, float32_grads, strict=True)}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.05, f"{worst}: {errors[worst]:.2%} from float32"


def test_checkpoint_of_the_plain_unet_restores_into_the_matmul_one(tmp_path):
    plain, ours = build_unet(seed=1), build_unet(seed=2, matmul_filter_gradient=True)
    path = tf.train.Checkpoint(model=plain).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=ours).restore(path).assert_consumed()
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.bf16_kernels
@pytest.mark.parametrize("layer_class", ["ExactBiasConv2D", "MatmulGradExactBiasConv2D"])
def test_exact_bias_layers_sum_a_bf16_bias_gradient_in_float32(layer_class):
    """The layers built where bf16 runs on TensorFlow's own kernels: same variables, exact bias gradient."""
    from model import layers

    compat.set_mixed_bfloat16(True)
    try:
        layer = getattr(layers, layer_class)(4, 3, activation="relu")
        images = tf.random.stateless_uniform((2, 70, 70, 3), seed=[1, 2], minval=0.5, maxval=1.0)
        with tf.GradientTape() as tape:
            outputs = layer(images)
        upstream = tf.ones_like(outputs)
        gradient = tape.gradient(outputs, layer.bias, output_gradients=upstream)
    finally:
        compat.set_mixed_bfloat16(False)
    assert len(layer.trainable_variables) == 2  # kernel and bias, as keras.layers.Conv2D
    active = tf.reduce_sum(tf.cast(tf.cast(outputs, tf.float32) > 0, tf.float32), axis=[0, 1, 2])
    np.testing.assert_allclose(gradient.numpy(), active.numpy(), rtol=0.01)  # ReLU passes 1 where it is active
