#!/usr/bin/env python3
"""Segment your own EM stack with an exported model; none of the training flags are needed.

    python predict.py /tmp/unet2d/export my-stack.tif --output my-masks.tif --strategy tile
    python predict.py cv/fold*/export my-stack.tif    # several models: their probabilities averaged

MODEL is what ``unet2d.py --exec_mode export`` wrote: the export folder, its
``unet2d.keras`` or its ``saved_model/``, or its zoo package. INPUT is one
multipage grey TIFF, one PNG or TIFF image, a folder of PNG/TIFF slices, a
Zarr array or OME-Zarr image, or an HDF5 dataset (``file.h5:/volumes/raw``),
of any size, in 8 or 16 bits or float; images that are not 8-bit are mapped
as the model's training images were (data_loading/intensity.py). It is read,
segmented and written one slice at a time, so it may be larger than memory.
The masks (0 = membrane, 255 = cell for a two-class model; class ids for
more) are written as one multipage TIFF at the input's size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.errors import UserInputError, exit_status, write_failure
from runtime.cli.arguments import PREDICT_STRATEGIES, DefaultsHelpFormatter, OneLineErrorParser, cell_threshold
from runtime.inference.blocks import TILE_OUTPUTS


def cell_threshold_number(text: str) -> float:
    """--cell_threshold of unet2d.py without ``best``: an exported model has no evaluation beside it."""
    if text == "best":
        raise argparse.ArgumentTypeError("'best' needs the model dir of unet2d.py; pass the number its "
                                         "evaluation logged as eval_v_rand_thinned_threshold")
    return float(cell_threshold(text))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    parser.add_argument("model", nargs="+",
                        help="export folder, unet2d.keras file or SavedModel folder; several: an ensemble, their "
                             "class probabilities averaged (e.g. the exports of the five folds)")
    parser.add_argument("input", help="multipage grey TIFF, one PNG or TIFF image, a folder of PNG/TIFF slices, a "
                                      "Zarr array or OME-Zarr image (vol.zarr, vol.zarr/raw) or an HDF5 dataset "
                                      "(file.h5:/volumes/raw); 8- or 16-bit or float grey values")
    parser.add_argument("-o", "--output", default=None,
                        help="masks file (default: <input name>-masks.tif beside the input)")
    parser.add_argument("--strategy", choices=PREDICT_STRATEGIES, default=None,
                        help="resize: the recipe's 388x388 resize; tile: the overlap-tile strategy at full "
                             "resolution [default: the --input_mode the model was trained in, as its zoo package "
                             "says; resize where nothing says]")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the probabilities of the 8 flips and rotations "
                             "of each slice (8 times the passes)")
    parser.add_argument("--cell_labels", action="store_true",
                        help="also write the cells as a label image (0 on membranes, one id per cell, per slice) "
                             "beside the masks, as <output>-cells.tif")
    parser.add_argument("--cell_threshold", type=cell_threshold_number, default=None, metavar="T",
                        help="with --cell_labels: a pixel is cell when its cell probability exceeds T (0 <= T < 1), "
                             "e.g. the eval_v_rand_thinned_threshold an evaluation logged [default: the masks' "
                             "class decision]")
    parser.add_argument("--overlays", type=int, default=0, metavar="N",
                        help="also write PNG pictures of the first N slices into <output stem>-overlays/")
    parser.add_argument("-b", "--batch_size", type=int, default=4, help="slices (or tiles) per forward pass")
    blockwise = parser.add_argument_group("blockwise prediction into OME-Zarr (an output ending in .zarr; the "
                                          "default for Zarr and HDF5 inputs)")
    blockwise.add_argument("--tile_size", default="auto", choices=["auto", *map(str, TILE_OUTPUTS)],
                           help="output side of the overlap tiles (input: 184 more); auto: of those within a memory "
                                "bound, the fastest by one timed pass each on large volumes, else the one computing "
                                "the fewest pixels; an output in progress keeps its own")
    blockwise.add_argument("--chunks", type=int, default=None, metavar="N",
                           help="output chunks of 1 x N x N [default: a whole multiple of the tile near 1024]")
    blockwise.add_argument("--probabilities", choices=("uint8", "float16"), default=None,
                           help="also write the class probabilities as <stem>-probabilities.ome.zarr (c, z, y, x)")
    blockwise.add_argument("--into_input_labels", default=None, metavar="NAME",
                           help="for an OME-Zarr input: write the masks into it as its label image labels/NAME "
                                "(NGFF, as napari shows it over the image) instead of beside it")
    blockwise.add_argument("--workers", type=int, default=None, metavar="N",
                           help="compute the blocks on a local Dask cluster of N processes of one thread each")
    blockwise.add_argument("--scheduler", default=None, metavar="ADDRESS",
                           help="compute the blocks on the Dask cluster whose scheduler is at ADDRESS "
                                "(tcp://host:8786), e.g. one started with dask scheduler / dask worker")
    blockwise.add_argument("--cluster_timeout", type=float, default=60.0, metavar="S",
                           help="how long to wait for the scheduler to answer (then exit status 4)")
    blockwise.add_argument("--overwrite", action="store_true",
                           help="start over: replace an output made by another model or with other settings "
                                "(without it such an output is refused, and the same command goes on where a "
                                "stopped run left off)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.scheduler:
        parser.error("--workers starts a cluster and --scheduler joins one: give one of them")
    if (args.workers is not None and args.workers < 1) or args.cluster_timeout <= 0:
        parser.error("--workers must be at least 1 and --cluster_timeout positive")
    if args.batch_size < 1 or args.overlays < 0:
        parser.error("--batch_size must be at least 1 and --overlays 0 or more")
    if args.cell_threshold is not None and not args.cell_labels:
        parser.error("--cell_threshold chooses the cells of --cell_labels; give --cell_labels too")
    return args


def run(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from common.quiet_start import asked_for_tensorflow_lines, tensorflow_start_quietly

    with tensorflow_start_quietly(not asked_for_tensorflow_lines(None)):  # TensorFlow's start-up lines, dropped
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from data_loading.intensity import map_volumes
        from data_loading.readers import open_volume
        from runtime.inference.export import ensemble_window, load_ensemble_probability_fn
        from runtime.loop.masks import predict_to_tiff

        tf.config.list_physical_devices("GPU")  # the device search (cuInit's error line without a GPU) too

    models = [Path(model) for model in args.model]
    if args.strategy is None:
        args.strategy = strategy_of(models)
    source = args.input
    reader = open_volume(source, "INPUT")
    check_memory(reader, args)
    (slices,), notes = map_volumes([reader], ensemble_window(models, reader.dtype))
    for note in notes:
        print(f"predict.py: {note}", file=sys.stderr, flush=True)
    output = Path(args.output) if args.output else default_output(source, slices.stem, zarr_input(reader))
    if args.into_input_labels is not None:
        from data_loading.prediction_store import input_labels

        if args.output or args.probabilities:
            raise UserInputError("--into_input_labels writes the masks into the input image: give no -o and no "
                                 "--probabilities with it")
        output = input_labels(Path(source), args.into_input_labels)[0]
    if output.name.endswith(".zarr") or args.into_input_labels is not None:
        return run_blockwise(args, slices, models, output)
    probability_fn, num_classes = load_ensemble_probability_fn(models)
    predict_to_tiff(probability_fn, slices, slices.slice_names(), output, strategy=args.strategy,
                    batch_size=args.batch_size, tta=args.tta, num_classes=num_classes, overlays=args.overlays,
                    cell_labels=args.cell_labels, cell_threshold=args.cell_threshold,
                    overlays_folder=output.parent / f"{output.stem}-overlays")
    count, height, width = slices.shape
    print(f"predict.py: wrote {count} masks of {height}x{width} to {output}")
    return output


def strategy_of(models: list[Path]) -> str:
    """The strategy of the input mode the models were trained in (a model trained on full-resolution tiles
    segments best by tiles), said on one line; resize where they differ or nothing says."""
    from runtime.inference.export import trained_input_mode

    modes = {trained_input_mode(model) for model in models}
    strategy = modes.pop() if len(modes) == 1 and None not in modes else None
    if strategy is not None:
        print(f"predict.py: --strategy {strategy}, as the model was trained (--input_mode {strategy})",
              file=sys.stderr, flush=True)
    return strategy or "resize"


def run_blockwise(args: argparse.Namespace, slices, models: list[Path], output: Path) -> Path:
    """The volume block by block into OME-Zarr images (runtime/loop/blockwise.py)."""
    from runtime.execution.block_engines import LOCAL, DaskBlocks
    from runtime.inference.export import load_ensemble_probability_fn
    from runtime.inference.networks import export_networks
    from runtime.loop.blockwise import BlockwiseSettings, model_fingerprint, predict_blockwise

    if args.strategy != "tile":
        raise UserInputError(f"{output} is an OME-Zarr output, which is predicted block by block with overlap "
                             "tiles: add --strategy tile, or name a .tif output")
    networks = export_networks(models, load_ensemble_probability_fn)
    settings = BlockwiseSettings(tile=None if args.tile_size == "auto" else int(args.tile_size), chunk=args.chunks,
                                 tta=args.tta, cell_labels=args.cell_labels, cell_threshold=args.cell_threshold,
                                 probabilities=args.probabilities, batch_size=args.batch_size,
                                 overwrite=args.overwrite, overlays=args.overlays,
                                 into_labels_of=Path(args.input) if args.into_input_labels else None)
    if settings.tile is not None and settings.tile not in networks.sizes:
        raise UserInputError(f"--tile_size {settings.tile}: this model is a fixed-size SavedModel or ONNX network "
                             "(388 only); give its export folder or unet2d.keras for larger tiles")

    def say(line: str) -> None:
        print(f"predict.py: {line}", file=sys.stderr, flush=True)
    engine = LOCAL
    if args.workers or args.scheduler:
        engine = DaskBlocks(args.workers, args.scheduler, args.cluster_timeout)
    try:
        overlays = Path(args.input).parent / f"{slices.stem}-{args.into_input_labels}-overlays" \
            if args.into_input_labels else None  # never inside the user's image
        summary = predict_blockwise(slices, slices.slice_names(), networks, output, settings,
                                    model_fingerprint(models), say, overlays_folder=overlays, engine=engine,
                                    model_paths=tuple(str(path.resolve()) for path in models))
    except OSError as error:
        raise write_failure(output.name, output.parent, error) from None
    finally:
        engine.close()
    say(str(summary.pop("summary")))
    count, height, width = slices.shape
    print(f"predict.py: wrote {count} masks of {height}x{width} to {output} (tile {summary['tile']}, chunks "
          f"{'x'.join(map(str, summary['chunks']))})")
    return output


def zarr_input(reader) -> bool:
    """Whether a volume came from a chunked store (Zarr, OME-Zarr, HDF5): its masks then go to OME-Zarr."""
    from data_loading.chunked import Hdf5Volume, ZarrVolume

    return isinstance(reader, ZarrVolume | Hdf5Volume)


def default_output(source: str, stem: str, chunked: bool = False) -> Path:
    """``<input name>-masks.tif`` beside the input, or ``-masks.ome.zarr`` for a Zarr or HDF5 input (beside the
    file or store: masks never go inside the user's store)."""
    from data_loading.readers import split_hdf5

    hdf5 = split_hdf5(source)
    base = hdf5[0] if hdf5 else Path(source)
    while base.parent != base and any(part.endswith(".zarr") for part in base.parent.parts):
        base = base.parent
    return base.parent / f"{stem}-masks{'.ome.zarr' if chunked else '.tif'}"


def check_memory(reader, args: argparse.Namespace) -> None:
    """predict.py holds one slice at a time at full size; refused in one line if even that does not fit."""
    from data_loading.memory import check_fits, slice_working_bytes

    pixels = reader.shape[1] * reader.shape[2]
    check_fits(slice_working_bytes(pixels, 2, args.tta) * (1 if args.strategy == "tile" else args.batch_size),
               f"one slice of {reader.name} ({reader.shape[1]}x{reader.shape[2]})", "use smaller slices or "
               "free memory")


def main(argv: list[str] | None = None) -> int:
    return exit_status("predict.py", lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
