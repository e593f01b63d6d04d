"""Prediction of the test stacks: to TIFF slice by slice, or block by block into OME-Zarr (chunked stores,
several workers), and the prediction benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import UserInputError, write_failure
from common.geometry import OUTPUT_SIZE
from data_loading.image_stack import PredictionInput
from runtime.inference.networks import runner_networks
from runtime.inference.thinned import load_best_threshold
from runtime.loop import checkpoints
from runtime.loop.blockwise import BlockwiseSettings, Share, model_fingerprint, predict_blockwise
from runtime.loop.masks import blocks_to_tiff, predict_to_tiff
from runtime.loop.timing import StepTimer, performance_stats, seconds_since_process_start

if TYPE_CHECKING:
    from runtime.loop.runner import Runner


def predict(runner: Runner) -> list[Path]:
    """Masks of each test stack (0/255 for two classes, class ids for more), under <model_dir>/predictions."""
    ctx = runner.ctx
    if ctx.config.training.benchmark:
        if not runner.weights_ready and checkpoints.latest(ctx.checkpoint_dir):  # trained weights, if any
            runner.ensure_weights()
        with ctx.workers.phase("predicting"):
            _benchmark_predict(runner)
        return []
    threshold = _cell_threshold(runner)  # before the weights: a missing 'best' fails at once
    runner.ensure_weights()
    with ctx.workers.phase("predicting"):
        return [path for source in ctx.prediction_inputs
                if (path := _predict_stack(runner, source, threshold)) is not None]


def _predict_stack(runner: Runner, source: PredictionInput, threshold: float | None) -> Path | None:
    """One stack: into OME-Zarr block by block (a chunked store's, or with several workers, each its own
    blocks); else read, segmented and written to the masks TIFF slice by slice."""
    evaluation, workers = runner.ctx.config.evaluation, runner.ctx.workers
    path = runner.ctx.config.outputs.model_dir / source.masks_file
    if path.name.endswith(".zarr") or workers.size > 1:
        return _predict_blockwise(runner, source, threshold, path)
    reader = source.slices
    summary = predict_to_tiff(runner.predict_step, reader, source.names, path, strategy=evaluation.predict_strategy,
                              batch_size=evaluation.batch_size, tta=evaluation.tta,
                              num_classes=evaluation.num_classes, overlays=evaluation.overlays,
                              cell_labels=evaluation.cell_labels, cell_threshold=threshold)
    if evaluation.cell_labels:
        summary["cell_threshold"] = "class decision" if threshold is None else threshold
    runner.ctx.logger.log("PREDICT", {"predictions": str(path), "slices": reader.shape[0],
                                    "strategy": evaluation.predict_strategy, **summary})
    return path


def _predict_blockwise(runner: Runner, source: PredictionInput, threshold: float | None, path: Path) -> Path | None:
    """Blocks of whole output chunks, every worker its share, none holding the volume; a TIFF output (several
    workers on a stack that is not in a chunked store) is written by the chief from the blocks, slice by
    slice, and the blocks' own images removed."""
    evaluation, workers = runner.ctx.config.evaluation, runner.ctx.workers
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
    networks = runner_networks(runner.members, evaluation.num_classes)
    share = Share(workers.rank, workers.size, workers.any)
    try:
        summary = predict_blockwise(source.slices, source.names, networks, target, settings, _model_id(runner),
                                    runner.warn, share, path.parent / "overlays")
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
    runner.ctx.logger.log("PREDICT", {**summary, "predictions": str(path), "slices": source.slices.shape[0],
                                    "strategy": "tile, blockwise"})
    return path


def _model_id(runner: Runner) -> str:
    """What made these weights: a hash of the checkpoint files of each model."""
    folders = [checkpoints.checkpoint_dir(Path(d)) for d in runner.ctx.config.evaluation.ensemble or []]
    newest = [checkpoints.latest(folder) for folder in folders or [runner.ctx.checkpoint_dir]]
    return model_fingerprint(file for prefix in newest if prefix for file in Path(prefix).parent.glob(
        f"{Path(prefix).name}.*"))


def _cell_threshold(runner: Runner) -> float | None:
    """--cell_threshold as a number (``best``: the last evaluation's), None for the class decision."""
    chosen = runner.ctx.config.evaluation.cell_threshold
    if chosen != "best":
        return chosen
    try:
        threshold, step = load_best_threshold(runner.ctx.config.outputs.model_dir)
    except ValueError as error:
        raise UserInputError(f"--cell_threshold best: {error}") from None
    newest = checkpoints.latest(runner.ctx.checkpoint_dir)
    if newest and not newest.endswith(f"-{step}") and runner.ctx.workers.is_chief:
        runner.warn(f"--cell_threshold best: {threshold} was found by the evaluation at step {step}, "
                   f"not of the newest checkpoint {Path(newest).name}; evaluate again to refresh it")
    return threshold


def _benchmark_predict(runner: Runner) -> None:
    training = runner.ctx.config.training
    timer = StepTimer(training.warmup_steps)
    batches = runner.ctx.dataset.test_fn(count=None, drop_remainder=True).take(training.max_steps)
    first_step_at = None
    timer.start()
    for images in batches:
        runner.predict_step(images).numpy()
        timer.step_done()
        first_step_at = first_step_at or seconds_since_process_start()
    if runner.ctx.workers.is_chief:  # every worker segments batches of its own meanwhile
        images_per_step = training.batch_size * runner.ctx.workers.size
        runner.ctx.logger.log((), {**performance_stats(timer.durations, images_per_step, "test"),
                                 "time_to_first_step_s": first_step_at})
    return None
