"""Export: the trained model as unet2d.keras, a SavedModel and a BioImage Model Zoo package, in one step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf

from common.errors import write_failure
from common.files import replaced_folder
from common.quiet_start import quiet_unless_asked
from data_loading.intensity import INTENSITY_FILE, load_window
from runtime.inference.export import KERAS_FILE, SAVED_MODEL_DIR, ZOO_PACKAGE, export_model
from runtime.inference.zoo import write_package
from runtime.loop import model_card
from runtime.reporting.overlays import cover_picture

# What an export writes into its folder; anything else there is the user's and is kept.
EXPORT_ENTRIES = frozenset({KERAS_FILE, SAVED_MODEL_DIR, INTENSITY_FILE, ZOO_PACKAGE, f"{ZOO_PACKAGE}.zip"})

if TYPE_CHECKING:
    from runtime.loop.runner import Runner


def export(runner: Runner) -> None:
    """The latest checkpoint's weights as unet2d.keras and a SavedModel, for serving, and as a BioImage
    Model Zoo package (SavedModel and ONNX weights) for the tools EM users work in."""
    runner.ensure_weights()
    if not runner.ctx.workers.is_chief:
        return
    config = runner.ctx.config
    folder = config.outputs.export_dir
    window = load_window(config.outputs.model_dir)
    sample, sample_source = model_card.sample_slice(config.data, window)
    info = replace(model_card.package_info(config.model, config.data.input_mode, config.outputs,
                                           runner.ctx.workers.engine, sample_source), window=window)
    with runner.ctx.workers.phase("exporting"), quiet_unless_asked(), export_folder(folder) as staging:
        written = [*export_model(runner.model, staging, window)]
        started = time.perf_counter()
        written += write_package(runner.model, staging / ZOO_PACKAGE, info, sample,
                                 lambda image, ids: cover_picture(image, ids, config.model.num_classes))
    keras_file, saved_model, package, archive = (folder / path.name for path in written)
    runner.ctx.logger.log("EXPORT", {"keras": str(keras_file), "saved_model": str(saved_model),
                                   "zoo_package": str(package), "zoo_zip": str(archive),
                                   "zoo_seconds": round(time.perf_counter() - started, 1)})


@contextmanager
def export_folder(folder: Path) -> Iterator[Path]:
    """A staging folder that replaces ``folder`` whole when the block ends (never new weights beside an old
    grey-value window; ``common.files.replaced_folder``); a write that fails in it is one line naming ``folder``."""
    try:
        with replaced_folder(folder, EXPORT_ENTRIES) as staging:
            yield staging
    except (OSError, tf.errors.OpError) as error:
        raise write_failure("the export", folder, error) from None
