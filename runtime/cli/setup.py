"""Turning parsed flags into a configured TensorFlow, logger and output folders."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from common import compat
from common.errors import UserInputError, write_failure
from common.files import ensure_writable_dir
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
from data_loading.memory import check_fits
from data_loading.volumes import plan_pairs, plan_stacks
from runtime.cli.arguments import evaluates
from runtime.execution.device import Device
from runtime.execution.distribution import Workers
from runtime.execution.model_dir_lock import ModelDirLock
from runtime.inference.thinned import load_best_threshold
from runtime.loop.checkpoints import checkpoint_dir, model_shape, no_checkpoint, saved_checkpoints
from runtime.loop.roles import is_training_benchmark, logs_here, saves_checkpoints, worker_log_dir
from runtime.loop.warm_start import Source, find_source
from runtime.reporting.dllog import Logger
from runtime.reporting.tensorboard import TensorBoardWriters


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


def configure_tensorflow(args: argparse.Namespace, device: Device, workers: Workers, bf16: bool) -> None:
    """Threads, seeds, precision (bf16 compute or not, resolved from --dtype) and debug dumps; to be called
    before the model is built."""
    if workers.local_size > 1 and not device.is_gaudi and "TF_NUM_INTRAOP_THREADS" not in os.environ:
        # Workers sharing a CPU split its cores instead of each taking them all (the launcher sets them itself).
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // workers.local_size))
    compat.keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    if device.is_gaudi:
        # Gaudi's graph compiler converts the listed ops itself; Keras stays float32.
        if bf16:
            os.environ["TF_BF16_CONVERSION"] = args.bf16_config_path
        compat.set_mixed_bfloat16(False)
    else:
        compat.set_mixed_bfloat16(bf16)
    if args.dump_config:
        dump_dir = Path(args.dump_config)
        ensure_writable_dir(dump_dir, "--dump_config")
        tf.debugging.experimental.enable_dump_debug_info(str(dump_dir), tensor_debug_mode="NO_TENSOR")


def stream_options(args: argparse.Namespace, workers: Workers, device: Device) -> StreamOptions:
    """How this worker's input pipeline is built on this device."""
    return StreamOptions(
        batch_size=args.batch_size, seed=args.seed, augment=args.augment,
        elastic_sigma=args.elastic_sigma if args.elastic else 0.0, elastic_grid=args.elastic_grid,
        border_w0=args.border_w0 if args.border_weights else 0.0, border_sigma=args.border_sigma,
        border_balance=args.border_class_weights == "balanced",
        rank=workers.replica_shards()[0], num_workers=workers.replicas,  # one input shard per replica
        parallel_map=device.is_gaudi2,  # as the recipe: parallel, deterministic mapping on Gaudi2
        prefetch_device=device.name if device.is_gaudi else None)


def make_logger(args: argparse.Namespace, workers: Workers) -> Logger:
    if not logs_here(args, workers):
        return Logger(stdout=False, json_path=None)
    log_dir = worker_log_dir(args, workers)
    ensure_writable_dir(log_dir, "--log_dir")
    # An export adds its lines to the log of the run it exports, whose flags and scores its zoo package reports.
    append = args.resume_training or args.exec_mode == "export"
    return Logger(stdout=True, json_path=log_dir / "log.json", append=append)


def make_tensorboard(args: argparse.Namespace, workers: Workers) -> TensorBoardWriters | None:
    if not args.tensorboard_logging or not logs_here(args, workers):
        return None
    return TensorBoardWriters(worker_log_dir(args, workers))


