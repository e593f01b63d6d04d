#!/usr/bin/env python3
"""Blockwise prediction measured: masks against the tile strategy, larger tiles' speed, Dask workers, memory.

- ``agreement``: an export's masks by the tile strategy (388 tiles, predict.py to TIFF) against blockwise
  prediction at other tiles, on the ISBI test volume and on 2048x2048 slices (ISBI's tiled 4 x 4).
- ``throughput``: output pixels per second of the tile strategy against blockwise prediction at the tile it
  chooses, at the export's width, on 4096x4096 slices (ISBI's tiled 8 x 8), in this process, one sitting.
- ``shifts``: the tile strategy against itself on the 2048x2048 slices cut by 4, 8, 16 and 388 pixels at the
  top and left (its grid then falls elsewhere on the tissue), compared away from the volume's edges: how much
  of the tile strategy's masks hangs on where its tiles lie.
- ``tiles``: seconds of one pass of one tile at each tile size, at the export's width (the timing that
  ``--tile_size auto`` does on large volumes), and output pixels per second.
- ``scores``: a fold's validation slices scored against their labels with 388 tiles and with 644 (one tile
  per 512x512 slice, no tile border inside it).
- ``dask``: ``predict.py --workers 1`` against ``--workers 2`` (one thread each), voxels per second of the
  blocks, and whether the masks are identical.
- ``rss``: peak resident memory of ``predict.py`` on the chunked volumes that ``benchmarks.large_volumes rss``
  wrote (1, 4 and 16 GiB), stopped after ``--seconds``.

    python -m benchmarks.blockwise agreement --export /work/tilemodel/export
    python -m benchmarks.blockwise shifts --export /work/tilemodel/export
    python -m benchmarks.blockwise tiles --export /tmp/full/export
    python -m benchmarks.blockwise throughput --export /tmp/full/export --slices 1
    python -m benchmarks.blockwise dask --export /work/tilemodel/export
    python -m benchmarks.blockwise rss --export /tmp/w8/export --work /work/lv
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.large_volumes import peak_rss, record

ROOT = Path(__file__).resolve().parents[1]
QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def tiled(data_dir: Path, slices: int, times: int) -> np.ndarray:
    images = tifffile.imread(data_dir / "test-volume.tif")[:slices]
    return np.tile(images, (1, times, times))


def masks(path: Path) -> np.ndarray:
    if path.name.endswith(".zarr"):
        from data_loading.readers import open_volume

        return open_volume(path).read_all()
    return tifffile.imread(path)


def predict(export: str, source: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "predict.py", export, str(source), "--strategy", "tile", "-o",
                           str(output), *flags], cwd=ROOT, env=QUIET, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"predict.py failed: {done.stderr[-2000:]}")
    return done


def agreement(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        volumes = {"ISBI test volume (30 x 512 x 512)": Path(args.data_dir) / "test-volume.tif"}
        tifffile.imwrite(work / "big.tif", tiled(Path(args.data_dir), 4, 4))
        volumes["4 x 2048 x 2048 (ISBI tiled 4 x 4)"] = work / "big.tif"
        for index, (name, source) in enumerate(volumes.items()):
            predict(args.export, source, work / f"tile{index}.tif")
            reference = masks(work / f"tile{index}.tif")
            for tile in ("388", "644", "900", "auto"):
                output = work / f"b{index}-{tile}.ome.zarr"
                done = predict(args.export, source, output, "--tile_size", tile)
                chosen = re.search(r"\(tile (\d+),", done.stdout).group(1)
                ours = masks(output)
                where = np.argwhere(ours != reference)
                near = seam_distance(where[:, 1:], 388) <= args.seam if len(where) else np.array([])
                rows.append({"volume": name, "tile": tile, "chosen": int(chosen), "pixels": int(reference.size),
                             "differ": len(where), "equal_percent": round(100 * (1 - len(where) / reference.size), 4),
                             "near_388_seams_percent": round(100 * float(near.mean()), 1) if len(where) else None})
                print(json.dumps(rows[-1]), flush=True)
    lines = ["| volume | tile | pixels differing | equal | of the differing, within "
             f"{args.seam} px of a 388-tile border |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['volume']} | {r['tile']}{'' if r['tile'] != 'auto' else ' (' + str(r['chosen']) + ')'} | "
              f"{r['differ']:,} of {r['pixels']:,} | {r['equal_percent']} % | "
              f"{'' if r['near_388_seams_percent'] is None else str(r['near_388_seams_percent']) + ' %'} |"
              for r in rows]
    record("blockwise_agreement", args, rows, lines)


def shifts(args: argparse.Namespace) -> None:
    """The tile strategy's masks of the volume and of the volume cut by ``d`` pixels: 388 keeps every tile's
    place on the tissue (a control), 16 keeps the poolings' phase but moves the tiles' borders, 4 and 8 move
    both."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        volume = tiled(Path(args.data_dir), 4, 4)
        tifffile.imwrite(work / "v.tif", volume)
        predict(args.export, work / "v.tif", work / "v-masks.tif")
        reference = masks(work / "v-masks.tif")
        for shift in (4, 8, 16, 388):
            tifffile.imwrite(work / f"s{shift}.tif", volume[:, shift:, shift:])
            predict(args.export, work / f"s{shift}.tif", work / f"s{shift}-masks.tif")
            ours = masks(work / f"s{shift}-masks.tif")
            inner = (slice(None), slice(args.margin, -args.margin), slice(args.margin, -args.margin))
            differ = ours[inner] != reference[:, shift:, shift:][inner]
            rows.append({"shift": shift, "pixels": int(differ.size), "differ": int(differ.sum()),
                         "equal_percent": round(100 * (1 - float(differ.mean())), 4)})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| volume cut by (px, top and left) | pixels differing | equal |", "|---:|---:|---:|"]
    lines += [f"| {r['shift']} | {r['differ']:,} of {r['pixels']:,} | {r['equal_percent']} % |" for r in rows]
    lines.append(f"\n4 x 2048 x 2048 (ISBI tiled 4 x 4), tile strategy (388) both times, compared more than "
                 f"{args.margin} px from the volume's edges; export {args.export}")
    record("blockwise_shifts", args, rows, lines)


