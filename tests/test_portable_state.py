"""A checkpoint's Adam state is carried over whole or not at all: every shape checked before any assignment."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.compat import adam_slots, keras
from runtime.loop.optimizer import FusedAdam
from runtime.loop.portable import PortableState, load_training_state


def small_model() -> tuple[keras.Model, FusedAdam]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = FusedAdam(learning_rate=1e-3)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def state(velocity_shapes) -> PortableState:
    kernel, bias = np.full((4, 3), 2.0, np.float32), np.full((3,), 3.0, np.float32)
    return PortableState(3, [[kernel, bias]], [np.ones((4, 3), np.float32), np.ones(3, np.float32)],
                         [np.full(shape, 5.0, np.float32) for shape in velocity_shapes], 7, 9, [])


def test_moments_of_the_right_shapes_are_carried_over():
    model, optimizer = small_model()
    step = tf.Variable(0, dtype=tf.int64)
    assert load_training_state(state([(4, 3), (3,)]), model, optimizer, step, []) == []
    velocities = [adam_slots(optimizer, v)[1].numpy() for v in model.trainable_variables]
    assert all((v == 5.0).all() for v in velocities) and int(step.numpy()) == 9


def test_a_velocity_of_another_shape_leaves_every_slot_as_it_was():
    model, optimizer = small_model()
    step = tf.Variable(0, dtype=tf.int64)
    missing = load_training_state(state([(4, 3), (2,)]), model, optimizer, step, [])
    assert missing == ["Adam's moments"]
    slots = [slot.numpy() for v in model.trainable_variables for slot in adam_slots(optimizer, v)]
    assert all((slot == 0).all() for slot in slots)  # no momentum half-assigned before the velocity failed
    assert (model.weights[0].numpy() == 2.0).all()  # the weights, checked, are in
