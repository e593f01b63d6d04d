#!/usr/bin/env python3
"""UNet2D medical image segmentation: train, evaluate and predict on the ISBI 2012 EM data, or your own.

    python unet2d.py --data_dir ./data --fold 0 --dtype bf16 --model_dir /tmp/unet2d
    python unet2d.py --train_images 'vols/*.tif' --train_labels 'labels/*.tif' --num_classes 3 \
        --input_mode tile --fold 0 --model_dir /tmp/mine

See README.md, and docs/usage.md for every mode and flag.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from common.errors import exit_status
from runtime.cli.arguments import parse_config

if TYPE_CHECKING:
    from common.config import RunConfig
    from runtime.cli.inputs import Plan
    from runtime.execution.device import Device, Precision
    from runtime.execution.distribution import Workers
    from runtime.execution.model_dir_lock import ModelDirLock


def run(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    tf_verbosity = config.flags["tf_verbosity"]
    if tf_verbosity is not None:  # must be set before TensorFlow is imported
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(tf_verbosity)
    from common.quiet_start import asked_for_tensorflow_lines, tensorflow_start_quietly
    from runtime.execution.signals import STOP

    # TensorFlow's C++ start-up lines are dropped unless asked for. A multi-worker job joins its
    # cluster outside (its waiting lines and TensorFlow's cluster start print to the real stderr).
    distribution = config.distribution
    joins_cluster = distribution.distribution == "multi_worker"
    with tensorflow_start_quietly(not asked_for_tensorflow_lines(tf_verbosity)):
        # Imported here so that --help and flag errors never wait for TensorFlow. The threads TensorFlow
        # starts meanwhile never take a SIGTERM (see StopSignals.holding_sigterm).
        with STOP.holding_sigterm():
            from runtime.cli.inputs import plan_run
            from runtime.cli.setup import lock_model_dir
            from runtime.execution.device import choose_precision, select_device
            from runtime.execution.distribution import make_workers

            device = select_device(distribution.no_hpu)  # loads Gaudi's module before any op runs
        precision = choose_precision(config.model.dtype, device)
        with STOP.during("checking the inputs"):
            plan = plan_run(config)  # before joining a cluster, so a bad input fails alone and at once
        if not joins_cluster:
            workers = make_workers(distribution.distribution, device.kind)  # before any op runs
    if joins_cluster:
        workers = make_workers(distribution.distribution, device.kind, distribution.cluster_timeout)
    lock = lock_model_dir(config, workers)  # before anything is read or written there
    if lock is not None:
        STOP.on_forced_exit(lock.release)
    try:
        run_modes(config, device, precision, workers, lock, plan)
    finally:
        if lock is not None:
            lock.release()


def run_modes(config: RunConfig, device: Device, precision: Precision, workers: Workers,
              lock: ModelDirLock | None, plan: Plan) -> None:
    """Everything after the model dir is ours: set-up, then each mode the run asks for, in order."""
    from model.unet import build_unet
    from runtime.cli.inputs import keep_intensity_window, load_dataset, load_prediction_inputs
    from runtime.cli.setup import (
        configure_tensorflow,
        make_logger,
        make_tensorboard,
        prepare_checkpoint_dir,
        stream_options,
    )
    from runtime.loop.context import RunContext
    from runtime.loop.runner import Runner

    exporting = config.exports
    configure_tensorflow(config, device, workers, bf16=precision.bf16 and not exporting)
    # A fresh training (and a benchmark) starts its log; every other run (resumed, evaluate, predict, export) adds
    # to it, so that a model dir's log holds its whole story and its export reports its training and evaluation.
    fresh = (config.trains and not config.training.resume_training) or config.training.benchmark
    logger = make_logger(config.outputs, workers, append=not fresh)
    if lock is not None and lock.taken_over:
        logger.log("LOCK", {"warning": lock.taken_over})
    if precision.warning and not exporting and workers.is_chief:
        print(f"unet2d.py: warning: {precision.warning}", file=sys.stderr, flush=True)

    data = config.data
    with workers.phase("reading the data"):
        dataset = None if exporting else load_dataset(data, stream_options(data, workers, device), plan)
        strategy = config.evaluation.predict_strategy
        prediction_inputs = load_prediction_inputs(data, dataset, strategy) if config.predicts else []
    checkpoint_dir = prepare_checkpoint_dir(config, workers)
    if config.trains:
        keep_intensity_window(config.outputs.model_dir, workers, dataset)
    tensorboard = make_tensorboard(config.outputs, workers)

    logger.log("PARAMETER", dict(config.flags))
    logger.log("SETUP", {"device": device.describe(), "engine": workers.engine, "workers": workers.size,
                         "replicas": workers.replicas, "distribution": workers.describe(),
                         "precision": "fp32 (exports are float32)" if exporting else precision.describe(),
                         "synthetic_data": data.synth_data})
    if dataset is not None:
        logger.log("DATA", {**dataset.describe_split(), "fold": data.fold, "fold_scheme": data.fold_scheme})
    if tensorboard is not None:
        tensorboard.hyperparameters(dict(config.flags))

    context = RunContext(config, workers, logger, dataset, checkpoint_dir, tensorboard, prediction_inputs,
                         plan.init_source)
    # Only training needs the weight gradient; exported models keep Keras's own Conv2D layers.
    matmul_gradient = device.prefers_matmul_filter_gradient and config.trains
    exact_bias = device.needs_exact_bias_gradient(precision.bf16) and config.trains
    model = config.model
    with workers.phase("building the model"):  # tf.distribute's first broadcast of the variables is here
        runner = Runner(context, lambda: build_unet(model.seed, model.num_classes,
                                                    matmul_filter_gradient=matmul_gradient,
                                                    base_filters=model.base_filters, exact_bias_gradient=exact_bias,
                                                    weight_init=model.weight_init))
    if config.trains:
        runner.train()
    if config.evaluates:
        runner.evaluate()
    if config.predicts:
        runner.predict()
    if exporting:
        runner.export()
    if tensorboard is not None:
        tensorboard.close()
    logger.close()


def _quiet_tensorflow() -> None:
    """After a user error, TensorFlow's clean-up warnings (e.g. about a checkpoint that did not fit) would
    bury the one line that says what is wrong."""
    if "tensorflow" in sys.modules:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    from runtime.execution.signals import STOP

    with STOP:  # SIGINT and SIGTERM end every phase from here on, cluster start included
        return exit_status("unet2d.py", lambda: run(argv), report=STOP.report, before_report=_quiet_tensorflow)


if __name__ == "__main__":
    sys.exit(main())
