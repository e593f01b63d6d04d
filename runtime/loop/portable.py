"""Checkpoints across the two stacks: TF 2.15 with Keras 2 (Gaudi, Horovod) and current TF with Keras 3.

Both stacks save the same UNet, Adam state and step, but under different
object graphs: Keras 2 files a layer's kernel under
``model/layer_with_weights-N``, Keras 3 under ``model/_operations/N`` (and
names the value after the optimizer's copy). ``tf.train.Checkpoint`` matches
objects by those paths, so a checkpoint of the other stack reads as "does not
fit this model" although every tensor is there.

This module reads a checkpoint by its structure instead: the layers that own
variables, in the model's order, each with its variables in the layer's
order; Adam's ``_momentums`` and ``_velocities`` (indexed like the trainable
variables on both stacks) and its iteration count; the run's step. Every
shape is checked against the model before anything is assigned. The dropout
generator's state exists on Keras 3 only: across stacks a resumed run draws
fresh dropout masks, which its log says.

Each checkpoint folder also keeps ``written_by.json``: which stack wrote each
checkpoint, so that messages can say what happened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from common.compat import KERAS_MAJOR, adam_slots, keras, stack_name
from common.files import atomic_output

WRITERS_FILE = "written_by.json"
_KERAS2_LAYER = re.compile(r"^layer_with_weights-(\d+)$")


def record_writer(checkpoint_path: str) -> None:
    """Note in the checkpoint's folder that this stack wrote it (kept for the checkpoints still there)."""
    folder, name = Path(checkpoint_path).parent, Path(checkpoint_path).name
    writers = _writers(folder)
    present = {path.name.removesuffix(".index") for path in folder.glob("*.index")}
    writers = {key: value for key, value in writers.items() if key in present}
    writers[name] = stack_name()
    with atomic_output(folder / WRITERS_FILE) as temporary:
        temporary.write_text(json.dumps(writers, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _writers(folder: Path) -> dict[str, str]:
    try:
        loaded = json.loads((folder / WRITERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def writer_of(checkpoint_path: str) -> str | None:
    """The stack that wrote this checkpoint, if its folder recorded it."""
    return _writers(Path(checkpoint_path).parent).get(Path(checkpoint_path).name)


@dataclass
class PortableState:
    """What both stacks save, read by structure. ``keras``: the Keras major version whose layout it has."""

    keras: int
    layers: list[list[np.ndarray]]  # the variables of each layer that owns some, in the model's order
    momentums: list[np.ndarray]
    velocities: list[np.ndarray]
    iterations: int | None
    step: int | None
    rng: list[np.ndarray]


class _Graph:
    def __init__(self, path: str) -> None:
        self.reader = tf.train.load_checkpoint(path)
        self.graph = trackable_object_graph_pb2.TrackableObjectGraph()
        self.graph.ParseFromString(self.reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))

    def child(self, node_id: int, name: str) -> int | None:
        return next((c.node_id for c in self.graph.nodes[node_id].children if c.local_name == name), None)

    def children(self, node_id: int) -> list[tuple[str, int]]:
        return [(c.local_name, c.node_id) for c in self.graph.nodes[node_id].children]

    def value(self, node_id: int) -> np.ndarray | None:
        keys = [a.checkpoint_key for a in self.graph.nodes[node_id].attributes if a.name == "VARIABLE_VALUE"]
        return self.reader.get_tensor(keys[0]) if keys else None

    def own_variables(self, node_id: int) -> list[np.ndarray]:
        values = [self.value(child) for _, child in self.children(node_id)]
        return [value for value in values if value is not None]

    def numbered(self, node_id: int | None) -> list[int]:
        """The children of a tracked list, in index order."""
        if node_id is None:
            return []
        return [child for name, child in sorted(self.children(node_id), key=lambda item: int(item[0]))
                if name.isdigit()]


def _layout(graph: _Graph, model: int) -> tuple[int, list[int]] | None:
    """(Keras major, the model's layer nodes in order) of a checkpoint's model node; None if neither layout."""
    keras2 = sorted(((int(match.group(1)), child) for name, child in graph.children(model)
                     if (match := _KERAS2_LAYER.match(name))))
    if keras2:
        return 2, [child for _, child in keras2]
    operations = graph.child(model, "_operations")
    return None if operations is None else (3, graph.numbered(operations))


def written_by_other_keras(path: str, root_model: str = "model") -> bool:
    """Whether a checkpoint holds its model in the other Keras's layout (read from its object graph only)."""
    try:
        graph = _Graph(path)
    except (ValueError, tf.errors.OpError):
        return False
    model = graph.child(0, root_model)
    layout = None if model is None else _layout(graph, model)
    return layout is not None and layout[0] != KERAS_MAJOR


def read_state(path: str, root_model: str = "model") -> PortableState:
    """The portable content of a checkpoint (or a SavedModel's variables); ValueError if it holds no UNet in a
    layout this module knows."""
    graph = _Graph(path)
    model = graph.child(0, root_model)
    if model is None:
        raise ValueError(f"{path} holds no '{root_model}'")
    layout = _layout(graph, model)
    if layout is None:
        raise ValueError(f"{path}: the model's layers are in neither the Keras 2 nor the Keras 3 layout")
    major, layer_nodes = layout
    layers = [variables for node in layer_nodes if (variables := graph.own_variables(node))]
    optimizer = graph.child(0, "optimizer")
    momentums = velocities = []
    iterations = None
    if optimizer is not None:
        momentums = [graph.value(node) for node in graph.numbered(graph.child(optimizer, "_momentums"))]
        velocities = [graph.value(node) for node in graph.numbered(graph.child(optimizer, "_velocities"))]
        counted = graph.child(optimizer, "_iterations")
        iterations = None if counted is None else int(graph.value(counted))
    step_node = graph.child(0, "step")
    rng = [graph.value(node) for node in graph.numbered(graph.child(0, "rng"))]
    return PortableState(major, layers, momentums, velocities, iterations,
                         None if step_node is None else int(graph.value(step_node)), rng)


def _check_layers(state: PortableState, model: keras.Model) -> list[keras.layers.Layer]:
    owners = [layer for layer in model.layers if layer.weights]
    ours = [[tuple(w.shape) for w in layer.weights] for layer in owners]
    theirs = [[tuple(v.shape) for v in variables] for variables in state.layers]
    if ours != theirs:
        raise ValueError(f"its {len(theirs)} layers with weights differ in number or shape from this model's "
                         f"{len(ours)}")
    return owners


def load_weights(state: PortableState, model: keras.Model) -> None:
    """The layers' weights into ``model``, after checking every shape (ValueError: nothing assigned)."""
    _assign_layers(_check_layers(state, model), state.layers)


def _assign_layers(layers: list[keras.layers.Layer], values: list[list[np.ndarray]]) -> None:
    for layer, arrays in zip(layers, values, strict=True):
        for weight, value in zip(layer.weights, arrays, strict=True):
            weight.assign(value)


def load_training_state(state: PortableState, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                        step: tf.Variable, rng: list[tf.Variable]) -> list[str]:
    """Weights, Adam's moments and iteration count, and the step, into a built optimizer; what could not be
    carried over, in words (empty when everything was)."""
    owners = _check_layers(state, model)
    trainable = model.trainable_variables
    shapes = [tuple(v.shape) for v in trainable]
    moments_fit = (len(state.momentums) == len(state.velocities) == len(trainable)
                   and all(m is not None and tuple(m.shape) == shape
                           for m, shape in zip(state.momentums, shapes, strict=True))
                   and all(v is not None and tuple(v.shape) == shape
                           for v, shape in zip(state.velocities, shapes, strict=True)))
    _assign_layers(owners, state.layers)  # every shape above is checked before the first assignment
    missing = []
    if moments_fit:
        for variable, momentum, velocity in zip(trainable, state.momentums, state.velocities, strict=True):
            slot_m, slot_v = adam_slots(optimizer, variable)
            slot_m.assign(momentum)
            slot_v.assign(velocity)
    else:
        missing.append("Adam's moments")
    if state.iterations is not None:
        optimizer.iterations.assign(state.iterations)
    else:
        missing.append("Adam's iteration count")
    if state.step is not None:
        step.assign(state.step)
    else:
        missing.append("the step")
    if rng and len(state.rng) == len(rng):
        for variable, value in zip(rng, state.rng, strict=True):
            variable.assign(value)
    elif rng:
        missing.append("the dropout generator's state (Keras 2 keeps none: fresh dropout masks from here)")
    elif state.rng:
        missing.append("the dropout generator's state (Keras 2 has none)")
    return missing
