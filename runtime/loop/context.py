"""What a run hands its phases: the configuration, the workers, the log and the data, built once by unet2d.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types only: this module is imported by every phase, and imports none of them
    from common.config import RunConfig
    from data_loading.data_loader import Dataset, SyntheticDataset
    from data_loading.image_stack import PredictionInput
    from runtime.execution.distribution import Workers
    from runtime.loop.warm_start import Source
    from runtime.reporting.dllog import Logger
    from runtime.reporting.tensorboard import TensorBoardWriters


@dataclass
class RunContext:
    config: RunConfig
    workers: Workers
    logger: Logger
    dataset: Dataset | SyntheticDataset | None  # None: export, which reads no stacks
    checkpoint_dir: Path  # where this worker's checkpoints are (unused by training benchmarks)
    tensorboard: TensorBoardWriters | None = None
    prediction_inputs: list[PredictionInput] = field(default_factory=list)
    init_source: Source | None = None  # --init_from's model, checked before the cluster join
