#!/usr/bin/env python3
"""Where a training step's time goes: TensorFlow's profiler over one step, summed per op type.

Ops run one at a time (one inter-op thread) so that each op's time is its
own and the per-type totals add up to the step. Convolution kernels appear
as oneDNN's ``_MklNative*`` ops and the matmul weight gradient as
``_MklMatMul``; everything else is the element-wise work around them.

    python -m benchmarks.profile_step --dtype bf16 --batch_size 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from benchmarks.filter_gradient import training_step
from common.compat import set_mixed_bfloat16
from model.unet import build_unet
from runtime.execution.device import select_device


def op_type_seconds(trace_dir: str) -> dict[str, float]:
    """Self time per op type from the profiler's trace (the same table TensorBoard's profile plugin shows)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as converter

    trace = next(Path(trace_dir).glob("plugins/profile/*/*.xplane.pb"))
    data, _ = converter.xspace_to_tools_data([str(trace)], "framework_op_stats", {})
    table = json.loads(data)[0]
    column = {c["id"]: i for i, c in enumerate(table["cols"])}
    totals: dict[str, float] = collections.defaultdict(float)
    for row in table["rows"]:
        cells = [cell["v"] for cell in row["c"]]
        totals[cells[column["type"]]] += cells[column["total_self_time"]] / 1e6
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="op types to list")
    args = parser.parse_args()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    set_mixed_bfloat16(args.dtype == "bf16")
    model = build_unet(1, matmul_filter_gradient=select_device(no_hpu=True).prefers_matmul_filter_gradient)
    step = training_step(model, args.batch_size)
    for _ in range(2):
        step().numpy()  # trace, and let oneDNN pick its kernels
    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        start = time.perf_counter()
        step().numpy()
        seconds = time.perf_counter() - start
        tf.profiler.experimental.stop()
        totals = op_type_seconds(trace_dir)
    print(f"{args.dtype}, batch {args.batch_size}: one step {seconds:.3f} s ({args.batch_size / seconds:.3f} images/s "
          f"with one inter-op thread, under the profiler)")
    for name, t in sorted(totals.items(), key=lambda item: -item[1])[:args.top]:
        print(f"{t * 1e3:9.1f} ms  {t / seconds:6.1%}  {name}")


if __name__ == "__main__":
    main()
