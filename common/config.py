"""The run's configuration: built once from the checked flags, frozen, in sections that match the code.

``unet2d.py`` parses and checks the flags (runtime/cli/arguments.py), then
builds one ``RunConfig``. Below the entry point nothing sees the flags
themselves: each function takes the section it works with (the data, the
model, training, evaluation and prediction, distribution, outputs) or the
few values it needs, so its signature says what it depends on and nothing
can change a flag behind another's back. A value several sections need (the
seed, the batch size, the class count) is in each of them, taken from the
same flag. ``flags`` keeps every flag as parsed, for the PARAMETER log line,
TensorBoard's hyperparameters and the zoo package's record of the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


def _paths(values: list[str] | None) -> tuple[str, ...]:
    return tuple(values or ())


@dataclass(frozen=True)
class DataConfig:
    """Which stacks, how they are split and streamed, and the augmentation of the training stream."""

    data_dir: str | None
    train_images: tuple[str, ...]
    train_labels: tuple[str, ...]
    val_images: tuple[str, ...]
    val_labels: tuple[str, ...]
    test_images: tuple[str, ...]
    predict_input: str | None
    synth_data: bool
    fold: int | None
    fold_scheme: str
    split_seed: int | None
    input_mode: str
    volume_loading: str  # auto, memory or stream (data_loading/memory.py)
    num_classes: int
    batch_size: int
    seed: int
    augment: bool
    elastic: bool
    elastic_sigma: float
    elastic_grid: int
    border_weights: bool
    border_w0: float
    border_sigma: float
    border_class_weights: str


# glorot: Keras's default, the recipe's. he: the U-Net paper's Gaussian of standard deviation sqrt(2 / N), N the
# inputs of one unit, which keeps each ReLU layer's activations at the scale of its input; under glorot they
# shrink about 2x a layer, so a fresh UNet's output hardly depends on its input (docs/experiments.md).
WEIGHT_INITS = ("glorot", "he")


@dataclass(frozen=True)
class ModelConfig:
    """The network and the precision it computes in."""

    base_filters: int
    num_classes: int
    seed: int
    weight_init: str
    dtype: str
    xla: bool
    bf16_config_path: str


@dataclass(frozen=True)
class TrainingConfig:
    """The loop: steps, optimiser, logging, checkpoints, the start (resume or another model) and benchmarking."""

    max_steps: int
    batch_size: int
    learning_rate: float
    lr_warmup_steps: int
    weight_decay: float
    warmup_steps: int
    log_every: int
    checkpoint_every: int
    checkpoint_minutes: float
    keep_checkpoints: int
    resume_training: bool
    disable_ckpt_saving: bool
    init_from: str | None
    freeze_encoder: int | str | None
    benchmark: bool
    deterministic: bool
    seed: int


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation and prediction: when, how (strategy, TTA, ensembles) and what they draw and write."""

    evaluate_every: int
    finer_sweep: bool
    ensemble: tuple[str, ...]
    tta: bool
    predict_strategy: str
    cell_labels: bool
    cell_threshold: float | str | None
    overlays: int
    batch_size: int
    num_classes: int
    tile_size: int | None  # blockwise prediction's output tile; None: chosen per volume
    overwrite: bool  # blockwise prediction may start over on an output made otherwise


@dataclass(frozen=True)
class DistributionConfig:
    """The engine, the cluster's start-up deadline, and the device choice."""

    distribution: str
    cluster_timeout: float
    no_hpu: bool


@dataclass(frozen=True)
class OutputConfig:
    """Where the run writes, and who writes: the chief alone, or every worker in its own folder."""

    model_dir: Path
    log_dir: Path
    export_dir: Path
    log_all_workers: bool
    tensorboard_logging: bool
    dump_config: str | None
    zoo_name: str | None
    zoo_author: tuple[str, ...]