def prepare_checkpoint_dir(args: argparse.Namespace, workers: Workers) -> Path:
    """The folder this worker restores checkpoints from (and writes them to, if it saves).

    Every rank reads (a resumed run must agree on the step), only
    ``saves_checkpoints`` ranks write. A training benchmark neither reads nor
    writes it (``is_training_benchmark``), so it is not created then.
    """
    model_dir = Path(args.model_dir)
    if "train" in args.exec_mode and saves_checkpoints(args, workers):
        ensure_writable_dir(model_dir, "--model_dir")
    elif model_dir.exists() and not model_dir.is_dir():
        raise UserInputError(f"--model_dir is not a folder: {model_dir}")
    per_worker = workers.rank if args.log_all_workers and workers.size > 1 else None
    return checkpoint_dir(model_dir, per_worker)


def lock_model_dir(args: argparse.Namespace, workers: Workers) -> ModelDirLock | None:
    """Hold --model_dir for this run: alone to train, shared with other readers otherwise.

    The chief holds it for all workers. Training benchmarks neither read nor
    write the model dir and take no lock.
    """
    training = "train" in args.exec_mode
    if is_training_benchmark(args) or not workers.is_chief:
        return None
    model_dir = Path(args.model_dir)
    if training:
        ensure_writable_dir(model_dir, "--model_dir")
    elif not model_dir.is_dir():
        return None  # nothing to read there; the mode itself says so
    return ModelDirLock(model_dir, exclusive=training, mode=args.exec_mode).acquire()


def plan_data(args: argparse.Namespace) -> DataSources:
    """The stacks this mode reads, from their flags or --data_dir, checked from their headers."""
    mode = args.exec_mode
    need_train = "train" in mode or ("evaluate" in mode and not args.val_images)
    sources = DataSources()
    if need_train:
        sources.train.extend(plan_pairs(args.train_images, args.train_labels, "--train_images", "--train_labels")
                             if args.train_images else isbi_train(args.data_dir))
    if args.val_images and evaluates(args):
        sources.val.extend(plan_pairs(args.val_images, args.val_labels, "--val_images", "--val_labels"))
    if "predict" in mode:
        if args.predict_input:
            sources.test.extend(plan_stacks([args.predict_input], "--predict_input"))
        else:
            sources.test.extend(plan_stacks(args.test_images, "--test_images") if args.test_images
                                else isbi_test(args.data_dir))
    return sources


