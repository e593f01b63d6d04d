"""What a run reads: checked before a worker joins its cluster, loaded after.

``plan_run`` checks every input at the cost of its headers (stacks, the
model dir's checkpoints, --init_from, --ensemble, the Gaudi op lists) and
returns a typed ``Plan``, so that a bad input fails on its own worker in a
second; ``load_dataset`` and ``load_prediction_inputs`` load what the plan
says after the join, and nothing there checks an input again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from common.config import DataConfig, ModelConfig, RunConfig
from common.errors import UserInputError, write_failure
from data_loading.data_loader import (
    TEST_IMAGES,
    Dataset,
    DataSources,
    StreamOptions,
    SyntheticDataset,
    isbi_test,
    isbi_train,
)
from data_loading.image_stack import PredictionInput
from data_loading.input_paths import check_input
from data_loading.intensity import INTENSITY_FILE, IntensityWindow, load_window, save_window
from data_loading.memory import keep_in_memory
from data_loading.volumes import plan_pairs, plan_stacks
from runtime.execution.distribution import Workers
from runtime.inference.thinned import load_best_threshold
from runtime.loop.checkpoints import checkpoint_dir, model_shape, no_checkpoint, saved_checkpoints
from runtime.loop.warm_start import Source, find_source


def validate_bf16_config(path: str) -> None:
    """The Gaudi op lists must be readable JSON; checked everywhere so a bad path fails early."""
    check_input(Path(path), "--bf16_config_path")
    try:
        with open(path, encoding="utf-8") as handle:
            json.load(handle)
    except OSError as error:
        raise UserInputError(f"cannot read --bf16_config_path {path}: {error.strerror}") from None
    except ValueError as error:
        raise UserInputError(f"--bf16_config_path {path} is not valid JSON: {error}") from None


def plan_data(data: DataConfig, trains: bool, evaluates: bool, scores_validation: bool,
              predicts: bool) -> DataSources:
    """The stacks this mode reads, from their flags or --data_dir, checked from their headers."""
    sources = DataSources()
    if trains or (evaluates and not data.val_images):
        sources.train.extend(plan_pairs(data.train_images, data.train_labels, "--train_images", "--train_labels")
                             if data.train_images else isbi_train(data.data_dir))
    if data.val_images and scores_validation:
        sources.val.extend(plan_pairs(data.val_images, data.val_labels, "--val_images", "--val_labels"))
    if predicts:
        if data.predict_input:
            sources.test.extend(plan_stacks([data.predict_input], "--predict_input"))
        else:
            sources.test.extend(plan_stacks(data.test_images, "--test_images") if data.test_images
                                else isbi_test(data.data_dir))
    return sources


def check_inputs(config: RunConfig) -> DataSources | None:
    """What costs next to nothing to check, checked before a worker joins its cluster.

    A worker whose input is bad then fails alone, in a second, instead of
    after its peers have waited for it: the Gaudi op lists, the model dir,
    and every stack the mode reads, planned from its headers and refused if
    it would not fit in memory. Returns the plan (None: no files to read).
    """
    validate_bf16_config(config.model.bf16_config_path)
    model_dir = config.outputs.model_dir
    if model_dir.exists() and not model_dir.is_dir():
        raise UserInputError(f"--model_dir is not a folder: {model_dir}")
    checkpoints = checkpoint_dir(model_dir)
    if checkpoints.exists() and not checkpoints.is_dir():
        raise UserInputError(f"{checkpoints} is a file, where the run keeps its checkpoint folder: move it away "
                             "or choose another --model_dir (it is left as it is)")
    export_dir = config.outputs.export_dir
    if config.exports and export_dir.exists() and not export_dir.is_dir():
        raise UserInputError(f"--export_dir is not a folder: {export_dir}")
    sources = None
    data = config.data
    if not config.exports and not data.synth_data:
        sources = plan_data(data, config.trains, config.evaluates, config.scores_validation, config.predicts)
    reads_checkpoint = not config.trains and not config.training.benchmark
    if config.evaluation.ensemble:
        check_ensemble(config.evaluation.ensemble, config.model)
    elif reads_checkpoint and not config.outputs.log_all_workers and not saved_checkpoints(checkpoint_dir(model_dir)):
        raise no_checkpoint(checkpoint_dir(model_dir))
    if config.evaluation.cell_threshold == "best" and config.predicts:
        try:  # no mode evaluates and predicts in one run: the threshold must be there already
            load_best_threshold(model_dir)
        except ValueError as error:
            raise UserInputError(f"--cell_threshold best: {error}") from None
    return sources


def choose_loading(config: RunConfig, sources: DataSources | None) -> bool:
    """Whether the stacks stay in memory (--volume_loading), refused in one line if neither way fits."""
    if sources is None:
        return True
    data = config.data
    needs = sources.memory_needs(data.num_classes, data.border_weights and config.trains, config.evaluation.tta)
    return keep_in_memory(data.volume_loading, needs)


def check_init_from(init_from: str | None, model_dir: Path, base_filters: int) -> Source | None:
    """--init_from's model, checked like the inputs: before joining a cluster, so a bad one fails at once."""
    if not init_from:
        return None

    def warn(message: str) -> None:
        print(f"unet2d.py: warning: --init_from: {message}", file=sys.stderr, flush=True)
    return find_source(init_from, model_dir, base_filters, warn)


