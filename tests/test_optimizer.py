"""FusedAdam is Keras's Adam, one kernel per variable: same updates, same slots, same checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from common.compat import keras, optimizer_variables
from runtime.loop.optimizer import FusedAdam


def make_variables() -> list[tf.Variable]:
    return [tf.Variable(tf.random.stateless_normal(shape, seed=[i, 1]), name=f"w{i}")
            for i, shape in enumerate([(3, 3, 4, 5), (5,), (17,)])]


def gradients(step: int, variables: list[tf.Variable]) -> list[tf.Tensor]:
    # Varied sizes, including tiny ones where Adam's epsilon matters.
    return [tf.random.stateless_normal(v.shape, seed=[step, i]) * 10.0 ** -(i + step % 3)
            for i, v in enumerate(variables)]


def train(optimizer: keras.optimizers.Optimizer, steps: int) -> list[tf.Variable]:
    variables = make_variables()
    for step in range(steps):
        optimizer.apply_gradients(zip(gradients(step, variables), variables, strict=True))
    return variables


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_same_updates_as_keras_adam(compiled):
    ours, theirs = FusedAdam(learning_rate=1e-2), keras.optimizers.Adam(learning_rate=1e-2)
    if compiled:
        # Inside tf.function, as the training loop runs it.
        ours_vars, theirs_vars = make_variables(), make_variables()
        for optimizer, variables in ((ours, ours_vars), (theirs, theirs_vars)):
            apply = tf.function(lambda grads, opt=optimizer, vs=variables:
                                opt.apply_gradients(zip(grads, vs, strict=True)))
            for step in range(5):
                apply(gradients(step, variables))
    else:
        ours_vars, theirs_vars = train(ours, 5), train(theirs, 5)
    assert int(ours.iterations.numpy()) == int(theirs.iterations.numpy()) == 5
    for a, b, start in zip(ours_vars, theirs_vars, make_variables(), strict=True):
        assert not np.allclose(a.numpy(), start.numpy())
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    for a, b in zip(optimizer_variables(ours), optimizer_variables(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a.numpy()), np.asarray(b.numpy()), rtol=1e-4, atol=1e-8)


def test_checkpoint_of_keras_adam_resumes_in_fused_adam(tmp_path):
    theirs = keras.optimizers.Adam(learning_rate=1e-2)
    variables = train(theirs, 3)
    path = tf.train.Checkpoint(optimizer=theirs, variables=variables).save(str(tmp_path / "ckpt"))

    ours, restored = FusedAdam(learning_rate=1e-2), make_variables()
    ours.build(restored)
    tf.train.Checkpoint(optimizer=ours, variables=restored).restore(path).assert_consumed()
    assert int(ours.iterations.numpy()) == 3
    for a, b in zip(optimizer_variables(ours), optimizer_variables(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    # And the next step continues exactly as Keras's Adam would.
    for optimizer, vs in ((ours, restored), (theirs, variables)):
        optimizer.apply_gradients(zip(gradients(3, vs), vs, strict=True))
    for a, b in zip(restored, variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


class Ramp(keras.optimizers.schedules.LearningRateSchedule):
    """The warm-up written as a Keras schedule: Keras's Adam driven by it is what --lr_warmup_steps must do."""

    def __init__(self, rate: float, steps: int) -> None:
        self.rate, self.steps = rate, steps

    def __call__(self, iterations):
        return self.rate * tf.minimum(tf.cast(iterations + 1, tf.float32) / self.steps, 1.0)


def test_warmup_ramps_as_a_keras_schedule_would_and_a_resumed_run_does_not_ramp_again(tmp_path):
    """Linear from lr/N to lr at step N, inside tf.function as the training loop runs it; then constant."""
    ours_vars, theirs_vars = make_variables(), make_variables()
    ours, theirs = FusedAdam(learning_rate=1e-2, warmup_steps=4), keras.optimizers.Adam(learning_rate=Ramp(1e-2, 4))
    applies = [tf.function(lambda grads, opt=opt, vs=vs: opt.apply_gradients(zip(grads, vs, strict=True)))
               for opt, vs in ((ours, ours_vars), (theirs, theirs_vars))]
    plain_vars = train(FusedAdam(learning_rate=1e-2), 3)
    for step in range(3):
        for apply, variables in zip(applies, (ours_vars, theirs_vars), strict=True):
            apply(gradients(step, variables))
    for a, b, plain in zip(ours_vars, theirs_vars, plain_vars, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
        assert not np.allclose(a.numpy(), plain.numpy())  # the ramp changed the steps

    # Resumed after step 3: the optimizer's step comes back with the checkpoint, so step 4 is the ramp's last
    # and step 5 runs at the full rate, as in the run that did not stop.
    path = tf.train.Checkpoint(optimizer=ours, variables=ours_vars).save(str(tmp_path / "ckpt"))
    resumed, resumed_vars = FusedAdam(learning_rate=1e-2, warmup_steps=4), make_variables()
    resumed.build(resumed_vars)
    tf.train.Checkpoint(optimizer=resumed, variables=resumed_vars).restore(path).assert_consumed()
    for step in (3, 4):
        for opt, variables in ((resumed, resumed_vars), (theirs, theirs_vars)):
            opt.apply_gradients(zip(gradients(step, variables), variables, strict=True))
    for a, b in zip(resumed_vars, theirs_vars, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="AMSGrad"):
        FusedAdam(learning_rate=1e-3, amsgrad=True)
