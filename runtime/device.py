"""Which device runs the model: Gaudi (HPU), NVIDIA GPU or CPU, asked once.

Gaudi's TensorFlow module must be loaded before any TensorFlow op runs, so
``select_device`` is called first thing after the flags are parsed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Device:
    kind: str  # "HPU", "GPU" or "CPU"
    name: str  # TensorFlow device string, e.g. "/device:HPU:0"
    gaudi_type: str | None = None  # e.g. "GAUDI2", only on Gaudi

    @property
    def is_gaudi(self) -> bool:
        return self.kind == "HPU"

    @property
    def is_gaudi2(self) -> bool:
        return self.gaudi_type is not None and "GAUDI2" in self.gaudi_type.upper()

    @property
    def prefers_matmul_filter_gradient(self) -> bool:
        """oneDNN's weight-gradient convolution on CPUs is slower than its matmul (model/matmul_conv.py).

        GPUs' and Gaudi's own convolution kernels are not known to be, so they keep them.
        """
        return self.kind == "CPU"

    def describe(self) -> str:
        extra = f" ({self.gaudi_type})" if self.gaudi_type else ""
        return f"{self.kind}{extra} {self.name}"


def _load_gaudi() -> Device | None:
    """Load the Habana module if it is installed; None when it is not."""
    try:
        habana = importlib.import_module("habana_frameworks.tensorflow")
    except ImportError:
        return None
    habana.load_habana_module()
    habana_device = importlib.import_module("habana_frameworks.tensorflow.habana_device")
    return Device("HPU", "/device:HPU:0", str(habana_device.get_type()))


def select_device(no_hpu: bool) -> Device:
    if not no_hpu:
        gaudi = _load_gaudi()
        if gaudi is not None:
            return gaudi
    if tf.config.list_physical_devices("GPU"):
        return Device("GPU", "/device:GPU:0")
    return Device("CPU", "/device:CPU:0")
