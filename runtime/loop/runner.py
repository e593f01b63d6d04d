"""Training, evaluation and prediction: one loop each, shared by normal and benchmark runs."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.compat import keras, optimizer_variables, rng_state_variables
from common.config import RunConfig
from common.errors import TrainingDiverged, TrainingInterrupted, UserInputError, write_failure
from common.files import replaced_folder
from common.geometry import OUTPUT_SIZE
from common.quiet_start import quiet_unless_asked
from data_loading.data_loader import Dataset, SyntheticDataset, read_errors_in_one_line
from data_loading.image_stack import PredictionInput
from data_loading.intensity import INTENSITY_FILE, load_window
from runtime.execution.distribution import Workers
from runtime.execution.signals import STOP
from runtime.inference import strategies
from runtime.inference.cells import each_ids_and_cells
from runtime.inference.export import KERAS_FILE, SAVED_MODEL_DIR, ZOO_PACKAGE, class_probabilities, export_model
from runtime.inference.networks import runner_networks
from runtime.inference.scores import SliceScores
from runtime.inference.thinned import FINER_THRESHOLDS, THRESHOLDS, load_best_threshold, save_best_threshold
from runtime.inference.zoo import write_package
from runtime.loop import checkpoints, model_card, portable, warm_start
from runtime.loop.blockwise import BlockwiseSettings, Share, model_fingerprint, predict_blockwise
from runtime.loop.collapse import CollapseWatch, majority_share, one_class_warning
from runtime.loop.losses import ensemble_losses, partial_losses, weight_decay
from runtime.loop.masks import blocks_to_tiff, write_masks
from runtime.loop.optimizer import FusedAdam
from runtime.loop.roles import logs_here, saves_checkpoints, worker_log_dir
from runtime.loop.timing import StepTimer, performance_stats, seconds_since_process_start
from runtime.reporting.dllog import Logger
from runtime.reporting.overlays import cover_picture, write_overlays
from runtime.reporting.progress import ProgressBar
from runtime.reporting.tensorboard import TensorBoardWriters

# What an export writes into its folder; anything else there is the user's and is kept.
EXPORT_ENTRIES = frozenset({KERAS_FILE, SAVED_MODEL_DIR, INTENSITY_FILE, ZOO_PACKAGE, f"{ZOO_PACKAGE}.zip"})


@dataclass
class RunContext:
    config: RunConfig
    workers: Workers
    logger: Logger
    dataset: Dataset | SyntheticDataset | None  # None: export, which reads no stacks
    checkpoint_dir: Path  # where this worker's checkpoints are (unused by training benchmarks)
    tensorboard: TensorBoardWriters | None = None
    prediction_inputs: list[PredictionInput] = field(default_factory=list)
    init_source: warm_start.Source | None = None  # --init_from's model, checked before the cluster join


class Runner:
    """Holds the model, its optimizer and the compiled steps, so each is traced once per run."""

    def __init__(self, ctx: RunContext, build_model: Callable[[], keras.Model]) -> None:
        self.ctx = ctx
        with ctx.workers.scope():  # tf.distribute mirrors the variables made here on every replica
            self.model = build_model()
            # --ensemble: one model per model dir, self.model the first; evaluate and predict average them.
            self.members = [self.model] + [build_model() for _ in (ctx.config.evaluation.ensemble or [])[1:]]
            self.optimizer = FusedAdam(learning_rate=ctx.config.training.learning_rate)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                              rng=rng_state_variables(self.model))
        self.weights_ready = False  # True once trained or restored in this process
        self._one_class: str | None = None  # the last evaluation's masks were one class (runtime/loop/collapse.py)
        jit = True if ctx.config.model.xla else None  # None leaves TensorFlow's own auto-clustering setting alone
        self._train_step = ctx.workers.compile_step(self._train_step_fn, jit_compile=jit)
        # --freeze_encoder: a second step whose gradient stops above the encoder, whose weights it never updates.
        self._decoder_step = None
        if ctx.config.training.freeze_encoder is not None:
            self._decoder_step = ctx.workers.compile_step(self._decoder_step_fn, jit_compile=jit)
        self._eval_step = tf.function(self._eval_step_fn, jit_compile=jit)
        self._predict_step = tf.function(self._predict_step_fn, jit_compile=jit)

    # Compiled steps -------------------------------------------------------

    def _train_step_fn(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return self._update(images, labels, self.model.trainable_variables)

    def _decoder_step_fn(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        frozen = {id(variable) for variable in warm_start.encoder_variables(self.model)}
        return self._update(images, labels, [v for v in self.model.trainable_variables if id(v) not in frozen])

    def _update(self, images: tf.Tensor, labels: tf.Tensor, variables: list) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One optimizer step on ``variables``; the loss (weight decay included) is that of the whole model.
        Also the batch's majority share, which says a run stuck at a constant prediction (collapse.py)."""
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            ce, dice = partial_losses(logits, labels)
            loss = ce + dice + weight_decay(self.model.trainable_variables, self.ctx.config.training.weight_decay)
            # Scaled so that the engine's all-reduce yields the mean gradient over replicas.
            loss = loss * self.ctx.workers.gradient_scale
        tape = self.ctx.workers.wrap_tape(tape)
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return ce, dice, majority_share(logits)

    def _eval_step_fn(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The recipe's losses; with --ensemble and --tta, those of the mean over the members and the views,
        so that eval_dice_score scores what predict writes."""
        logits = [output for member in self.members
                  for output in strategies.views_mapped_back(lambda x, m=member: m(x, training=False), images,
                                                              self.ctx.config.evaluation.tta)]
        return partial_losses(logits[0], labels) if len(logits) == 1 else ensemble_losses(logits, labels)

    def _predict_step_fn(self, images: tf.Tensor) -> tf.Tensor:
        """Class probabilities; with --ensemble, the mean of the members'."""
        members = [class_probabilities(member(images, training=False)) for member in self.members]
        return tf.add_n(members) / len(members)

    def _full_resolution_probabilities(self, slices: list[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
        """Each slice's class probabilities at its own size, by --predict_strategy (and --tta)."""
        evaluation = self.ctx.config.evaluation
        return strategies.iter_probabilities(self._predict_step, slices, evaluation.batch_size,
                                             evaluation.predict_strategy, evaluation.tta)

    # Training ---------------------------------------------------------------

    def _start_step(self) -> int:
        """Restore (--resume_training) or clear old checkpoints; the step to start from."""
        config, folder = self.ctx.config, self.ctx.checkpoint_dir
        saves = saves_checkpoints(config.training, config.outputs, self.ctx.workers)
        if config.is_training_benchmark:
            return 0
        if config.training.resume_training:
            path, damaged = checkpoints.newest_intact(folder, self._warn)
            if path is None:
                self.ctx.logger.log("CHECKPOINT", {"message": f"no checkpoint in {folder}; starting at step 0"})
                self._initialise()
                return 0
            across = checkpoints.restore(self.checkpoint, path)
            self.ctx.logger.log("CHECKPOINT", {"restored": path, "step": int(self.step.numpy()),
                                               **({"across_stacks": across} if across else {})})
            if saves and (damaged or checkpoints.state_names(folder) != path):
                # Before saving again: damaged files out of the way, the state file naming what is there.
                for moved in checkpoints.set_aside(damaged, folder):
                    self._warn(f"moved damaged {moved.name} to {moved.parent} (kept, not deleted)")
                checkpoints.write_state(folder, path)
            return int(self.step.numpy())
        if saves and checkpoints.clear_checkpoints(folder):
            self.ctx.logger.log("CHECKPOINT", {"cleared": str(folder)})
        self._initialise()
        return 0

    def _initialise(self) -> None:
        """--init_from: the trained model's weights, layer by layer, before the first step (never on resume:
        a run's own checkpoints hold what it trained since)."""
        source = self.ctx.init_source
        if source is None:
            return
        loaded, fresh = warm_start.initialise(self.model, source, self.ctx.config.training.seed)
        self.ctx.logger.log("CHECKPOINT", {"initialised_from": source.describe(), "loaded_layers": len(loaded),
                                           "fresh_layers": fresh, "source_classes": source.classes,
                                           "loaded": loaded})

    def _warn(self, message: str) -> None:
        self.ctx.logger.log("CHECKPOINT", {"warning": message})

    def _across_stacks(self, message: str) -> None:
        self.ctx.logger.log("CHECKPOINT", {"across_stacks": message})

    def _save(self, manager: tf.train.CheckpointManager | None) -> str | None:
        if manager is None:
            return None
        try:
            with quiet_unless_asked():  # a failed SaveV2 prints C++ warnings before our one line says why
                path = manager.save(checkpoint_number=self.step)
            portable.record_writer(path)  # which stack wrote it, for the other stack's messages
        except (tf.errors.OpError, OSError) as error:
            checkpoints.remove_partial(Path(manager.directory))
            kept = manager.latest_checkpoint
            failure = write_failure(f"checkpoint {int(self.step.numpy())}", manager.directory, error)
            raise type(failure)(f"{failure}; " + (f"the last good checkpoint {kept} is kept" if kept
                                                  else "no checkpoint was written before")) from None
        self.ctx.logger.log("CHECKPOINT", {"saved": path, "step": int(self.step.numpy())})
        return path

    def _stop_note(self, manager: tf.train.CheckpointManager | None) -> str:
        """What an interrupted run saved, from this worker's point of view."""
        path = self._save(manager)
        if path:
            return f"wrote checkpoint {path}"
        training = self.ctx.config.training
        if training.benchmark:
            return "wrote no checkpoint (benchmarks save none)"
        if training.disable_ckpt_saving:
            return "wrote no checkpoint (--disable_ckpt_saving)"
        return "the chief (worker 0) wrote the checkpoint"

    def _log_window(self, done: int, steps: int, ce: list[float], dice: list[float], seconds: float) -> None:
        ctx = self.ctx
        duration = seconds / len(ce)
        ce_mean, dice_mean = float(np.mean(ce)), float(np.mean(dice))
        images_per_step = ctx.config.training.batch_size * ctx.workers.replicas
        data = {"train_ce_loss": ce_mean, "train_dice_loss": dice_mean, "train_total_loss": ce_mean + dice_mean,
                "iter duration [ms]": 1000.0 * duration, "IPS": images_per_step / duration}
        ctx.logger.log((done, steps), data)
        if ctx.tensorboard is not None:
            ctx.tensorboard.train_scalars(done, {**data, "loss": data["train_total_loss"],
                                                 "examples/sec": data["IPS"], "global_step/sec": 1.0 / duration})

    @contextmanager
    def _progress_bar(self, steps: int, start: int) -> Iterator[ProgressBar | None]:
        """A live bar on a terminal (None otherwise), kept clear of the log lines and removed at the end."""
        ctx = self.ctx
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

    def train(self) -> None:
        ctx, workers = self.ctx, self.ctx.workers
        training, outputs = ctx.config.training, ctx.config.outputs
        steps = training.max_steps // workers.replicas
        # Built before any restore: Keras 3 restores Adam's moments only into existing slots.
        with workers.phase("restoring the checkpoint"):
            with workers.scope():
                self.optimizer.build(self.model.trainable_variables)
            start = self._start_step()
        self.weights_ready = True
        if start >= steps:
            ctx.logger.log("CHECKPOINT", {"message": f"already trained {start} of {steps} steps"})
            return
        manager = None
        if saves_checkpoints(training, outputs, workers):
            manager = checkpoints.make_manager(self.checkpoint, ctx.checkpoint_dir, training.keep_checkpoints)
        saver = checkpoints.PeriodicSaver(training.checkpoint_every, training.checkpoint_minutes)
        logging = logs_here(outputs, workers) and not training.benchmark
        # Outside benchmarks the warm-up shrinks for short runs, so they still report a speed.
        warmup = (training.warmup_steps if training.benchmark
                  else min(training.warmup_steps, max(steps - start - 2, 0)))
        timer = StepTimer(warmup)
        window_ce, window_dice, window_start = [], [], time.perf_counter()
        # A fresh run from random weights: does it end as a constant predictor (runtime/loop/collapse.py)?
        watch = CollapseWatch(logging and start == 0 and ctx.init_source is None)
        streams = [iter(ctx.dataset.train_fn(start_step=start, shard=shard)) for shard in workers.replica_shards()]
        with workers.phase("training"), self._progress_bar(steps, start) as bar, \
                contextlib.ExitStack() as after_first_step:
            timer.start()
            for step in range(start, steps):
                run_step = self._decoder_step if self._encoder_frozen(step) else self._train_step
                with read_errors_in_one_line():
                    batches = [next(stream) for stream in streams]
                ce, dice, share = run_step(batches)
                ce, dice = float(ce), float(dice)  # reading the losses waits for the step: honest timing
                if not (math.isfinite(ce) and math.isfinite(dice)):
                    raise TrainingDiverged(step + 1, ce, dice, None if ctx.config.is_training_benchmark
                                           else checkpoints.latest(ctx.checkpoint_dir))
                window_ce.append(ce)
                window_dice.append(dice)
                if step == start:
                    # After the first step, so that Adam's slots exist on every worker.
                    workers.broadcast(self.model.variables + optimizer_variables(self.optimizer))
                    first_step_at = seconds_since_process_start()
                    # From here a stop signal waits for the step's end, the vote and a checkpoint.
                    after_first_step.enter_context(STOP.after_each_step())
                timer.step_done()
                done = step + 1
                self.step.assign(done)
                if bar is not None:
                    bar.update(done, ce + dice)
                watch.add(ce + dice, float(share))
                if logging and (done - start == 1 or done % training.log_every == 0 or done == steps):
                    self._log_window(done, steps, window_ce, window_dice, time.perf_counter() - window_start)
                    window_ce, window_dice, window_start = [], [], time.perf_counter()
                if workers.any(STOP.requested):
                    raise TrainingInterrupted(STOP.signum or signal.SIGTERM, done, self._stop_note(manager))
                if done < steps and saver.due(done) and not training.benchmark:
                    self._save(manager)
                    saver.saved()
                every = ctx.config.evaluation.evaluate_every
                if every and done % every == 0 and done < steps and not training.benchmark:
                    self.evaluate(step=done)
            if logs_here(outputs, workers):
                ctx.logger.log((), {**performance_stats(timer.durations, training.batch_size * workers.replicas,
                                                        "train"), "time_to_first_step_s": first_step_at})
            if (constant := watch.verdict(steps)) is not None:
                ctx.logger.log("WARNING", {"message": constant})
            final = self._save(manager)
        if STOP.requested:  # came after the last vote, while saving: the training is complete, stop here
            raise TrainingInterrupted(STOP.signum, steps, f"wrote checkpoint {final}" if final
                                      else self._stop_note(None))

    def _encoder_frozen(self, step: int) -> bool:
        freeze = self.ctx.config.training.freeze_encoder
        return freeze is not None and (freeze == "all" or step < freeze)

    # Evaluation and prediction ---------------------------------------------

    def _ensure_weights(self) -> None:
        if self.weights_ready:
            return
        folders = [checkpoints.checkpoint_dir(Path(d)) for d in self.ctx.config.evaluation.ensemble or []]
        with self.ctx.workers.phase("restoring the checkpoint"):
            if not folders:
                path = checkpoints.restore_model(self.model, self.ctx.checkpoint_dir, self._warn, self.step,
                                                 self._across_stacks)
                self.ctx.logger.log("CHECKPOINT", {"restored": path, "step": int(self.step.numpy())})
            else:  # the first member's step stands for the ensemble's in the logs
                paths = [checkpoints.restore_model(member, folder, self._warn, self.step if index == 0 else None,
                                                   self._across_stacks)
                         for index, (member, folder) in enumerate(zip(self.members, folders, strict=True))]
                self.ctx.logger.log("CHECKPOINT", {"ensemble": paths, "step": int(self.step.numpy())})
        self.weights_ready = True

    def evaluate(self, step: int | None = None) -> dict[str, float]:
        """The recipe's five metrics (plus its 'loss' alias), and the challenge scores, on the validation slices."""
        self._ensure_weights()
        with self.ctx.workers.phase("evaluating"):
            return self._evaluate(int(self.step.numpy()) if step is None else step)

    def _validation_losses(self) -> tuple[float, float]:
        """Mean cross-entropy and dice loss over the validation batches, each worker scoring every size-th one."""
        workers = self.ctx.workers
        sums = np.zeros(3, np.float64)  # cross-entropy, dice loss, images
        with read_errors_in_one_line():  # the batches are read from the volumes as the loop reaches them
            for index, (images, labels) in enumerate(self.ctx.dataset.eval_fn(count=1)):
                if index % workers.size == workers.rank:
                    ce, dice = self._eval_step(images, labels)
                    size = int(images.shape[0])
                    sums += (float(ce) * size, float(dice) * size, size)
        ce_sum, dice_sum, count = workers.sum_across_workers(sums)  # also where a lost peer shows
        return ce_sum / count, dice_sum / count

    def _evaluate(self, step: int) -> dict[str, float]:
        ctx = self.ctx
        if ctx.tensorboard is not None:
            ctx.tensorboard.eval_time(step, "start")
        ce_loss, dice_loss = self._validation_losses()
        data = {"eval_ce_loss": ce_loss, "eval_dice_loss": dice_loss,
                "eval_total_loss": ce_loss + dice_loss, "eval_dice_score": 1.0 - dice_loss,
                "loss": ce_loss + dice_loss, "accuracy": 1.0 - dice_loss}
        if logs_here(ctx.config.outputs, ctx.workers):
            data.update(self._challenge_scores(step))
            one_class = self._one_class
            ctx.logger.log((), {**data, "global_step": step, **({"warning": one_class} if one_class else {})})
            if one_class:
                ctx.logger.log("WARNING", {"message": one_class})
            if "eval_v_rand_thinned_threshold" in data and ctx.workers.is_chief:
                try:
                    save_best_threshold(ctx.config.outputs.model_dir, step, data)
                except OSError as error:
                    self._warn(f"could not keep the best threshold in {ctx.config.outputs.model_dir}: {error}")
        if ctx.tensorboard is not None:
            ctx.tensorboard.eval_scalars(step, data)
            ctx.tensorboard.eval_time(step, "end")
        return data

    def _challenge_scores(self, step: int) -> dict[str, float]:
        """V_Rand, V_Info (of the mask, and the organisers' after thinning), mask and class Dice, at full size,
        scored slice by slice as the slices are read and predicted (runtime/inference/scores.py)."""
        self._one_class = None
        validation = getattr(self.ctx.dataset, "validation_slices", None)
        if validation is None:  # synthetic data has no cell regions to score
            return {}
        evaluation = self.ctx.config.evaluation
        scores = SliceScores(evaluation.num_classes, FINER_THRESHOLDS if evaluation.finer_sweep else THRESHOLDS)
        pending: deque[tuple[np.ndarray, np.ndarray]] = deque()  # slices read, waiting for their probabilities
        pictured: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # the first --overlays slices

        def images() -> Iterator[np.ndarray]:
            for image, truth in validation():
                pending.append((image, truth))
                yield image

        for probabilities in self._full_resolution_probabilities(images()):
            image, truth = pending.popleft()
            predicted = strategies.class_ids(probabilities)
            scores.add(truth, predicted, probabilities)
            if len(pictured) < evaluation.overlays:
                pictured.append((image, predicted, truth))
        if pictured:
            names = [f"eval_step{step}_slice{index}" for index in self.ctx.dataset.val_indices]
            images_, predicted_, truths = (list(column) for column in zip(*pictured, strict=True))
            write_overlays(worker_log_dir(self.ctx.config.outputs, self.ctx.workers) / "overlays", names, images_,
                           predicted_, truths, evaluation.overlays, evaluation.num_classes)
        self._one_class = one_class_warning(scores.predicted_pixels)
        return scores.scores()

    def predict(self) -> list[Path]:
        """Masks of each test stack (0/255 for two classes, class ids for more), under <model_dir>/predictions."""
        ctx = self.ctx
        if ctx.config.training.benchmark:
            if not self.weights_ready and checkpoints.latest(ctx.checkpoint_dir):  # trained weights, if any
                self._ensure_weights()
            with ctx.workers.phase("predicting"):
                self._benchmark_predict()
            return []
        threshold = self._cell_threshold()  # before the weights: a missing 'best' fails at once
        self._ensure_weights()
        with ctx.workers.phase("predicting"):
            return [path for source in ctx.prediction_inputs
                    if (path := self._predict_stack(source, threshold)) is not None]

    def _predict_stack(self, source: PredictionInput, threshold: float | None) -> Path | None:
        """One stack: into OME-Zarr block by block (a chunked store's, or with several workers, each its own
        blocks); else read, segmented and written to the masks TIFF slice by slice."""
        evaluation, workers = self.ctx.config.evaluation, self.ctx.workers
        path = self.ctx.config.outputs.model_dir / source.masks_file
        if path.name.endswith(".zarr") or workers.size > 1:
            return self._predict_blockwise(source, threshold, path)
        reader = source.slices
        maps = self._full_resolution_probabilities(reader.read(z) for z in range(reader.shape[0]))
        try:
            summary = write_masks(path, reader, source.names, each_ids_and_cells(maps, threshold),
                                  evaluation.num_classes, evaluation.overlays, evaluation.cell_labels)
        except OSError as error:
            raise write_failure(path.name, path.parent, error) from None
        if evaluation.cell_labels:
            summary["cell_threshold"] = "class decision" if threshold is None else threshold
        self.ctx.logger.log("PREDICT", {"predictions": str(path), "slices": reader.shape[0],
                                        "strategy": evaluation.predict_strategy, **summary})
        return path

    def _predict_blockwise(self, source: PredictionInput, threshold: float | None, path: Path) -> Path | None:
        """Blocks of whole output chunks, every worker its share, none holding the volume; a TIFF output (several
        workers on a stack that is not in a chunked store) is written by the chief from the blocks, slice by
        slice, and the blocks' own images removed."""
        evaluation, workers = self.ctx.config.evaluation, self.ctx.workers
        if evaluation.predict_strategy != "tile":
            raise UserInputError(f"{path.name}: predicting a chunked store, or with several workers, goes block by "
                                 "block with overlap tiles: add --predict_strategy tile")
        as_tiff = not path.name.endswith(".zarr")
        target = path.with_name(f".{path.stem}.blocks.ome.zarr") if as_tiff else path
        # A TIFF output keeps the tile strategy's 388 tiles (the masks one worker writes) unless asked otherwise.
        tile = evaluation.tile_size or (OUTPUT_SIZE if as_tiff else None)
        settings = BlockwiseSettings(tile=tile, tta=evaluation.tta, cell_labels=evaluation.cell_labels,
                                     cell_threshold=threshold, batch_size=evaluation.batch_size,
                                     overwrite=evaluation.overwrite or as_tiff,
                                     overlays=0 if as_tiff else evaluation.overlays)
        networks = runner_networks(self.members, evaluation.num_classes)
        share = Share(workers.rank, workers.size, workers.any)
        try:
            summary = predict_blockwise(source.slices, source.names, networks, target, settings, self._model_id(),
                                        self._warn, share, path.parent / "overlays")
            if not workers.is_chief:
                return None
            if as_tiff:
                summary.update(blocks_to_tiff(target, path, source.slices, source.names, settings, evaluation.overlays,
                                              evaluation.num_classes))
        except OSError as error:
            raise write_failure(path.name, path.parent, error) from None
        summary.pop("summary", None)
        if evaluation.cell_labels:
            summary["cell_threshold"] = "class decision" if threshold is None else threshold
        self.ctx.logger.log("PREDICT", {**summary, "predictions": str(path), "slices": source.slices.shape[0],
                                        "strategy": "tile, blockwise"})
        return path

    def _model_id(self) -> str:
        """What made these weights: a hash of the checkpoint files of each model."""
        folders = [checkpoints.checkpoint_dir(Path(d)) for d in self.ctx.config.evaluation.ensemble or []]
        newest = [checkpoints.latest(folder) for folder in folders or [self.ctx.checkpoint_dir]]
        return model_fingerprint(file for prefix in newest if prefix for file in Path(prefix).parent.glob(
            f"{Path(prefix).name}.*"))

    def _cell_threshold(self) -> float | None:
        """--cell_threshold as a number (``best``: the last evaluation's), None for the class decision."""
        chosen = self.ctx.config.evaluation.cell_threshold
        if chosen != "best":
            return chosen
        try:
            threshold, step = load_best_threshold(self.ctx.config.outputs.model_dir)
        except ValueError as error:
            raise UserInputError(f"--cell_threshold best: {error}") from None
        newest = checkpoints.latest(self.ctx.checkpoint_dir)
        if newest and not newest.endswith(f"-{step}") and self.ctx.workers.is_chief:
            self._warn(f"--cell_threshold best: {threshold} was found by the evaluation at step {step}, "
                       f"not of the newest checkpoint {Path(newest).name}; evaluate again to refresh it")
        return threshold

    def export(self) -> None:
        """The latest checkpoint's weights as unet2d.keras and a SavedModel, for serving, and as a BioImage
        Model Zoo package (SavedModel and ONNX weights) for the tools EM users work in."""
        self._ensure_weights()
        if not self.ctx.workers.is_chief:
            return
        config = self.ctx.config
        folder = config.outputs.export_dir
        window = load_window(config.outputs.model_dir)
        sample, sample_source = model_card.sample_slice(config.data, window)
        info = replace(model_card.package_info(config.model, config.data.input_mode, config.outputs,
                                               self.ctx.workers.engine, sample_source), window=window)
        try:  # the whole export folder is replaced in one step: never new weights beside an old window
            with self.ctx.workers.phase("exporting"), quiet_unless_asked(), \
                    replaced_folder(folder, EXPORT_ENTRIES) as staging:
                written = [*export_model(self.model, staging, window)]
                started = time.perf_counter()
                written += write_package(self.model, staging / ZOO_PACKAGE, info, sample,
                                         lambda image, ids: cover_picture(image, ids, config.model.num_classes))
        except (OSError, tf.errors.OpError) as error:
            raise write_failure("the export", folder, error) from None
        keras_file, saved_model, package, archive = (folder / path.name for path in written)
        self.ctx.logger.log("EXPORT", {"keras": str(keras_file), "saved_model": str(saved_model),
                                       "zoo_package": str(package), "zoo_zip": str(archive),
                                       "zoo_seconds": round(time.perf_counter() - started, 1)})

    def _benchmark_predict(self) -> None:
        training = self.ctx.config.training
        timer = StepTimer(training.warmup_steps)
        batches = self.ctx.dataset.test_fn(count=None, drop_remainder=True).take(training.max_steps)
        first_step_at = None
        timer.start()
        for images in batches:
            self._predict_step(images).numpy()
            timer.step_done()
            first_step_at = first_step_at or seconds_since_process_start()
        if self.ctx.workers.is_chief:  # every worker segments batches of its own meanwhile
            images_per_step = training.batch_size * self.ctx.workers.size
            self.ctx.logger.log((), {**performance_stats(timer.durations, images_per_step, "test"),
                                     "time_to_first_step_s": first_step_at})
        return None
