"""The training loop: steps, logging, checkpoints, stop signals and evaluations on the way, read top to bottom.

Training and its benchmark are this one loop (``--benchmark`` only skips
checkpoints and the per-window log). It works on the model, optimizer and
compiled steps that ``runtime.loop.runner.Runner`` holds.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from common.compat import optimizer_variables
from common.errors import TrainingDiverged, TrainingInterrupted, write_failure
from common.quiet_start import quiet_unless_asked
from data_loading.data_loader import read_errors_in_one_line
from runtime.execution.signals import STOP
from runtime.loop import checkpoints, portable, warm_start
from runtime.loop.collapse import CollapseWatch
from runtime.loop.roles import logs_here, saves_checkpoints
from runtime.loop.timing import StepTimer, performance_stats, seconds_since_process_start
from runtime.reporting.progress import ProgressBar

if TYPE_CHECKING:
    from runtime.loop.runner import Runner


def _start_step(runner: Runner) -> int:
    """Restore (--resume_training) or clear old checkpoints; the step to start from."""
    config, folder = runner.ctx.config, runner.ctx.checkpoint_dir
    saves = saves_checkpoints(config.training, config.outputs, runner.ctx.workers)
    if config.is_training_benchmark:
        return 0
    if config.training.resume_training:
        path, damaged = checkpoints.newest_intact(folder, runner.warn)
        if path is None:
            runner.ctx.logger.log("CHECKPOINT", {"message": f"no checkpoint in {folder}; starting at step 0"})
            _initialise(runner)
            return 0
        across = checkpoints.restore(runner.checkpoint, path)
        runner.ctx.logger.log("CHECKPOINT", {"restored": path, "step": int(runner.step.numpy()),
                                           **({"across_stacks": across} if across else {})})
        if saves and (damaged or checkpoints.state_names(folder) != path):
            # Before saving again: damaged files out of the way, the state file naming what is there.
            for moved in checkpoints.set_aside(damaged, folder):
                runner.warn(f"moved damaged {moved.name} to {moved.parent} (kept, not deleted)")
            checkpoints.write_state(folder, path)
        return int(runner.step.numpy())
    if saves and checkpoints.clear_checkpoints(folder):
        runner.ctx.logger.log("CHECKPOINT", {"cleared": str(folder)})
    _initialise(runner)
    return 0


def _initialise(runner: Runner) -> None:
    """--init_from: the trained model's weights, layer by layer, before the first step (never on resume:
    a run's own checkpoints hold what it trained since)."""
    source = runner.ctx.init_source
    if source is None:
        return
    loaded, fresh = warm_start.initialise(runner.model, source, runner.ctx.config.training.seed)
    runner.ctx.logger.log("CHECKPOINT", {"initialised_from": source.describe(), "loaded_layers": len(loaded),
                                       "fresh_layers": fresh, "source_classes": source.classes,
                                       "loaded": loaded})


def _save(runner: Runner, manager: tf.train.CheckpointManager | None) -> str | None:
    if manager is None:
        return None
    try:
        with quiet_unless_asked():  # a failed SaveV2 prints C++ warnings before our one line says why
            path = manager.save(checkpoint_number=runner.step)
        portable.record_writer(path)  # which stack wrote it, for the other stack's messages
    except (tf.errors.OpError, OSError) as error:
        checkpoints.remove_partial(Path(manager.directory))
        kept = manager.latest_checkpoint
        failure = write_failure(f"checkpoint {int(runner.step.numpy())}", manager.directory, error)
        raise type(failure)(f"{failure}; " + (f"the last good checkpoint {kept} is kept" if kept
                                              else "no checkpoint was written before")) from None
    runner.ctx.logger.log("CHECKPOINT", {"saved": path, "step": int(runner.step.numpy())})
    return path


def _stop_note(runner: Runner, manager: tf.train.CheckpointManager | None) -> str:
    """What an interrupted run saved, from this worker's point of view."""
    path = _save(runner, manager)
    if path:
        return f"wrote checkpoint {path}"
    training = runner.ctx.config.training
    if training.benchmark:
        return "wrote no checkpoint (benchmarks save none)"
    if training.disable_ckpt_saving:
        return "wrote no checkpoint (--disable_ckpt_saving)"
    return "the chief (worker 0) wrote the checkpoint"


def _log_window(runner: Runner, done: int, steps: int, ce: list[float], dice: list[float], shares: list[float],
                seconds: float) -> None:
    """The window's mean losses and speed, and its majority share: near 1.0 while the model is one class."""
    ctx = runner.ctx
    duration = seconds / len(ce)
    ce_mean, dice_mean = float(np.mean(ce)), float(np.mean(dice))
    images_per_step = ctx.config.training.batch_size * ctx.workers.replicas
    data = {"train_ce_loss": ce_mean, "train_dice_loss": dice_mean, "train_total_loss": ce_mean + dice_mean,
            "train_majority_share": float(np.mean(shares)),
            "iter duration [ms]": 1000.0 * duration, "IPS": images_per_step / duration}
    ctx.logger.log((done, steps), data)
    if ctx.tensorboard is not None:
        ctx.tensorboard.train_scalars(done, {**data, "loss": data["train_total_loss"],
                                             "examples/sec": data["IPS"], "global_step/sec": 1.0 / duration})


