#!/usr/bin/env python3
"""Memory of training, evaluation and prediction on chunked volumes of 1, 4 and 16 GiB; Zarr against memory.

``rss``: writes synthetic labelled OME-Zarr volumes of 4096x4096 slices (ISBI's
slices tiled 8 x 8, chunks 1 x 1024 x 1024) of each size, then runs
``unet2d.py`` on each with ``--volume_loading stream`` (``auto`` would keep
the smaller ones in memory, where they fit) and records the peak resident
memory of the process (``wait4``'s ru_maxrss):

- train: tile mode, batch 2, ``--max_steps`` steps, no evaluation;
- evaluate: the whole volume as ``--val_images``, stopped after ``--seconds``;
- predict: the whole volume as ``--test_images``, stopped after ``--seconds``.

A run stopped by the time limit (SIGTERM) has its peak within that time, as a
user would see it in the first minutes of a run that takes hours.

``throughput``: training images/s of ISBI fold 0 (tile mode, batch 2) read
from the TIFF stacks in memory against the same slices streamed from an
OME-Zarr store, runs interleaved in one sitting.

    python -m benchmarks.large_volumes rss --sizes 1 4 16 --base_filters 8 --work /data/big
    python -m benchmarks.large_volumes throughput --data_dir ../shared/data/isbi2012 --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.benchmark import machine_record
from runtime.parse_results import merged_data, read_log

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIDE, TILES = 4096, 8  # 4096x4096 slices: 8 x 8 ISBI slices each
GIB = 2**30


def write_volume(path: Path, labels_path: Path, slices: int, data_dir: Path) -> None:
    """An OME-Zarr image and its labels, slice z the ISBI slice z mod 30 tiled 8 x 8 (written slice by slice)."""
    from data_loading.ome_zarr import OmeZarrWriter

    images = tifffile.imread(data_dir / "train-volume.tif")
    labels = tifffile.imread(data_dir / "train-labels.tif")
    writers = [OmeZarrWriter(target, (slices, SIDE, SIDE), np.uint8, (1, 1024, 1024), target.stem)
               for target in (path, labels_path)]
    for z in range(slices):
        for writer, source in zip(writers, (images, labels), strict=True):
            writer.write(np.tile(source[z % len(source)], (TILES, TILES)))
    for writer in writers:
        writer.close()


def peak_rss(command: list[str], seconds: float) -> tuple[float, int, float]:
    """Peak RSS (GiB) of a process run to its end or stopped by SIGTERM after ``seconds``; its status; wall s."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = started + seconds
    while True:  # wait4 with WNOHANG: the child's own rusage, however quickly it ends
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() >= deadline:
            process.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.5)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024 / GIB, process.returncode, time.perf_counter() - started