def tiles(args: argparse.Namespace) -> None:
    from runtime.inference.export import load_ensemble_probability_fn
    from runtime.inference.networks import export_networks

    networks = export_networks([Path(args.export)], load_ensemble_probability_fn)
    rows = []
    for tile in networks.sizes[:args.sizes_timed]:
        seconds = min(networks.pass_seconds(tile) for _ in range(2))
        side = tile + 2 * 92
        rows.append({"tile": tile, "input": side, "seconds": round(seconds, 3),
                     "output_mpixels_per_s": round(tile * tile / seconds / 1e6, 4),
                     "input_mpixels_per_s": round(side * side / seconds / 1e6, 4)})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| tile (output) | input | seconds a pass | output Mpixel/s | input Mpixel/s |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['tile']} | {r['input']} | {r['seconds']} | {r['output_mpixels_per_s']} | "
              f"{r['input_mpixels_per_s']} |" for r in rows]
    lines.append(f"\none tile a pass, the better of two timed passes (each after a warm-up), width "
                 f"{networks.base_filters}, export {args.export}")
    record("blockwise_tiles", args, rows, lines)


def scores(args: argparse.Namespace) -> None:
    """The fold's validation slices scored against their labels at each tile: which tiling segments better."""
    from data_loading.data_loader import fold_indices
    from data_loading.volume_reader import ArrayVolume
    from runtime.inference.export import load_ensemble_probability_fn
    from runtime.inference.networks import export_networks
    from runtime.inference.scores import SliceScores
    from runtime.inference.strategies import box_probabilities, class_ids

    images = tifffile.imread(Path(args.data_dir) / "train-volume.tif")
    labels = (tifffile.imread(Path(args.data_dir) / "train-labels.tif") // 255).astype(np.uint8)
    _, val = fold_indices(len(images), args.fold, args.split_seed)
    networks = export_networks([Path(args.export)], load_ensemble_probability_fn)
    rows = []
    for tile in (388, 644):
        scored = SliceScores(2)
        for index in val:
            volume = ArrayVolume(images[index][np.newaxis])
            probabilities = box_probabilities(networks.at(tile), volume, 0, 0, 0, *images.shape[1:], tile)
            scored.add(labels[index], class_ids(probabilities), probabilities)
        rows.append({"tile": tile, **{k: round(v, 4) for k, v in scored.scores().items()}})
        print(json.dumps(rows[-1]), flush=True)
    names = ["eval_mask_dice", "eval_v_rand", "eval_v_rand_thinned", "eval_v_info_thinned"]
    lines = ["| tile | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    lines += [f"| {r['tile']} | " + " | ".join(str(r[n]) for n in names) + " |" for r in rows]
    lines.append(f"\nfold {args.fold} (split seed {args.split_seed}) validation slices, export {args.export}")
    record("blockwise_scores", args, rows, lines)


def seam_distance(places: np.ndarray, tile: int) -> np.ndarray:
    """Distance of each (row, column) to the nearest border between two tiles of the tile strategy's grid."""
    def one(axis: np.ndarray) -> np.ndarray:
        offset = axis % tile
        return np.minimum(offset, tile - 1 - offset)
    return np.minimum(one(places[:, 0]), one(places[:, 1]))


def throughput(args: argparse.Namespace) -> None:
    """The tile strategy (strategies.iter_probabilities) against blockwise prediction into a store."""
    from data_loading.volume_reader import ArrayVolume
    from runtime.inference.export import load_ensemble_probability_fn
    from runtime.inference.networks import export_networks
    from runtime.inference.strategies import class_ids, iter_probabilities
    from runtime.loop.blockwise import BlockwiseSettings, predict_blockwise

    volume = ArrayVolume(tiled(Path(args.data_dir), args.slices, 8), "4096")
    networks = export_networks([Path(args.export)], load_ensemble_probability_fn)
    pixels = volume.shape[0] * volume.shape[1] * volume.shape[2]
    fn, _ = load_ensemble_probability_fn([Path(args.export)])
    list(iter_probabilities(fn, [volume.read(0)[:572, :572]], 1, "tile"))  # traced before timing
    started = time.perf_counter()
    tile_ids = [class_ids(p) for p in iter_probabilities(fn, (volume.read(z) for z in range(volume.shape[0])),
                                                         args.batch_size, "tile")]
    tile_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / "m.ome.zarr"
        settings = BlockwiseSettings(batch_size=args.batch_size)
        started = time.perf_counter()
        summary = predict_blockwise(volume, volume.slice_names(), networks, output, settings, "benchmark", print)
        block_seconds = time.perf_counter() - started
        ours = masks(output)
    expected = np.stack([ids * 255 for ids in tile_ids]).astype(np.uint8)
    rows = [{"strategy": "tile (388, today's)", "seconds": round(tile_seconds, 1),
             "megapixels_per_s": round(pixels / tile_seconds / 1e6, 4)},
            {"strategy": f"blockwise, tile {summary['tile']} (chosen)", "seconds": round(block_seconds, 1),
             "megapixels_per_s": round(pixels / block_seconds / 1e6, 4),
             "equal_percent": round(100 * float((ours == expected).mean()), 4)}]
    ratio = tile_seconds / block_seconds
    lines = ["| strategy | seconds | Mpixel/s | masks equal to the tile strategy's |", "|---|---:|---:|---:|"]
    lines += [f"| {r['strategy']} | {r['seconds']} | {r['megapixels_per_s']} | {r.get('equal_percent', '')} |"
              for r in rows]
    lines.append(f"\n{args.slices} slice(s) of 4096x4096, export {args.export}: blockwise / tile = **{ratio:.2f}x**")
    record("blockwise_throughput", args, rows, lines)


def dask(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tifffile.imwrite(work / "v.tif", tiled(Path(args.data_dir), args.slices, 2))
        for workers in (1, 2, 1, 2):
            output = work / f"w{workers}-{len(rows)}.ome.zarr"
            done = predict(args.export, work / "v.tif", output, "--tile_size", str(args.tile), "--workers",
                           str(workers), "--chunks", "1024")
            rate = float(re.search(r"\(([\d.]+) Mvoxel/s\)", done.stderr).group(1))
            rows.append({"workers": workers, "mvoxels_per_s": rate, "output": output.name})
            print(json.dumps(rows[-1]), flush=True)
        first = masks(work / rows[0]["output"])
        identical = all(np.array_equal(first, masks(work / row["output"])) for row in rows[1:])
    mean = {n: float(np.mean([r["mvoxels_per_s"] for r in rows if r["workers"] == n])) for n in (1, 2)}
    lines = ["| workers (1 thread each) | Mvoxel/s (each run) | mean |", "|---:|---|---:|"]
    lines += [f"| {n} | {', '.join(str(r['mvoxels_per_s']) for r in rows if r['workers'] == n)} | {mean[n]:.3f} |"
              for n in (1, 2)]
    lines.append(f"\n2 workers / 1 worker: **{mean[2] / mean[1]:.2f}x**; masks identical in every run: {identical}")
    record("blockwise_dask", args, [*rows, {"identical": identical}], lines)


def rss(args: argparse.Namespace) -> None:
    rows = []
    for size in args.sizes:
        source = Path(args.work) / f"vol{size:g}.0g.ome.zarr" if float(size).is_integer() else None
        source = source if source and source.exists() else Path(args.work) / f"vol{size}g.ome.zarr"
        output = Path(args.work) / f"masks{size}g.ome.zarr"
        command = [sys.executable, "predict.py", args.export, str(source), "--strategy", "tile", "-o", str(output),
                   "--overwrite"]
        peak, status, wall = peak_rss(command, args.seconds)
        rows.append({"size_gib": size, "peak_rss_gib": round(peak, 3), "status": status, "wall_s": round(wall, 1),
                     "command": " ".join(command[1:])})
        print(json.dumps(rows[-1]), flush=True)
    peaks = [r["peak_rss_gib"] for r in rows]
    lines = ["| volume | peak RSS GiB |", "|---:|---:|"] + [f"| {r['size_gib']:g} GiB | {r['peak_rss_gib']:.2f} |"
                                                            for r in rows]
    lines.append(f"\nspread {(max(peaks) - min(peaks)) / min(peaks):.1%}; export {args.export}")
    record(f"blockwise_rss_{args.label}", args, rows, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("agreement", "shifts", "tiles", "scores", "throughput", "dask", "rss"))
    parser.add_argument("--export", required=True, help="an export folder (unet2d.py --exec_mode export)")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2012"))
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--tile", type=int, default=388)
    parser.add_argument("--work", default="/tmp/unet2d-large-volumes")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--label", default="w8")
    parser.add_argument("--seam", type=int, default=16, help="agreement: pixels from a tile border counted as near")
    parser.add_argument("--margin", type=int, default=92, help="shifts: edge pixels left out of the comparison")
    parser.add_argument("--sizes_timed", type=int, default=5, help="tiles: how many tile sizes, from 388 up")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--split_seed", type=int, default=123)
    args = parser.parse_args()
    commands = {"agreement": agreement, "shifts": shifts, "tiles": tiles, "scores": scores, "throughput": throughput,
                "dask": dask, "rss": rss}
    commands[args.what](args)


if __name__ == "__main__":
    main()