@contextmanager
def _progress_bar(runner: Runner, steps: int, start: int) -> Iterator[ProgressBar | None]:
    """A live bar on a terminal (None otherwise), kept clear of the log lines and removed at the end."""
    ctx = runner.ctx
    bar = None
    if logs_here(ctx.config.outputs, ctx.workers):
        bar = ProgressBar.for_stream(steps, start, ctx.config.training.batch_size * ctx.workers.replicas)
    ctx.logger.status_line = bar
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
        ctx.logger.status_line = None


def train(runner: Runner) -> None:
    ctx, workers = runner.ctx, runner.ctx.workers
    training, outputs = ctx.config.training, ctx.config.outputs
    steps = training.max_steps // workers.replicas
    # Built before any restore: Keras 3 restores Adam's moments only into existing slots.
    with workers.phase("restoring the checkpoint"):
        with workers.scope():
            runner.optimizer.build(runner.model.trainable_variables)
        start = _start_step(runner)
    runner.weights_ready = True
    if start >= steps:
        ctx.logger.log("CHECKPOINT", {"message": f"already trained {start} of {steps} steps"})
        return
    manager = None
    if saves_checkpoints(training, outputs, workers):
        manager = checkpoints.make_manager(runner.checkpoint, ctx.checkpoint_dir, training.keep_checkpoints)
    saver = checkpoints.PeriodicSaver(training.checkpoint_every, training.checkpoint_minutes)
    logging = logs_here(outputs, workers) and not training.benchmark
    # Outside benchmarks the warm-up shrinks for short runs, so they still report a speed.
    warmup = (training.warmup_steps if training.benchmark
              else min(training.warmup_steps, max(steps - start - 2, 0)))
    timer = StepTimer(warmup)
    window_ce, window_dice, window_shares, window_start = [], [], [], time.perf_counter()
    # A fresh run from random weights: does it end as a constant predictor (runtime/loop/collapse.py)?
    watch = CollapseWatch(logging and start == 0 and ctx.init_source is None)
    streams = [iter(ctx.dataset.train_fn(start_step=start, shard=shard)) for shard in workers.replica_shards()]
    with workers.phase("training"), _progress_bar(runner, steps, start) as bar, \
            contextlib.ExitStack() as after_first_step:
        timer.start()
        for step in range(start, steps):
            run_step = runner.decoder_step if _encoder_frozen(runner, step) else runner.train_step
            with read_errors_in_one_line():
                batches = [next(stream) for stream in streams]
            ce, dice, share = run_step(batches)
            ce, dice = float(ce), float(dice)  # reading the losses waits for the step: honest timing
            if not (math.isfinite(ce) and math.isfinite(dice)):
                raise TrainingDiverged(step + 1, ce, dice, None if ctx.config.is_training_benchmark
                                       else checkpoints.latest(ctx.checkpoint_dir))
            window_ce.append(ce)
            window_dice.append(dice)
            window_shares.append(float(share))
            if step == start:
                # After the first step, so that Adam's slots exist on every worker.
                workers.broadcast(runner.model.variables + optimizer_variables(runner.optimizer))
                first_step_at = seconds_since_process_start()
                # From here a stop signal waits for the step's end, the vote and a checkpoint.
                after_first_step.enter_context(STOP.after_each_step())
            timer.step_done()
            done = step + 1
            runner.step.assign(done)
            if bar is not None:
                bar.update(done, ce + dice)
            watch.add(ce + dice, window_shares[-1])
            if logging and (done - start == 1 or done % training.log_every == 0 or done == steps):
                _log_window(runner, done, steps, window_ce, window_dice, window_shares,
                            time.perf_counter() - window_start)
                window_ce, window_dice, window_shares, window_start = [], [], [], time.perf_counter()
            if workers.any(STOP.requested):
                raise TrainingInterrupted(STOP.signum or signal.SIGTERM, done, _stop_note(runner, manager))
            if done < steps and saver.due(done) and not training.benchmark:
                _save(runner, manager)
                saver.saved()
            every = ctx.config.evaluation.evaluate_every
            if every and done % every == 0 and done < steps and not training.benchmark:
                runner.evaluate(step=done)
        if logs_here(outputs, workers):
            ctx.logger.log((), {**performance_stats(timer.durations, training.batch_size * workers.replicas,
                                                    "train"), "time_to_first_step_s": first_step_at})
        if (constant := watch.verdict(steps)) is not None:
            ctx.logger.log("WARNING", {"message": constant})
        final = _save(runner, manager)
    if STOP.requested:  # came after the last vote, while saving: the training is complete, stop here
        raise TrainingInterrupted(STOP.signum, steps, f"wrote checkpoint {final}" if final
                                  else _stop_note(runner, None))


def _encoder_frozen(runner: Runner, step: int) -> bool:
    freeze = runner.ctx.config.training.freeze_encoder
    return freeze is not None and (freeze == "all" or step < freeze)
