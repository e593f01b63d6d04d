"""What an exported model's zoo package says about itself: the run that trained it, read back from its
log, and a real slice for its test tensors.

An export run has no training flags of its own worth reporting: the width,
classes and input mode must match the checkpoint, but the data, precision,
steps and scores belong to the training and evaluation runs that logged
into the same ``--log_dir`` before it. Those lines are the record this reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.config import DataConfig, ModelConfig, OutputConfig
from data_loading.data_loader import TRAIN_IMAGES, fold_indices
from data_loading.intensity import IntensityWindow, fit_window, is_eight_bit, to_eight_bit
from data_loading.isbi import verification_problem
from data_loading.readers import open_volume, split_hdf5
from data_loading.synthetic_em import generate_volume
from data_loading.volumes import expand
from runtime.inference.zoo import PackageInfo
from runtime.reporting.dllog import final_eval, merged_data, read_log, runs

ENGINE_WORDS = {"none": "single-device", "mirrored": "mirrored (tf.distribute)",
                "multi_worker": "multi-worker (tf.distribute)", "horovod": "Horovod"}
SAMPLE_SIDE = 768  # a larger slice is cut to its centre: the zoo's tests run the test tensor many times


def _training_run(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    trained = [run for run in runs(records) if "train" in str(merged_data(run, "PARAMETER").get("exec_mode", ""))]
    return trained[-1] if trained else []


def dataset_of(flags: dict[str, Any]) -> str:
    """What the training run learned from: ``isbi2012`` (the challenge's files, checked by their pixel hash),
    ``layout`` (other stacks in the ISBI layout, such as the synthetic demo), ``own`` (--train_images),
    ``random`` (--synth_data) or ``""`` (not recorded)."""
    if not flags:
        return ""
    if flags.get("synth_data"):
        return "random"
    if flags.get("train_images"):
        return "own"
    if not flags.get("data_dir"):
        return ""
    return "isbi2012" if verification_problem(Path(flags["data_dir"]) / TRAIN_IMAGES, TRAIN_IMAGES) is None \
        else "layout"


def _data_words(flags: dict[str, Any], dataset: str) -> str:
    if not dataset:
        return ""
    if dataset == "random":
        return "Random tensors (`--synth_data`): this model has not seen real data."
    if dataset == "own":
        return (f"Your own stacks: images {', '.join(flags['train_images'])}, labels "
                f"{', '.join(flags.get('train_labels') or [])}; validation "
                + (f"{', '.join(flags['val_images'])}." if flags.get("val_images")
                   else f"slices of cross-validation fold {flags.get('fold')}."))
    fold = flags.get("fold")
    if dataset == "layout":
        split = "all slices" if fold is None else f"cross-validation fold {fold}"
        return (f"The stacks in {flags.get('data_dir')} (the ISBI 2012 layout, but not its files: their pixels "
                f"differ, as the synthetic demo data's do): {split}.")
    split = "all 30 slices" if fold is None else f"cross-validation fold {fold} (24 slices train, 6 validate)"
    return ("The ISBI 2012 EM segmentation challenge's training volume (Drosophila ventral nerve cord, serial-section "
            f"TEM, 30 slices of 512x512 at 4x4x50 nm, membranes labelled by experts): {split}. "
            f"Data folder: {flags.get('data_dir')}.")


def package_info(model: ModelConfig, input_mode: str, outputs: OutputConfig, engine: str,
                 sample_source: str) -> PackageInfo:
    """The package's metadata: this run's model shape and authors, the training run's flags, precision and
    data, and the last evaluation's scores, as ``<log_dir>/log.json`` recorded them."""
    log = outputs.log_dir / "log.json"
    records = read_log(log) if log.is_file() else []
    training = _training_run(records)
    flags = merged_data(training, "PARAMETER")
    precision = str(merged_data(training, "SETUP").get("precision", "not recorded")).split(" ")[0]
    dataset = dataset_of(flags)
    default_name = (f"UNet2D EM segmentation ({model.num_classes} classes - width {model.base_filters} - "
                    f"{input_mode})")
    return PackageInfo(
        name=outputs.zoo_name or default_name, strategy=input_mode, base_filters=model.base_filters,
        num_classes=model.num_classes, training_precision=precision,
        engine=ENGINE_WORDS.get(str(flags.get("distribution")), str(flags.get("distribution") or engine)),
        authors=outputs.zoo_author,
        flags={key: value for key, value in flags.items() if key not in ("zoo_author", "zoo_name")},
        scores=final_eval(records) or {}, data=_data_words(flags, dataset) or f"Not recorded in {log}.",
        sample_source=sample_source, dataset=dataset)


def _centre(image: np.ndarray) -> np.ndarray:
    top, left = (max(0, (side - SAMPLE_SIDE) // 2) for side in image.shape)
    return image[top:top + SAMPLE_SIDE, left:left + SAMPLE_SIDE]


def sample_slice(data: DataConfig, window: IntensityWindow | None) -> tuple[np.ndarray, str]:
    """One slice for the test tensors, in the grey values the package takes (8-bit, or the window's range),
    and where it came from in words: a validation slice of the run's data where the export run names it
    (--val_images, --train_images or the ISBI files in --data_dir, with --fold), else a generated EM-like
    slice."""
    image, words = _raw_sample(data)
    if window is None and not is_eight_bit(image):  # an 8-bit model: the slice as predict would map it
        image = to_eight_bit(image, fit_window([image], "the slice itself"))
    elif window is not None and is_eight_bit(image):  # a model of wider grey values: the slice in its range
        image = (np.float32(window.low) + image.astype(np.float32) * np.float32((window.high - window.low) / 255))
    return image, words


def _raw_sample(data: DataConfig) -> tuple[np.ndarray, str]:
    if data.val_images:
        path = expand(data.val_images, "--val_images")[0]
        return _centre(open_volume(path, "--val_images").read(0)), f"slice 0 of the validation stack {path}"
    source = (expand(data.train_images, "--train_images")[0] if data.train_images
              else Path(data.data_dir) / TRAIN_IMAGES if data.data_dir else None)
    if source is not None and (source.exists() or split_hdf5(str(source))):
        images = open_volume(source, "--train_images" if data.train_images else "--data_dir")
        fold = 0 if data.fold is None else data.fold
        split_seed = data.seed if data.split_seed is None else data.split_seed
        index = int(fold_indices(images.shape[0], fold, split_seed, data.fold_scheme)[1][0])
        return _centre(images.read(index)), f"slice {index} of {source}, a validation slice of fold {fold}"
    images, _ = generate_volume(num_slices=1, size=512, seed=data.seed)
    return images[0], ("a generated EM-like slice (the export run was given no data: pass --data_dir, "
                       "--train_images or --val_images to use a real one)")