def check_inputs(args: argparse.Namespace) -> DataSources | None:
    """What costs next to nothing to check, checked before a worker joins its cluster.

    A worker whose input is bad then fails alone, in a second, instead of
    after its peers have waited for it: the Gaudi op lists, the model dir,
    and every stack the mode reads, planned from its headers and refused if
    it would not fit in memory. Returns the plan (None: no files to read).
    """
    validate_bf16_config(args.bf16_config_path)
    model_dir = Path(args.model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise UserInputError(f"--model_dir is not a folder: {model_dir}")
    checkpoints = checkpoint_dir(model_dir)
    if checkpoints.exists() and not checkpoints.is_dir():
        raise UserInputError(f"{checkpoints} is a file, where the run keeps its checkpoint folder: move it away "
                             "or choose another --model_dir (it is left as it is)")
    if args.exec_mode == "export":
        export_dir = Path(args.export_dir or model_dir / "export")
        if export_dir.exists() and not export_dir.is_dir():
            raise UserInputError(f"--export_dir is not a folder: {export_dir}")
    sources = None
    if args.exec_mode != "export" and not args.synth_data:
        sources = plan_data(args)
        check_fits(sources.memory_needed(args.input_mode, args.num_classes), "the image and label stacks")
    reads_checkpoint = "train" not in args.exec_mode and not args.benchmark
    if args.ensemble:
        check_ensemble(args)
    elif reads_checkpoint and not args.log_all_workers and not saved_checkpoints(checkpoint_dir(model_dir)):
        raise no_checkpoint(checkpoint_dir(model_dir))
    if args.cell_threshold == "best" and "predict" in args.exec_mode:
        try:  # no mode evaluates and predicts in one run: the threshold must be there already
            load_best_threshold(model_dir)
        except ValueError as error:
            raise UserInputError(f"--cell_threshold best: {error}") from None
    return sources


def check_init_from(args: argparse.Namespace) -> Source | None:
    """--init_from's model, checked like the inputs: before joining a cluster, so a bad one fails at once."""
    if not args.init_from:
        return None

    def warn(message: str) -> None:
        print(f"unet2d.py: warning: --init_from: {message}", file=sys.stderr, flush=True)
    return find_source(args.init_from, Path(args.model_dir), args.base_filters, warn)


def check_ensemble(args: argparse.Namespace) -> None:
    """Every --ensemble model dir holds a checkpoint of the model this run builds (width and classes)."""
    for folder in map(Path, args.ensemble):
        found = saved_checkpoints(checkpoint_dir(folder))
        if not found:
            raise no_checkpoint(checkpoint_dir(folder))
        try:
            width, classes = model_shape(found[0])
        except (ValueError, tf.errors.OpError) as error:
            raise UserInputError(f"--ensemble: cannot read the model in {found[0]}: {error}") from None
        if (width, classes) != (args.base_filters, args.num_classes):
            raise UserInputError(f"--ensemble: {folder} holds a model of width {width} with {classes} classes; "
                                 f"this run builds width {args.base_filters} with {args.num_classes} "
                                 "(--base_filters, --num_classes): the models of an ensemble must match")


@dataclass(frozen=True)
class Plan:
    """What the run reads, checked before a worker joins its cluster; assembly after the join takes it whole.

    A bad input therefore fails on its own worker, in a second, before any
    peer waits for it, and nothing after the join checks an input again.
    """

    sources: DataSources | None  # the stacks, planned from their headers; None: no files (export, --synth_data)
    init_source: Source | None  # --init_from's model
    window: IntensityWindow | None  # the model dir's grey-value window, for the modes that do not train


def plan_run(args: argparse.Namespace) -> Plan:
    sources = check_inputs(args)
    init_source = check_init_from(args)
    window = None if "train" in args.exec_mode else load_window(Path(args.model_dir))
    return Plan(sources, init_source, window)


def load_dataset(args: argparse.Namespace, options: StreamOptions, plan: Plan) -> Dataset | SyntheticDataset | None:
    """The stacks of the plan, read in full (None for export, which needs none). A training run takes its
    grey-value window from its own training images."""
    if args.exec_mode == "export":
        return None
    if args.synth_data:
        return SyntheticDataset(options, args.num_classes)
    return Dataset(plan.sources, options, args.fold, args.fold_scheme, args.input_mode, args.num_classes,
                   split_seed=args.split_seed, window=plan.window)


def keep_intensity_window(args: argparse.Namespace, workers: Workers,
                          dataset: Dataset | SyntheticDataset | None) -> None:
    """A training run's grey-value window beside its checkpoints, where evaluate, predict and export find it."""
    if "train" in args.exec_mode and workers.is_chief and dataset is not None and dataset.window is not None:
        try:
            save_window(Path(args.model_dir), dataset.window)
        except OSError as error:
            raise write_failure(INTENSITY_FILE, args.model_dir, error) from None


def load_prediction_inputs(args: argparse.Namespace, dataset: Dataset | SyntheticDataset) -> list[PredictionInput]:
    """What predict segments, one entry per stack, each with the masks file it writes."""
    inputs, files = [], set()
    for volume in dataset.test_volumes:
        if volume.source.name == TEST_IMAGES and not (args.test_images or args.predict_input):  # the recipe's names
            names, masks_file = [f"test_{i:03d}" for i in range(len(volume.images))], "test-masks.tif"
        else:
            names, masks_file = volume.names, f"{volume.source.stem or 'input'}-masks.tif"
        if masks_file in files:
            raise UserInputError(f"two test stacks are named {volume.source.stem}; their masks would overwrite "
                                 "each other in <model_dir>/predictions (rename one)")
        files.add(masks_file)
        inputs.append(PredictionInput(volume.images, names, Path("predictions") / masks_file))
    return inputs
