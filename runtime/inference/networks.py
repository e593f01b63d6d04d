"""A model's class probabilities at any valid tile size, for blockwise prediction with larger tiles.

The UNet is fully convolutional, but a Keras model is built for one input
size (572). The same weights fill a UNet built for ``tile + 184``
(``model.unet.build_unet(input_size=...)``), so a larger tile is one more
model sharing the weights, built when first asked. Exports kept only as a
SavedModel or ONNX network (a fixed 572 signature) take 388 tiles only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.compat import keras
from common.geometry import OUTPUT_SIZE
from model.unet import build_unet
from runtime.inference.blocks import CONTEXT, TILE_OUTPUTS
from runtime.inference.export import class_probabilities, readable_form
from runtime.inference.strategies import ProbabilityFn


def base_filters_of(model: keras.Model) -> int:
    """The width of a UNet: the output channels of its first convolution."""
    return int(next(weight for weight in model.weights if len(weight.shape) == 4).shape[-1])


class TileNetworks:
    """Probability functions of one model (or an ensemble's mean) for each tile size asked, built once each."""

    def __init__(self, members: Sequence[keras.Model] | None, fixed: ProbabilityFn | None, classes: int,
                 base_filters: int) -> None:
        self.members, self.fixed, self.classes, self.base_filters = members, fixed, classes, base_filters
        self.sizes = TILE_OUTPUTS if members is not None else (OUTPUT_SIZE,)
        self._built: dict[int, ProbabilityFn] = {}

    def at(self, tile: int) -> ProbabilityFn:
        if tile not in self.sizes:
            raise ValueError(f"tile {tile} is not one of {self.sizes}")
        if tile not in self._built:
            self._built[tile] = self.fixed if self.members is None else self._build(tile)
        return self._built[tile]

    def pass_seconds(self, tile: int) -> float:
        """Seconds one pass of one tile takes, after a warm-up pass (tracing, oneDNN's kernels); the network
        stays built for the prediction (``forget`` drops the tiles not chosen)."""
        network = self.at(tile)
        inputs = tf.zeros([1, tile + 2 * CONTEXT, tile + 2 * CONTEXT, 1])
        np.asarray(network(inputs))
        started = time.perf_counter()
        np.asarray(network(inputs))
        return time.perf_counter() - started

    def forget(self, keep: int) -> None:
        """Drop every network but ``keep``'s: the tiles timed and not chosen leave no weights behind."""
        self._built = {tile: network for tile, network in self._built.items() if tile == keep}

    def _build(self, tile: int) -> ProbabilityFn:
        sized = [member if tile == OUTPUT_SIZE else _resized_copy(member, self.classes, tile)
                 for member in self.members]

        def probabilities(inputs: tf.Tensor) -> tf.Tensor:
            outputs = [class_probabilities(member(inputs, training=False)) for member in sized]
            return outputs[0] if len(outputs) == 1 else tf.add_n(outputs) / len(outputs)
        side = tile + 2 * CONTEXT  # any number of tiles a pass: traced once, not once per batch size
        return tf.function(probabilities, input_signature=[tf.TensorSpec([None, side, side, 1], tf.float32)])


def _resized_copy(model: keras.Model, classes: int, tile: int) -> keras.Model:
    copy = build_unet(0, classes, base_filters=base_filters_of(model), input_size=tile + 2 * CONTEXT)
    copy.set_weights(model.get_weights())
    return copy


def runner_networks(members: Sequence[keras.Model], classes: int) -> TileNetworks:
    """The trained models of a run (an ensemble's members averaged), at every tile size."""
    return TileNetworks(list(members), None, classes, max(base_filters_of(m) for m in members))


def export_networks(paths: list[Path], load: Callable[[list[Path]], tuple[ProbabilityFn, int]]) -> TileNetworks:
    """Exported models: at every tile size where each is a Keras file this Keras reads, else at 388 only (by
    ``load``, the ensemble's probability function)."""
    forms = [readable_form(Path(path)) for path in paths]
    if all(form.is_file() and form.suffix == ".keras" for form in forms):
        try:
            members = [keras.models.load_model(form, compile=False) for form in forms]
        except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError):
            return _fixed(paths, load)  # its loader says what is wrong, in one line
        classes = int(members[0].output_shape[-1])
        if any(int(member.output_shape[-1]) != classes for member in members):
            return _fixed(paths, load)
        return runner_networks(members, classes)
    return _fixed(paths, load)


def _fixed(paths: list[Path], load: Callable[[list[Path]], tuple[ProbabilityFn, int]]) -> TileNetworks:
    function, classes = load(paths)
    return TileNetworks(None, function, classes, 64)  # width unknown: counted as the recipe's for memory


_LOADED: dict[tuple[str, ...], TileNetworks] = {}


def loaded(paths: tuple[str, ...]) -> TileNetworks:
    """Exported models loaded once per process (a Dask worker keeps them for every block it is given)."""
    if paths not in _LOADED:
        from runtime.inference.export import load_ensemble_probability_fn

        _LOADED[paths] = export_networks([Path(path) for path in paths], load_ensemble_probability_fn)
    return _LOADED[paths]
