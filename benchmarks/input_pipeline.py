#!/usr/bin/env python3
"""Speed of the training input pipeline alone (read, normalise, augment, batch), without the model.

The model consumes about 0.7 images/s on a 2-core CPU, tens to hundreds on an
accelerator; this measures how many images/s the pipeline can produce, on
one thread and on all of them.

    python -m benchmarks.input_pipeline --data_dir $DATA
    python -m benchmarks.input_pipeline --data_dir $DATA --elastic_sigma 10   # the recipe's and elastic, A B A B
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from data_loading.data_loader import Dataset, StreamOptions

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(data_dir: Path, threads: int | None, parallel_map: bool, batch_size: int,
                      batches: int, elastic_sigma: float = 0.0) -> float:
    options = StreamOptions(batch_size=batch_size, seed=123, augment=True, parallel_map=parallel_map,
                            elastic_sigma=elastic_sigma)
    stream = Dataset.isbi(data_dir, options, fold=0, need_test=False).train_fn()
    if threads is not None:
        limits = tf.data.Options()
        limits.threading.private_threadpool_size = threads
        limits.threading.max_intra_op_parallelism = 1
        stream = stream.with_options(limits)
    iterator = iter(stream)
    next(iterator)  # build the pipeline and fill the prefetch buffer
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch_size * batches / (time.perf_counter() - start)


def measure(data_dir: Path, batch_size: int = 8, batches: int = 20, elastic_sigma: float = 0.0,
            rounds: int = 1) -> list[dict]:
    """Each thread setting in turn; with ``elastic_sigma``, the recipe's augmentation and elastic alternate."""
    results = []
    sigmas = (0.0, elastic_sigma) if elastic_sigma > 0 else (0.0,)
    for _ in range(rounds):
        for threads, parallel_map in ((1, False), (None, False), (None, True)):
            for sigma in sigmas:
                rate = images_per_second(data_dir, threads, parallel_map, batch_size, batches, sigma)
                results.append({"threads": threads or os.cpu_count(), "parallel_map": parallel_map,
                                "elastic_sigma": sigma, "images_per_s": rate})
    return results


def default_data_dir() -> Path:
    """Where the ISBI files usually are: beside the clone (this project's machines), else ./data (the downloader's)."""
    candidates = (ROOT.parent / "shared" / "data" / "isbi2012", ROOT / "data")
    return next((c for c in candidates if (c / "train-volume.tif").is_file()), ROOT / "data")


def check_data_dir(data_dir: Path) -> None:
    if not all((data_dir / name).is_file() for name in ("train-volume.tif", "train-labels.tif")):
        raise SystemExit(f"no ISBI training data in {data_dir}: pass --data_dir, or write it with "
                         "'python download_dataset.py' (or '--synthetic')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=default_data_dir())
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--elastic_sigma", type=float, default=0.0,
                        help="also measure with elastic deformation of this sigma, alternating with the recipe's")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    check_data_dir(args.data_dir)
    results = measure(args.data_dir, args.batch_size, args.batches, args.elastic_sigma, args.rounds)
    if args.json:
        print(json.dumps(results))
        return
    for result in results:
        elastic = f", elastic sigma {result['elastic_sigma']:g}" if result["elastic_sigma"] else ""
        print(f"{result['threads']} thread(s), parallel map {result['parallel_map']}{elastic}: "
              f"{result['images_per_s']:.1f} images/s")


if __name__ == "__main__":
    main()
