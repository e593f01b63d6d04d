"""Evaluation: the recipe's losses over the validation batches, and the challenge scores slice by slice."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from data_loading.data_loader import read_errors_in_one_line
from runtime.inference import strategies
from runtime.inference.scores import SliceScores
from runtime.inference.thinned import FINER_THRESHOLDS, THRESHOLDS, save_best_threshold
from runtime.loop.collapse import one_class_warning
from runtime.loop.roles import logs_here, worker_log_dir
from runtime.reporting.overlays import write_overlays

if TYPE_CHECKING:
    from runtime.loop.runner import Runner


def evaluate(runner: Runner, step: int | None = None) -> dict[str, float]:
    """The recipe's five metrics (plus its 'loss' alias), and the challenge scores, on the validation slices."""
    runner.ensure_weights()
    with runner.ctx.workers.phase("evaluating"):
        return _evaluate(runner, int(runner.step.numpy()) if step is None else step)


def _validation_losses(runner: Runner) -> tuple[float, float]:
    """Mean cross-entropy and dice loss over the validation batches, each worker scoring every size-th one."""
    workers = runner.ctx.workers
    sums = np.zeros(3, np.float64)  # cross-entropy, dice loss, images
    with read_errors_in_one_line():  # the batches are read from the volumes as the loop reaches them
        for index, (images, labels) in enumerate(runner.ctx.dataset.eval_fn(count=1)):
            if index % workers.size == workers.rank:
                ce, dice = runner.eval_step(images, labels)
                size = int(images.shape[0])
                sums += (float(ce) * size, float(dice) * size, size)
    ce_sum, dice_sum, count = workers.sum_across_workers(sums)  # also where a lost peer shows
    return ce_sum / count, dice_sum / count


def _evaluate(runner: Runner, step: int) -> dict[str, float]:
    ctx = runner.ctx
    if ctx.tensorboard is not None:
        ctx.tensorboard.eval_time(step, "start")
    ce_loss, dice_loss = _validation_losses(runner)
    data = {"eval_ce_loss": ce_loss, "eval_dice_loss": dice_loss,
            "eval_total_loss": ce_loss + dice_loss, "eval_dice_score": 1.0 - dice_loss,
            "loss": ce_loss + dice_loss, "accuracy": 1.0 - dice_loss}
    if logs_here(ctx.config.outputs, ctx.workers):
        scores, one_class = _challenge_scores(runner, step)
        data.update(scores)
        ctx.logger.log((), {**data, "global_step": step, **({"warning": one_class} if one_class else {})})
        if one_class:
            ctx.logger.log("WARNING", {"message": one_class})
        if "eval_v_rand_thinned_threshold" in data and ctx.workers.is_chief:
            try:
                save_best_threshold(ctx.config.outputs.model_dir, step, data)
            except OSError as error:
                runner.warn(f"could not keep the best threshold in {ctx.config.outputs.model_dir}: {error}")
    if ctx.tensorboard is not None:
        ctx.tensorboard.eval_scalars(step, data)
        ctx.tensorboard.eval_time(step, "end")
    return data


def _challenge_scores(runner: Runner, step: int) -> tuple[dict[str, float], str | None]:
    """V_Rand, V_Info (of the mask, and the organisers' after thinning), mask and class Dice, at full size,
    scored slice by slice as the slices are read and predicted (runtime/inference/scores.py); and the warning
    when the masks are one class (runtime/loop/collapse.py)."""
    validation = getattr(runner.ctx.dataset, "validation_slices", None)
    if validation is None:  # synthetic data has no cell regions to score
        return {}, None
    evaluation = runner.ctx.config.evaluation
    scores = SliceScores(evaluation.num_classes, FINER_THRESHOLDS if evaluation.finer_sweep else THRESHOLDS)
    pending: deque[tuple[np.ndarray, np.ndarray]] = deque()  # slices read, waiting for their probabilities
    pictured: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # the first --overlays slices

    def images() -> Iterator[np.ndarray]:
        for image, truth in validation():
            pending.append((image, truth))
            yield image

    for probabilities in runner.full_resolution_probabilities(images()):
        image, truth = pending.popleft()
        predicted = strategies.class_ids(probabilities)
        scores.add(truth, predicted, probabilities)
        if len(pictured) < evaluation.overlays:
            pictured.append((image, predicted, truth))
    if pictured:
        names = [f"eval_step{step}_slice{index}" for index in runner.ctx.dataset.val_indices]
        images_, predicted_, truths = (list(column) for column in zip(*pictured, strict=True))
        write_overlays(worker_log_dir(runner.ctx.config.outputs, runner.ctx.workers) / "overlays", names, images_,
                       predicted_, truths, evaluation.overlays, evaluation.num_classes)
    return scores.scores(), one_class_warning(scores.predicted_pixels)
