"""Adam whose update of each variable is one fused TensorFlow kernel."""

from __future__ import annotations

import tensorflow as tf

from common.compat import adam_slots, keras


class FusedAdam(keras.optimizers.Adam):
    """keras Adam (same arithmetic, slots and checkpoints), updated with ``ResourceApplyAdam``.

    Keras writes Adam as about ten element-wise ops per variable (subtract,
    multiply, square, sqrt, divide, three assignments), each one pass over
    the 31M parameters; profiled in a bf16 training step at batch 2 they took
    about 90 ms of 3.3 s. TensorFlow's ApplyAdam kernel does the same update
    (Keras's "epsilon hat" form: lr * sqrt(1 - b2^t) / (1 - b1^t) times
    m / (sqrt(v) + eps)) in one pass. Dense gradients only, no AMSGrad: the
    UNet needs neither.

    ``warmup_steps`` ramps the rate linearly from lr/N at the first step to
    lr at step N (--lr_warmup_steps), the usual guard for a start whose
    first steps are unstable. It is not a cure for a one-class start: from
    the recipe's Glorot weights it made that phase longer, as any smaller
    step does (docs/experiments.md, "Collapsed runs"). It counts the
    optimizer's own steps, so a resumed run does not ramp again.
    """

    def __init__(self, learning_rate: float, warmup_steps: int = 0, **kwargs) -> None:
        if kwargs.get("amsgrad"):
            raise ValueError("FusedAdam has no AMSGrad variant")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.warmup_steps = warmup_steps

    def update_step(self, gradient, variable, learning_rate=None):  # Keras 2 passes no learning rate
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        rate = tf.cast(self.learning_rate if learning_rate is None else learning_rate, dtype)
        if self.warmup_steps:
            rate = rate * tf.minimum(step / self.warmup_steps, 1.0)
        momentum, velocity = adam_slots(self, variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=momentum.handle, v=velocity.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=rate, beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.convert_to_tensor(tf.cast(gradient, dtype)))