@dataclass(frozen=True)
class RunConfig:
    exec_mode: str
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    distribution: DistributionConfig
    outputs: OutputConfig
    flags: Mapping[str, Any] = field(default_factory=dict)  # every flag as parsed, read-only

    @property
    def trains(self) -> bool:
        return "train" in self.exec_mode

    @property
    def evaluates(self) -> bool:
        return "evaluate" in self.exec_mode

    @property
    def predicts(self) -> bool:
        return "predict" in self.exec_mode

    @property
    def exports(self) -> bool:
        return self.exec_mode == "export"

    @property
    def scores_validation(self) -> bool:
        """An evaluate mode, or training with --evaluate_every."""
        return self.evaluates or (self.trains and self.evaluation.evaluate_every > 0)

    @property
    def is_training_benchmark(self) -> bool:
        """Training benchmarks time steps only: no checkpoint is read, written or cleared, no lock is taken."""
        return self.training.benchmark and self.trains

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> RunConfig:
        """The sections from checked flags (``vars`` of runtime.cli.arguments.parse_args's result)."""
        f = dict(flags)
        model_dir = Path(f["model_dir"])
        return cls(
            exec_mode=f["exec_mode"],
            data=DataConfig(
                data_dir=f["data_dir"], train_images=_paths(f["train_images"]),
                train_labels=_paths(f["train_labels"]), val_images=_paths(f["val_images"]),
                val_labels=_paths(f["val_labels"]), test_images=_paths(f["test_images"]),
                predict_input=f["predict_input"], synth_data=f["synth_data"], fold=f["fold"],
                fold_scheme=f["fold_scheme"], split_seed=f["split_seed"], input_mode=f["input_mode"],
                volume_loading=f["volume_loading"],
                num_classes=f["num_classes"], batch_size=f["batch_size"], seed=f["seed"], augment=f["augment"],
                elastic=f["elastic"], elastic_sigma=f["elastic_sigma"], elastic_grid=f["elastic_grid"],
                border_weights=f["border_weights"], border_w0=f["border_w0"], border_sigma=f["border_sigma"],
                border_class_weights=f["border_class_weights"]),
            model=ModelConfig(base_filters=f["base_filters"], num_classes=f["num_classes"], seed=f["seed"],
                              weight_init=f["weight_init"], dtype=f["dtype"], xla=f["xla"],
                              bf16_config_path=f["bf16_config_path"]),
            training=TrainingConfig(
                max_steps=f["max_steps"], batch_size=f["batch_size"], learning_rate=f["learning_rate"],
                lr_warmup_steps=f["lr_warmup_steps"], weight_decay=f["weight_decay"], warmup_steps=f["warmup_steps"],
                log_every=f["log_every"], checkpoint_every=f["checkpoint_every"],
                checkpoint_minutes=f["checkpoint_minutes"],
                keep_checkpoints=f["keep_checkpoints"], resume_training=f["resume_training"],
                disable_ckpt_saving=f["disable_ckpt_saving"], init_from=f["init_from"],
                freeze_encoder=f["freeze_encoder"], benchmark=f["benchmark"], deterministic=f["deterministic"],
                seed=f["seed"]),
            evaluation=EvaluationConfig(
                evaluate_every=f["evaluate_every"], finer_sweep=f["finer_sweep"], ensemble=_paths(f["ensemble"]),
                tta=f["tta"], predict_strategy=f["predict_strategy"], cell_labels=f["cell_labels"],
                cell_threshold=f["cell_threshold"], overlays=f["overlays"], batch_size=f["batch_size"],
                num_classes=f["num_classes"], tile_size=None if f["tile_size"] == "auto" else int(f["tile_size"]),
                overwrite=f["overwrite"]),
            distribution=DistributionConfig(distribution=f["distribution"], cluster_timeout=f["cluster_timeout"],
                                            no_hpu=f["no_hpu"]),
            outputs=OutputConfig(
                model_dir=model_dir, log_dir=Path(f["log_dir"]) if f["log_dir"] else model_dir,
                export_dir=Path(f["export_dir"]) if f["export_dir"] else model_dir / "export",
                log_all_workers=f["log_all_workers"], tensorboard_logging=f["tensorboard_logging"],
                dump_config=f["dump_config"], zoo_name=f["zoo_name"], zoo_author=_paths(f["zoo_author"])),
            flags=MappingProxyType(f),
        )
