#!/usr/bin/env python3
"""The all-reduce of one training step alone: the UNet's 46 gradient tensors summed over the workers.

Run under the launcher, as training runs (same engine, same collectives):

    python scripts/launch_workers.py -n 2 --threads_per_worker 1 -- python -m benchmarks.allreduce

Worker 0 prints one JSON line: the gradient bytes, the seconds per all-reduce
(median of --repeats after one warm-up), and the bytes each worker sends per
step in a ring all-reduce, 2 (N-1)/N times the gradient size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf

    from model.unet import build_unet
    from runtime.execution.distribution import make_workers

    workers = make_workers("multi_worker")
    shapes = [tuple(v.shape) for v in build_unet(123).trainable_variables]
    gradients = [tf.ones(shape, tf.float32) for shape in shapes]
    strategy = workers.strategy

    @tf.function
    def all_reduce() -> tf.Tensor:
        def replica() -> list[tf.Tensor]:
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)

        summed = strategy.run(replica)
        return strategy.experimental_local_results(summed)[0][0][0, 0, 0, 0]

    all_reduce().numpy()  # warm-up: tracing and the collective's first set-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        all_reduce().numpy()
        seconds.append(time.perf_counter() - start)
    size_bytes = sum(4 * int(tf.reduce_prod(shape)) for shape in shapes)
    if workers.is_chief:
        n = workers.replicas
        print(json.dumps({"workers": n, "tensors": len(shapes), "gradient_bytes": size_bytes,
                          "seconds_median": statistics.median(seconds), "seconds_all": seconds,
                          "ring_bytes_sent_per_worker": 2 * (n - 1) / n * size_bytes,
                          "algorithm_gb_per_s": size_bytes / statistics.median(seconds) / 1e9}))


if __name__ == "__main__":
    main()