def rss(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slices = int(size * GIB // SIDE**2)
        images, labels = work / f"vol{size}g.ome.zarr", work / f"vol{size}g-labels.ome.zarr"
        if not images.exists():
            started = time.perf_counter()
            write_volume(images, labels, slices, Path(args.data_dir))
            print(f"wrote {images} ({slices} slices) in {time.perf_counter() - started:.0f} s", flush=True)
        for width in args.base_filters:
            model = work / f"model{size}g-w{width}"
            common = [sys.executable, "unet2d.py", "--base_filters", str(width), "--input_mode", "tile", "-b", "2",
                      "--model_dir", str(model), "--log_dir", str(model / "logs"), "--overlays", "0",
                      "--volume_loading", args.volume_loading]
            runs = {
                "train": [*common, "--exec_mode", "train", "--train_images", str(images), "--train_labels",
                          str(labels), "--fold", "0", "--max_steps", str(args.steps), "--warmup_steps", "0"],
                "evaluate": [*common, "--exec_mode", "evaluate", "--val_images", str(images), "--val_labels",
                             str(labels)],
                "predict": [*common, "--exec_mode", "predict", "--test_images", str(images)],
            }
            for mode, command in runs.items():
                limit = args.train_seconds if mode == "train" else args.seconds
                peak, status, wall = peak_rss(command, limit)
                row = {"size_gib": size, "slices": slices, "base_filters": width, "mode": mode,
                       "peak_rss_gib": round(peak, 3), "status": status, "wall_s": round(wall, 1),
                       "stopped_at_limit": status == -signal.SIGTERM or status == 128 + signal.SIGTERM,
                       "command": " ".join(command[1:])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    record("large_volumes_rss", args, rows, rss_table(rows))


def rss_table(rows: list[dict]) -> list[str]:
    lines = ["| mode | width | " + " | ".join(f"{s:g} GiB" for s in sorted({r["size_gib"] for r in rows}))
             + " | spread |", "|---|---:|" + "---:|" * (len({r["size_gib"] for r in rows}) + 1)]
    for mode in ("train", "evaluate", "predict"):
        for width in sorted({r["base_filters"] for r in rows}):
            chosen = sorted((r for r in rows if r["mode"] == mode and r["base_filters"] == width),
                            key=lambda r: r["size_gib"])
            if not chosen:
                continue
            peaks = [r["peak_rss_gib"] for r in chosen]
            spread = (max(peaks) - min(peaks)) / min(peaks)
            lines.append(f"| {mode} | {width} | " + " | ".join(f"{p:.2f}" for p in peaks) + f" | {spread:.1%} |")
    return lines


def throughput(args: argparse.Namespace) -> None:
    """Training images/s from the TIFF stacks in memory and from OME-Zarr stores streamed, interleaved."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir)
    stores = {}
    for name in ("train-volume", "train-labels"):
        stores[name] = work / f"{name}.ome.zarr"
        if not stores[name].exists():
            subprocess.run([sys.executable, "convert_volume.py", str(data_dir / f"{name}.tif"), str(stores[name]),
                            "--chunks", "1", "256", "256"], cwd=ROOT, check=True, capture_output=True)
    sources = {"memory": ["--train_images", str(data_dir / "train-volume.tif"), "--train_labels",
                          str(data_dir / "train-labels.tif"), "--volume_loading", "memory"],
               "zarr_streamed": ["--train_images", str(stores["train-volume"]), "--train_labels",
                                 str(stores["train-labels"]), "--volume_loading", "stream"]}
    rows = []
    for repeat in range(args.repeats):
        for name, flags in sources.items():
            logs = work / f"logs-{name}-{repeat}"
            command = [sys.executable, "unet2d.py", *flags, "--fold", "0", "--input_mode", "tile", "-b", "2",
                       "--base_filters", str(args.base_filters[0]), "--exec_mode", "train", "--max_steps",
                       str(args.steps), "--warmup_steps", str(args.warmup), "--model_dir", str(logs / "model"),
                       "--log_dir", str(logs), "--disable_ckpt_saving"]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            if done.returncode != 0:
                raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
            images_per_s = float(merged_data(read_log(logs / "log.json"), [])["throughput_train"])
            rows.append({"source": name, "repeat": repeat, "images_per_s": round(images_per_s, 4),
                         "command": " ".join(command[1:])})
            print(json.dumps(rows[-1]), flush=True)
    mean = {name: float(np.mean([r["images_per_s"] for r in rows if r["source"] == name])) for name in sources}
    ratio = mean["zarr_streamed"] / mean["memory"]
    lines = ["| source | images/s (each run) | mean |", "|---|---|---:|"]
    lines += [f"| {name} | {', '.join(str(r['images_per_s']) for r in rows if r['source'] == name)} | "
              f"{mean[name]:.4f} |" for name in sources]
    lines.append(f"\nZarr streamed / memory: **{ratio:.3f}x**")
    record("large_volumes_throughput", args, rows, lines)


def record(name: str, args: argparse.Namespace, rows: list[dict], table: list[str]) -> None:
    header = {"date": date.today().isoformat(), "machine": machine_record(),
              "command": f"python -m benchmarks.{Path(sys.argv[0]).stem} " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")
    machine = header["machine"]
    described = f"{machine['cpu']} ({machine['cpus']} cores; {machine['isa']}), TensorFlow {machine['tensorflow']}"
    (RESULTS / f"{name}.md").write_text("\n".join([f"# {name}", "", f"- date: {header['date']}",
                                                    f"- machine: {described}",
                                                    f"- command: `{header['command']}`", "", *table]) + "\n")
    print("\n".join(table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("rss", "throughput"))
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="volume sizes in GiB")
    parser.add_argument("--base_filters", type=int, nargs="+", default=[8])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2012"))
    parser.add_argument("--work", default="/tmp/unet2d-large-volumes", help="where the volumes are written")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=150.0, help="evaluate and predict stop after this")
    parser.add_argument("--train_seconds", type=float, default=1800.0)
    parser.add_argument("--volume_loading", default="stream", help="rss: how the runs hold the volumes")
    args = parser.parse_args()
    rss(args) if args.what == "rss" else throughput(args)


if __name__ == "__main__":
    main()
