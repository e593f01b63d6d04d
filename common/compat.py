"""Every difference between the two supported stacks, in one place.

* TF 2.15 + Keras 2.15 (the last Gaudi stack), where ``tf.keras`` is Keras 2;
* TF 2.16 - 2.21 + Keras 3, where ``tf.keras`` is Keras 3.

The rest of the code base imports ``keras`` from here and calls these helpers
instead of testing versions itself.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

import tensorflow as tf

keras = tf.keras  # Keras 2 on TF 2.15, Keras 3 on TF 2.16+

KERAS_MAJOR = int(keras.__version__.split(".")[0]) if hasattr(keras, "__version__") else 2


def variable_path(variable: tf.Variable) -> str:
    """Full, scoped name of a model variable.

    Keras 3 keeps only the short name (``kernel``) in ``.name`` and the scoped
    one in ``.path``; Keras 2 puts the scoped name in ``.name``.
    """
    return getattr(variable, "path", None) or variable.name


def optimizer_variables(optimizer: keras.optimizers.Optimizer) -> list[tf.Variable]:
    """Optimizer state (iteration count, Adam moments) as a list."""
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def adam_slots(optimizer: keras.optimizers.Adam, variable: tf.Variable) -> tuple[tf.Variable, tf.Variable]:
    """Adam's first and second moment slots of one variable (the two Keras versions index them differently)."""
    if KERAS_MAJOR >= 3:
        index = optimizer._get_variable_index(variable)
    else:
        index = optimizer._index_dict[optimizer._var_key(variable)]
    return optimizer._momentums[index], optimizer._velocities[index]


def set_mixed_bfloat16(enabled: bool) -> None:
    """Keras mixed precision: bf16 compute, float32 variables (same API on both stacks)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if enabled else "float32")


def compute_dtype() -> str:
    policy = keras.mixed_precision.global_policy()
    return policy.compute_dtype


def rng_state_variables(model: keras.Model) -> list[tf.Variable]:
    """Random-generator state inside the model (Keras 3's dropout seed generator).

    Keras 3 keeps it out of the model's checkpoint; saving it beside the model
    makes a resumed run draw the same dropout masks as an uninterrupted one.
    Keras 2's dropout keeps no such variable, and this list is empty there.
    """
    return [v for v in model.variables if "seed_generator" in variable_path(v)]


def coordinated_job(name: str, num_tasks: int) -> object:
    """A CoordinatedJob message for TensorFlow's coordination service (its proto moved from tsl to xla/tsl)."""
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # TF 2.16+
    except ImportError:
        from tensorflow.tsl.protobuf import coordination_config_pb2  # TF 2.15
    return coordination_config_pb2.CoordinatedJob(name=name, num_tasks=num_tasks)


@cache
def stack_name() -> str:
    """"TensorFlow x.y.z with Keras a.b.c": tf.keras of TF 2.15 has no __version__, the keras package has one."""
    try:
        keras_version = version("keras")
    except PackageNotFoundError:
        keras_version = str(KERAS_MAJOR)
    return f"TensorFlow {tf.__version__.split('-')[0]} with Keras {keras_version}"
