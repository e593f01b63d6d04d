"""Command-line interface of ``unet2d.py``.

Kept free of TensorFlow imports so that ``--help`` is instant and
``--tf_verbosity`` can take effect before TensorFlow is first imported.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from common.config import WEIGHT_INITS, RunConfig
from runtime.inference.blocks import TILE_OUTPUTS

EXEC_MODES = ("train", "evaluate", "train_and_evaluate", "predict", "train_and_predict", "export")
PREDICT_STRATEGIES = ("resize", "tile")
VOLUME_LOADING = ("auto", "memory", "stream")
INPUT_MODES = ("resize", "tile")
MAX_CLASSES = 255  # class ids are stored as uint8
DISTRIBUTIONS = ("none", "horovod", "mirrored", "multi_worker")
NUM_FOLDS = 5
# A scheduler may bring machines up one by one (image pulls, queueing): minutes, not seconds.
DEFAULT_CLUSTER_TIMEOUT_S = 300.0
DTYPES = ("auto", "fp32", "bf16")
BASE_FILTERS = 64  # the recipe's UNet width
MAX_BASE_FILTERS = 1024
MAX_ELASTIC_SIGMA = 100.0  # pixels: beyond this the field tears the 572x572 input apart
MAX_ELASTIC_GRID = 64
MAX_BORDER_W0 = 1000.0
MAX_BORDER_SIGMA = 100.0  # pixels
DEFAULT_BF16_CONFIG = Path(__file__).resolve().parents[2] / "bf16_config" / "unet.json"


def cell_threshold(text: str) -> float | str:
    """``best`` or a probability threshold in [0, 1): the argparse type of --cell_threshold."""
    if text == "best":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be 'best' or a number in [0, 1), got {text!r}")
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it says something: not after a help text that names its default
    already, nor for defaults of None (the text says what happens without the flag) or off switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        names_it = "default" in text.lower() or text.rstrip().endswith("]")  # "... [10, the paper's]"
        switch_off = isinstance(action, argparse._StoreFalseAction)  # --no-augment: the default is the other flag's
        if names_it or switch_off or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage block on error; users need the one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="unet2d.py",
        description="Train, evaluate and run the UNet2D segmentation model on the ISBI 2012 EM data.",
        formatter_class=DefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--exec_mode", choices=EXEC_MODES, default="train_and_evaluate",
        help="train: train from scratch (or resume); evaluate: score the latest checkpoint on the "
             "fold's validation slices (needs --fold); train_and_evaluate: both (needs --fold); "
             "predict: segment the test volume (or --predict_input) with the latest checkpoint; "
             "train_and_predict: both; export: save the latest checkpoint for serving in --export_dir")
    add("--model_dir", default="/tmp/unet2d",
        help="output folder for checkpoints (in <model_dir>/model_checkpoint) and predictions")
    add("--data_dir", default=None,
        help="folder holding train-volume.tif, train-labels.tif and test-volume.tif "
             "(not needed with --synth_data)")
    add("--train_images", nargs="+", default=None, metavar="STACK",
        help="your own training images instead of <data_dir>/train-volume.tif: one or more volumes, as paths "
             "or quoted globs: multipage grey TIFFs, folders of PNG/TIFF slices, Zarr arrays or OME-Zarr images "
             "(vol.zarr, vol.zarr/raw), HDF5 datasets (file.h5:/volumes/raw); volumes may differ in size")
    add("--train_labels", nargs="+", default=None, metavar="STACK",
        help="labels of --train_images, volume by volume and slice by slice: class ids 0..K-1 "
             "(for 2 classes also the recipe's 0/255)")
    add("--val_images", nargs="+", default=None, metavar="STACK",
        help="a fixed validation set (instead of --fold's slices), given like --train_images")
    add("--val_labels", nargs="+", default=None, metavar="STACK", help="labels of --val_images")
    add("--test_images", nargs="+", default=None, metavar="STACK",
        help="stacks predict segments instead of <data_dir>/test-volume.tif; masks go to "
             "<model_dir>/predictions/<name>-masks.tif")
    add("--volume_loading", choices=VOLUME_LOADING, default="auto",
        help="memory: read every stack into memory first; stream: read each tile or slice from its volume when "
             "needed, so volumes larger than memory train, evaluate and predict (not with --border_weights); "
             "auto: memory when the stacks take at most half the free memory, else stream")
    add("--num_classes", type=int, default=2, metavar="K",
        help="classes to segment; labels hold class ids 0..K-1. 2 is the recipe's membrane/cell, and its "
             "masks are 0/255; for more, masks hold class ids")
    add("--input_mode", choices=INPUT_MODES, default="resize",
        help="resize: the recipe's (each slice resized to 388x388 and zero-padded to 572x572); tile: random "
             "388x388 crops at full resolution with 92 pixels of mirrored context, evaluated on full-resolution "
             "tiles, so a model trains and predicts at one scale")
    add("--log_dir", default=None,
        help="output folder for log.json, TensorBoard events and evaluation pictures [default: --model_dir, so "
             "that each run's logs stay with its model (the recipe's /tmp/unet2d when neither is given)]")
    add("-b", "--batch_size", type=int, default=8, help="images per step on each worker")
    add("-d", "--dtype", choices=DTYPES, default="auto",
        help="precision: bf16 = bfloat16 compute with float32 weights (TF_BF16_CONVERSION on Gaudi, "
             "Keras mixed_bfloat16 elsewhere); fp32 = float32 throughout; auto = bf16 where the device "
             "computes it natively (Gaudi, GPUs of compute capability 8.0+, CPUs with AVX512_BF16 or "
             "AMX-BF16, within ONEDNN_MAX_CPU_ISA), fp32 elsewhere")
    add("--base_filters", type=int, default=BASE_FILTERS, metavar="N",
        help="UNet width: N, 2N, 4N and 8N channels down the encoder, 16N in the bottleneck. 64 is the "
             "recipe's (34,512,258 parameters); checkpoints and exports keep the width they were trained with")
    add("--weight_init", choices=WEIGHT_INITS, default="glorot",
        help="the random start of a fresh model: glorot = Keras's Glorot-uniform, the recipe's; he = the U-Net "
             "paper's Gaussian with standard deviation sqrt(2/N), N the inputs of a unit, which keeps every "
             "layer's activations at their input's scale and ends the long one-class phase a glorot UNet starts "
             "in (docs/experiments.md, Collapsed runs). Not used by --init_from's loaded layers")
    add("--fold", type=int, default=None,
        help=f"cross-validation fold 0..{NUM_FOLDS - 1} held out for evaluation; "
             "without it every training slice is used for training")
    add("--fold_scheme", choices=("original", "disjoint"), default="original",
        help="original: the recipe's split, index for index (its 5 validation sets overlap and cover "
             "26 of 30 slices); disjoint: 5 disjoint validation sets covering every slice")
    add("--max_steps", type=int, default=6400, help="training steps (batches), shared among all workers")
    add("--log_every", type=int, default=100, help="log training losses and speed every N steps")
    add("--evaluate_every", type=int, default=0,
        help="evaluate every N training steps (0: only once, at the end)")
    add("--warmup_steps", type=int, default=200,
        help="steps left out of the throughput figures (the first ones trace and warm up the graph)")
    add("--weight_decay", type=float, default=0.0005, help="L2 weight decay coefficient")
    add("--learning_rate", type=float, default=0.0001, help="Adam learning rate")
    add("--lr_warmup_steps", type=int, default=0,
        help="ramp the learning rate linearly up to --learning_rate over the first N steps (0: the recipe's "
             "constant rate); a resumed run does not ramp again")
    add("--seed", type=int, default=123,
        help="random seed of the fold split, weight initialisation, shuffling and augmentation")
    add("--split_seed", type=int, default=None,
        help="seed of the fold split alone [--seed]: fix it to compare seeds on the same validation slices")
    add("--dump_config", default=None, metavar="DIR",
        help="folder for debug traces (TensorFlow's debug-info dump)")
    add("--augment", dest="augment", action="store_true", default=True,
        help="random flips, crop-and-zoom and brightness on training images")
    add("--no-augment", dest="augment", action="store_false", help="turn augmentation off")
    add("--elastic", action="store_true",
        help="add the U-Net paper's elastic deformation to the augmentation: a random displacement field "
             "drawn on a coarse grid and interpolated smoothly, applied alike to image and labels")
    add("--elastic_sigma", type=float, default=10.0, metavar="PIXELS",
        help="standard deviation of the coarse displacements, in pixels of the 572x572 input [10, the paper's]")
    add("--elastic_grid", type=int, default=3, metavar="N",
        help="the coarse grid is N x N points [3, the paper's]")
    add("--border_weights", action="store_true",
        help="the U-Net paper's weighted loss: each pixel's cross-entropy weighs w_c + w0 exp(-(d1 + d2)^2 / "
             "(2 sigma^2)), d1 and d2 its distances to the nearest and second-nearest cell, w_c balancing the "
             "class frequencies; the map is computed per training slice and augmented with its labels; the "
             "Dice term and the evaluation losses are unweighted")
    add("--border_w0", type=float, default=10.0, metavar="W0",
        help="the border weight w0 [10, the paper's]")
    add("--border_sigma", type=float, default=5.0, metavar="PIXELS",
        help="the border width sigma, in pixels of the label images [5, the paper's]")
    add("--border_class_weights", choices=("balanced", "uniform"), default="balanced",
        help="w_c of the border-weighted loss: balanced, 1 / (K f_k) for a class of frequency f_k (the paper's), "
             "or uniform, 1 for every class, so that only the borders weigh more [balanced]")
    add("--benchmark", dest="benchmark", action="store_true", default=False,
        help="time each step and report images/s and latency percentiles after --warmup_steps; "
             "no checkpoints are written (train and predict modes)")
    add("--no-benchmark", dest="benchmark", action="store_false", help="turn benchmarking off")
    add("--xla", "--use_xla", dest="xla", action="store_true", default=False,
        help="compile the training and inference steps with XLA")
    add("--no_xla", dest="xla", action="store_false", help="turn XLA off")
    add("--resume_training", action="store_true",
        help="continue from the latest checkpoint in --model_dir instead of starting afresh")
    add("--init_from", default=None, metavar="PATH",
        help="start training from a trained model's weights instead of random ones: a model dir (its newest intact "
             "checkpoint), a checkpoint prefix, an export folder, unet2d.keras, a SavedModel or a zoo package "
             "(folder, bioimageio.yaml or zip). Same --base_filters; with another --num_classes every layer but the "
             "output layer is loaded. The run starts at step 0 with a fresh optimizer; with --resume_training its "
             "own checkpoints win once it has any")
    add("--freeze_encoder", type=freeze_steps, nargs="?", const="all", default=None, metavar="STEPS",
        help="with --init_from: keep the encoder (the contracting path: the input and down blocks) as loaded, for "
             "the whole run, or for its first STEPS steps")
    add("--no_hpu", action="store_true", help="do not use a Gaudi (HPU) even if one is present")
    add("--synth_data", action="store_true",
        help="train on a fixed synthetic tensor (deterministic, no data files needed)")
    add("--disable_ckpt_saving", action="store_true", help="write no checkpoint")
    add("--checkpoint_every", type=int, default=500, metavar="STEPS",
        help="also write a checkpoint every N training steps (0: off)")
    add("--checkpoint_minutes", type=float, default=30.0, metavar="MINUTES",
        help="also write a checkpoint when this many minutes passed since the last one (0: off)")
    add("--keep_checkpoints", type=int, default=3, metavar="K", help="keep the newest K checkpoints")
    add("--deterministic", action="store_true",
        help="TensorFlow op determinism: the same seed and flags give the same losses (slower)")
    add("--distribution", choices=DISTRIBUTIONS, default=None,
        help="data-parallel engine. none: one device; horovod: the processes started by mpirun or horovodrun "
             "(TF 2.15 stack); mirrored: tf.distribute.MirroredStrategy over this process's GPUs "
             "(CUDA_VISIBLE_DEVICES picks them); multi_worker: tf.distribute.MultiWorkerMirroredStrategy, one "
             "process per machine or GPU, cluster and rank from TF_CONFIG (scripts/launch_workers.py sets it "
             "for local workers). --batch_size is per replica; max_steps is shared among the replicas "
             "[default: none]")
    add("--use_horovod", action="store_true", help="the recipe's flag: --distribution horovod")
    add("--tensorboard_logging", action="store_true",
        help="write TensorBoard events (train scalars in --log_dir, eval in --log_dir/eval, hyper-parameters)")
    add("--cluster_timeout", type=float, default=DEFAULT_CLUSTER_TIMEOUT_S, metavar="SECONDS",
        help="multi_worker: how long a worker waits for the others of TF_CONFIG's cluster to start before it "
             "gives up (exit 4, naming the missing ones); it says whom it waits for meanwhile [default: %(default)s]")
    add("--log_all_workers", action="store_true",
        help="with several workers: every worker logs and checkpoints in its own worker_N folder")
    add("--bf16_config_path", default=str(DEFAULT_BF16_CONFIG), metavar="JSON",
        help="Gaudi mixed-precision op lists for --dtype bf16 (checked to be readable JSON everywhere)")
    add("--predict_input", default=None, metavar="PATH",
        help="predict on this grey image stack instead of <data_dir>/test-volume.tif: one multipage "
             "TIFF or a folder of PNG/TIFF slices, any size; masks go to "
             "<model_dir>/predictions/<name>-masks.tif")
    add("--cell_labels", action="store_true",
        help="predict also writes the cells as a label image beside each masks file (<name>-cells.tif: "
             "0 on membranes, 1..n one id per 4-connected cell, each slice numbered on its own; uint16, or "
             "uint32 past 65535 cells)")
    add("--cell_threshold", type=cell_threshold, default=None, metavar="T|best",
        help="with --cell_labels: a pixel is cell when its cell probability exceeds T (0 <= T < 1); 'best': the "
             "threshold of the best thinned V_Rand of the last evaluation of this --model_dir "
             "(<model_dir>/best_threshold.json) [default: the masks' class decision]")
    add("--finer_sweep", action="store_true",
        help="evaluate also scores the thinned V_Rand/V_Info at P(cell) > 0.95, 0.98 and 0.99, past the "
             "organisers' 0.0-0.9, and logs the best of all 13 as eval_v_rand_thinned_finer (and _threshold) "
             "beside the organisers' scores; --cell_threshold best then takes its threshold. For short-trained "
             "models whose best cells lie above 0.9")
    add("--tta", action="store_true",
        help="test-time augmentation for evaluate's full-resolution scores and for predict: the mean class "
             "probabilities of the 8 flips and rotations of each slice (8 times the passes)")
    add("--ensemble", nargs="+", default=None, metavar="MODEL_DIR",
        help="evaluate or predict with several trained models at once (e.g. the five folds of "
             "train_and_evaluate.sh), their class probabilities averaged; --model_dir then only receives the "
             "outputs. The models must share --base_filters and --num_classes")
    add("--predict_strategy", choices=PREDICT_STRATEGIES, default=None,
        help="resize: the recipe's (slice resized to 388x388, prediction resized back); tile: the UNet "
             "paper's overlap-tile (mirror-padded 572x572 tiles, stitched at full resolution); "
             "used by predict and by the full-resolution metrics of evaluate [default: --input_mode's]")
    add("--tile_size", default="auto", choices=["auto", *map(str, TILE_OUTPUTS)],
        help="blockwise prediction (volumes in Zarr or HDF5, several workers): the overlap tiles' output side; "
             "auto: the one computing the fewest pixels for the slices within a memory bound")
    add("--overwrite", action="store_true",
        help="blockwise prediction: start over on an output made by another model or with other settings "
             "(without it such an output is refused; the same command goes on where a stopped run left off)")
    add("--overlays", type=int, default=3, metavar="N",
        help="PNG pictures of the first N slices written by predict (predictions/overlays/) and "
             "evaluate (<log_dir>/overlays/); 0: none")
    add("--export_dir", default=None, metavar="DIR",
        help="where --exec_mode export writes unet2d.keras, saved_model/ and the BioImage Model Zoo package "
             "bioimageio/ with bioimageio.zip (default <model_dir>/export)")
    add("--zoo_author", action="append", default=None, metavar="NAME",
        help="an author of the model, named in its zoo package (repeat for several) [default: a placeholder "
             "that asks you to fill it in]")
    add("--zoo_name", type=zoo_name, default=None, metavar="TEXT",
        help="the zoo package's model name: 5 to 128 letters, digits, spaces and _+-() [default: UNet2D EM "
             "segmentation (<K> classes - width <W> - <input mode>)]")
    add("--tf_verbosity", type=int, choices=(0, 1, 2, 3), default=None,
        help="TensorFlow C++ log level: 0 all, 1 no INFO, 2 no INFO/WARNING, 3 no INFO/WARNING/ERROR")
    return parser


ZOO_NAME = re.compile(r"[A-Za-z0-9_+\- ()]{5,128}")  # what the zoo's model format accepts as a name


def zoo_name(text: str) -> str:
    if not ZOO_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: the zoo takes 5 to 128 letters, digits, spaces and _+-() only")
    return text


def freeze_steps(text: str) -> int | str:
    """``all`` or a number of steps of at least 1: the argparse type of --freeze_encoder."""
    if text == "all":
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of steps of at least 1, got {text!r}")
    return steps


def evaluates(args: argparse.Namespace) -> bool:
    """Whether this run scores validation slices: an evaluate mode, or training with --evaluate_every."""
    return "evaluate" in args.exec_mode or ("train" in args.exec_mode and args.evaluate_every > 0)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject flag combinations that would only fail (or silently do nothing) hours later."""
    if not (math.isfinite(args.elastic_sigma) and 0 <= args.elastic_sigma <= MAX_ELASTIC_SIGMA):
        parser.error(f"--elastic_sigma must be a number of pixels in 0..{MAX_ELASTIC_SIGMA}, got {args.elastic_sigma}")
    if not 2 <= args.elastic_grid <= MAX_ELASTIC_GRID:
        parser.error(f"--elastic_grid must be in 2..{MAX_ELASTIC_GRID}, got {args.elastic_grid}")
    if not (math.isfinite(args.border_w0) and 0 < args.border_w0 <= MAX_BORDER_W0):
        parser.error(f"--border_w0 must be a number above 0 and at most {MAX_BORDER_W0:g}, got {args.border_w0}")
    if not (math.isfinite(args.border_sigma) and 0 < args.border_sigma <= MAX_BORDER_SIGMA):
        parser.error(f"--border_sigma must be a number of pixels above 0 and at most {MAX_BORDER_SIGMA:g}, "
                     f"got {args.border_sigma}")
    if args.border_weights and args.synth_data:
        parser.error("--border_weights weighs the borders between the cells of real labels; --synth_data has none")
    if args.border_class_weights != "balanced" and not args.border_weights:
        parser.error(f"--border_class_weights {args.border_class_weights} sets w_c of the border-weighted loss: "
                     "add --border_weights")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error(f"--learning_rate must be a finite number above 0, got {args.learning_rate}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"--weight_decay must be a finite number of 0 or more, got {args.weight_decay}")
    if args.use_horovod and args.distribution not in (None, "horovod"):
        parser.error(f"--use_horovod means --distribution horovod, not {args.distribution}")
    args.distribution = "horovod" if args.use_horovod else (args.distribution or "none")
    args.use_horovod = args.distribution == "horovod"
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    for flag, seed in (("--seed", args.seed), ("--split_seed", args.split_seed)):
        if seed is not None and not 0 <= seed < 2 ** 32:  # NumPy's legacy generator draws the split
            parser.error(f"{flag} must be in 0..{2 ** 32 - 1}, got {seed}")
    if args.fold is not None and not 0 <= args.fold < NUM_FOLDS:
        parser.error(f"--fold must be in 0..{NUM_FOLDS - 1}, got {args.fold}")
    if not 1 <= args.base_filters <= MAX_BASE_FILTERS:
        parser.error(f"--base_filters must be in 1..{MAX_BASE_FILTERS}, got {args.base_filters}")
    if args.max_steps < 1:
        parser.error(f"--max_steps must be at least 1, got {args.max_steps}")
    if args.log_every < 1:
        parser.error(f"--log_every must be at least 1, got {args.log_every}")
    if args.evaluate_every < 0:
        parser.error(f"--evaluate_every must be 0 or more, got {args.evaluate_every}")
    if args.checkpoint_every < 0 or args.checkpoint_minutes < 0:
        parser.error("--checkpoint_every and --checkpoint_minutes must be 0 (off) or more")
    if args.keep_checkpoints < 1:
        parser.error(f"--keep_checkpoints must be at least 1, got {args.keep_checkpoints}")
    if args.lr_warmup_steps < 0:
        parser.error(f"--lr_warmup_steps must be 0 or more, got {args.lr_warmup_steps}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup_steps must be 0 or more, got {args.warmup_steps}")
    if args.benchmark and args.max_steps <= args.warmup_steps:
        parser.error(f"--max_steps ({args.max_steps}) must be greater than --warmup_steps "
                     f"({args.warmup_steps}) in benchmark mode")
    if not (math.isfinite(args.cluster_timeout) and args.cluster_timeout > 0):
        parser.error(f"--cluster_timeout must be a number of seconds above 0, got {args.cluster_timeout}")
    if args.overlays < 0:
        parser.error(f"--overlays must be 0 or more, got {args.overlays}")
    if args.ensemble and (args.exec_mode not in ("evaluate", "predict") or args.benchmark):
        parser.error(f"--ensemble averages trained models in --exec_mode evaluate or predict (without "
                     f"--benchmark), not in {args.exec_mode}{' --benchmark' if args.benchmark else ''}")
    if args.finer_sweep and not evaluates(args):
        parser.error(f"--finer_sweep widens the thresholds evaluation scores; --exec_mode {args.exec_mode} "
                     "does not evaluate (give --evaluate_every N to evaluate while training)")
    if args.init_from and "train" not in args.exec_mode:
        parser.error(f"--init_from starts training from a trained model; --exec_mode {args.exec_mode} does not "
                     "train (evaluate, predict and export read --model_dir's own checkpoints)")
    if args.freeze_encoder is not None and not args.init_from:
        parser.error("--freeze_encoder keeps the weights --init_from loaded; give --init_from too")
    if args.cell_threshold is not None and not args.cell_labels:
        parser.error("--cell_threshold chooses the cells of --cell_labels; give --cell_labels too")
    _check_data(parser, args)


def _check_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every stack the mode needs comes from a flag or from --data_dir."""
    if not 2 <= args.num_classes <= MAX_CLASSES:
        parser.error(f"--num_classes must be in 2..{MAX_CLASSES}, got {args.num_classes}")
    args.predict_strategy = args.predict_strategy or args.input_mode
    for images, labels in (("train_images", "train_labels"), ("val_images", "val_labels")):
        if bool(getattr(args, images)) != bool(getattr(args, labels)):
            parser.error(f"--{images} and --{labels} go together")
    if args.predict_input and args.test_images:
        parser.error("--predict_input and --test_images both name what predict segments; give one")
    if args.val_images and args.fold is not None:
        parser.error("--val_images is the validation set; --fold would choose another, give one of them")
    if args.synth_data or args.exec_mode == "export":
        return
    mode, isbi = args.exec_mode, "--data_dir (the recipe's three files)"
    if "train" in mode and not (args.train_images or args.data_dir):
        parser.error(f"--exec_mode {mode} needs --train_images/--train_labels or {isbi} (or use --synth_data)")
    if "evaluate" in mode and not args.val_images:
        if args.fold is None:
            parser.error(f"--exec_mode {mode} needs --fold 0..{NUM_FOLDS - 1} or --val_images/--val_labels: "
                         "without them there are no validation slices")
        if not (args.train_images or args.data_dir):
            parser.error(f"--fold takes its validation slices from --train_images or {isbi}")
    if "predict" in mode and not (args.predict_input or args.test_images or args.data_dir):
        parser.error(f"--exec_mode {mode} needs --test_images, --predict_input or {isbi}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    _check(parser, args)
    return args


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    """The flags, checked, as the run's one frozen configuration (common/config.py)."""
    return RunConfig.from_flags(vars(parse_args(argv)))