def check_ensemble(ensemble: tuple[str, ...], model: ModelConfig) -> None:
    """Every --ensemble model dir holds a checkpoint of the model this run builds (width and classes)."""
    for folder in map(Path, ensemble):
        found = saved_checkpoints(checkpoint_dir(folder))
        if not found:
            raise no_checkpoint(checkpoint_dir(folder))
        try:
            width, classes = model_shape(found[0])
        except (ValueError, tf.errors.OpError) as error:
            raise UserInputError(f"--ensemble: cannot read the model in {found[0]}: {error}") from None
        if (width, classes) != (model.base_filters, model.num_classes):
            raise UserInputError(f"--ensemble: {folder} holds a model of width {width} with {classes} classes; "
                                 f"this run builds width {model.base_filters} with {model.num_classes} "
                                 "(--base_filters, --num_classes): the models of an ensemble must match")


@dataclass(frozen=True)
class Plan:
    """What the run reads, checked before a worker joins its cluster; assembly after the join takes it whole.

    A bad input therefore fails on its own worker, in a second, before any
    peer waits for it, and nothing after the join checks an input again.
    """

    sources: DataSources | None  # the stacks, planned from their headers; None: no files (export, --synth_data)
    in_memory: bool  # the stacks are read into memory first; False: streamed a tile or a slice at a time
    init_source: Source | None  # --init_from's model
    window: IntensityWindow | None  # the model dir's grey-value window, for the modes that do not train


def plan_run(config: RunConfig) -> Plan:
    sources = check_inputs(config)
    in_memory = choose_loading(config, sources)
    init_source = check_init_from(config.training.init_from, config.outputs.model_dir, config.model.base_filters)
    window = None if config.trains else load_window(config.outputs.model_dir)
    return Plan(sources, in_memory, init_source, window)


def load_dataset(data: DataConfig, options: StreamOptions, plan: Plan) -> Dataset | SyntheticDataset:
    """The stacks of the plan, in memory or streamed as planned. A training run takes its grey-value window from
    its own training images, any other the model dir's."""
    if data.synth_data:
        return SyntheticDataset(options, data.num_classes)
    return Dataset(plan.sources, options, data.fold, data.fold_scheme, data.input_mode, data.num_classes,
                   split_seed=data.split_seed, window=plan.window, keep_in_memory=plan.in_memory)


def keep_intensity_window(model_dir: Path, workers: Workers, dataset: Dataset | SyntheticDataset | None) -> None:
    """A training run's grey-value window beside its checkpoints, where evaluate, predict and export find it."""
    if workers.is_chief and dataset is not None and dataset.window is not None:
        try:
            save_window(model_dir, dataset.window)
        except OSError as error:
            raise write_failure(INTENSITY_FILE, model_dir, error) from None


def load_prediction_inputs(data: DataConfig, dataset: Dataset | SyntheticDataset,
                           strategy: str = "resize") -> list[PredictionInput]:
    """What predict segments, one entry per stack, each with the masks file it writes: a TIFF, or for a stack
    in a chunked store predicted by overlap tiles an OME-Zarr image written block by block."""
    inputs, files = [], set()
    for volume in dataset.test_volumes:
        if volume.source.name == TEST_IMAGES and not (data.test_images or data.predict_input):  # the recipe's names
            names, masks_file = [f"test_{i:03d}" for i in range(volume.images.shape[0])], "test-masks.tif"
        else:
            suffix = ".ome.zarr" if volume.chunked and strategy == "tile" else ".tif"
            names, masks_file = volume.names, f"{volume.images.stem or 'input'}-masks{suffix}"
        if masks_file in files:
            raise UserInputError(f"two test stacks are named {volume.images.stem}; their masks would overwrite "
                                 "each other in <model_dir>/predictions (rename one)")
        files.add(masks_file)
        inputs.append(PredictionInput(volume.images, names, Path("predictions") / masks_file))
    return inputs
