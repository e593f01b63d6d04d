"""The model holder of a run: the model (an ensemble's members), its optimizer, step and compiled steps.

Built once, traced once; the phases that use it live in their own modules
(runtime/loop/training.py, evaluation.py, prediction.py, exporting.py), and
``Runner.train`` and its siblings only hand it to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.compat import keras, rng_state_variables
from runtime.inference import strategies
from runtime.inference.export import class_probabilities
from runtime.loop import checkpoints, evaluation, exporting, prediction, training, warm_start
from runtime.loop.collapse import majority_share
from runtime.loop.context import RunContext
from runtime.loop.losses import ensemble_losses, partial_losses, weight_decay
from runtime.loop.optimizer import FusedAdam


class Runner:
    """Holds the model, its optimizer and the compiled steps, so each is traced once per run."""

    def __init__(self, ctx: RunContext, build_model: Callable[[], keras.Model]) -> None:
        self.ctx = ctx
        with ctx.workers.scope():  # tf.distribute mirrors the variables made here on every replica
            self.model = build_model()
            # --ensemble: one model per model dir, self.model the first; evaluate and predict average them.
            self.members = [self.model] + [build_model() for _ in (ctx.config.evaluation.ensemble or [])[1:]]
            self.optimizer = FusedAdam(learning_rate=ctx.config.training.learning_rate,
                                       warmup_steps=ctx.config.training.lr_warmup_steps)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                              rng=rng_state_variables(self.model))
        self.weights_ready = False  # True once trained or restored in this process
        jit = True if ctx.config.model.xla else None  # None leaves TensorFlow's own auto-clustering setting alone
        self.train_step = ctx.workers.compile_step(self._train_step_fn, jit_compile=jit)
        # --freeze_encoder: a second step whose gradient stops above the encoder, whose weights it never updates.
        self.decoder_step = None
        if ctx.config.training.freeze_encoder is not None:
            self.decoder_step = ctx.workers.compile_step(self._decoder_step_fn, jit_compile=jit)
        self.eval_step = tf.function(self._eval_step_fn, jit_compile=jit)
        self.predict_step = tf.function(self._predict_step_fn, jit_compile=jit)

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

    def full_resolution_probabilities(self, slices: list[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
        """Each slice's class probabilities at its own size, by --predict_strategy (and --tta)."""
        evaluation = self.ctx.config.evaluation
        return strategies.iter_probabilities(self.predict_step, slices, evaluation.batch_size,
                                             evaluation.predict_strategy, evaluation.tta)

    def warn(self, message: str) -> None:
        self.ctx.logger.log("CHECKPOINT", {"warning": message})

    def across_stacks(self, message: str) -> None:
        self.ctx.logger.log("CHECKPOINT", {"across_stacks": message})

    # Shared by the phases --------------------------------------------------

    def ensure_weights(self) -> None:
        if self.weights_ready:
            return
        folders = [checkpoints.checkpoint_dir(Path(d)) for d in self.ctx.config.evaluation.ensemble or []]
        with self.ctx.workers.phase("restoring the checkpoint"):
            if not folders:
                path = checkpoints.restore_model(self.model, self.ctx.checkpoint_dir, self.warn, self.step,
                                                 self.across_stacks)
                self.ctx.logger.log("CHECKPOINT", {"restored": path, "step": int(self.step.numpy())})
            else:  # the first member's step stands for the ensemble's in the logs
                paths = [checkpoints.restore_model(member, folder, self.warn, self.step if index == 0 else None,
                                                   self.across_stacks)
                         for index, (member, folder) in enumerate(zip(self.members, folders, strict=True))]
                self.ctx.logger.log("CHECKPOINT", {"ensemble": paths, "step": int(self.step.numpy())})
        self.weights_ready = True

    # The phases (one module each) ---------------------------------------------

    def train(self) -> None:
        training.train(self)

    def evaluate(self, step: int | None = None) -> dict[str, float]:
        """The recipe's five metrics (plus its 'loss' alias), and the challenge scores, on the validation slices."""
        return evaluation.evaluate(self, step)

    def predict(self) -> list[Path]:
        return prediction.predict(self)

    def export(self) -> None:
        exporting.export(self)
