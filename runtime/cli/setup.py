"""Turning the run's configuration into a configured TensorFlow, logger, TensorBoard and output folders.

What the run reads is checked and loaded by ``runtime.cli.inputs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from common import compat
from common.config import DataConfig, OutputConfig, RunConfig
from common.errors import UserInputError
from common.files import ensure_writable_dir
from data_loading.data_loader import StreamOptions
from runtime.execution.device import Device
from runtime.execution.distribution import Workers
from runtime.execution.model_dir_lock import ModelDirLock
from runtime.loop.checkpoints import checkpoint_dir
from runtime.loop.roles import logs_here, saves_checkpoints, worker_log_dir
from runtime.reporting.dllog import Logger
from runtime.reporting.tensorboard import TensorBoardWriters


def configure_tensorflow(config: RunConfig, device: Device, workers: Workers, bf16: bool) -> None:
    """Threads, seeds, precision (bf16 compute or not, resolved from --dtype) and debug dumps; to be called
    before the model is built."""
    if workers.local_size > 1 and not device.is_gaudi and "TF_NUM_INTRAOP_THREADS" not in os.environ:
        # Workers sharing a CPU split its cores instead of each taking them all (the launcher sets them itself).
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // workers.local_size))
    compat.keras.utils.set_random_seed(config.model.seed)
    if config.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    if device.is_gaudi:
        # Gaudi's graph compiler converts the listed ops itself; Keras stays float32.
        if bf16:
            os.environ["TF_BF16_CONVERSION"] = config.model.bf16_config_path
        compat.set_mixed_bfloat16(False)
    else:
        compat.set_mixed_bfloat16(bf16)
    if config.outputs.dump_config:
        dump_dir = Path(config.outputs.dump_config)
        ensure_writable_dir(dump_dir, "--dump_config")
        tf.debugging.experimental.enable_dump_debug_info(str(dump_dir), tensor_debug_mode="NO_TENSOR")


def stream_options(data: DataConfig, workers: Workers, device: Device) -> StreamOptions:
    """How this worker's input pipeline is built on this device."""
    return StreamOptions(
        batch_size=data.batch_size, seed=data.seed, augment=data.augment,
        elastic_sigma=data.elastic_sigma if data.elastic else 0.0, elastic_grid=data.elastic_grid,
        border_w0=data.border_w0 if data.border_weights else 0.0, border_sigma=data.border_sigma,
        border_balance=data.border_class_weights == "balanced",
        rank=workers.replica_shards()[0], num_workers=workers.replicas,  # one input shard per replica
        parallel_map=device.is_gaudi2,  # as the recipe: parallel, deterministic mapping on Gaudi2
        prefetch_device=device.name if device.is_gaudi else None)


def make_logger(outputs: OutputConfig, workers: Workers, append: bool) -> Logger:
    """``append``: add to the log of an earlier run (every run but a fresh training: an export's zoo package
    reports the flags and scores of the runs before it)."""
    if not logs_here(outputs, workers):
        return Logger(stdout=False, json_path=None)
    log_dir = worker_log_dir(outputs, workers)
    ensure_writable_dir(log_dir, "--log_dir")
    return Logger(stdout=True, json_path=log_dir / "log.json", append=append)


def make_tensorboard(outputs: OutputConfig, workers: Workers) -> TensorBoardWriters | None:
    if not outputs.tensorboard_logging or not logs_here(outputs, workers):
        return None
    return TensorBoardWriters(worker_log_dir(outputs, workers))


def prepare_checkpoint_dir(config: RunConfig, workers: Workers) -> Path:
    """The folder this worker restores checkpoints from (and writes them to, if it saves).

    Every rank reads (a resumed run must agree on the step), only
    ``saves_checkpoints`` ranks write. A training benchmark neither reads nor
    writes it (``is_training_benchmark``), so it is not created then.
    """
    model_dir = config.outputs.model_dir
    if config.trains and saves_checkpoints(config.training, config.outputs, workers):
        ensure_writable_dir(model_dir, "--model_dir")
    elif model_dir.exists() and not model_dir.is_dir():
        raise UserInputError(f"--model_dir is not a folder: {model_dir}")
    per_worker = workers.rank if config.outputs.log_all_workers and workers.size > 1 else None
    return checkpoint_dir(model_dir, per_worker)


def lock_model_dir(config: RunConfig, workers: Workers) -> ModelDirLock | None:
    """Hold --model_dir for this run: alone to train, shared with other readers otherwise.

    The chief holds it for all workers. Training benchmarks neither read nor
    write the model dir and take no lock.
    """
    if config.is_training_benchmark or not workers.is_chief:
        return None
    model_dir = config.outputs.model_dir
    if config.trains:
        ensure_writable_dir(model_dir, "--model_dir")
    elif not model_dir.is_dir():
        return None  # nothing to read there; the mode itself says so
    return ModelDirLock(model_dir, exclusive=config.trains, mode=config.exec_mode).acquire()


