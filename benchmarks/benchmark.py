#!/usr/bin/env python3
"""Throughput of unet2d.py's own --benchmark mode, per mode, precision and batch size.

Each configuration runs as a separate process (as a user would run it) on
synthetic data; the figures are read back from its log.json, and the peak
resident memory from the operating system. Writes results.json and
results.md into --out.

    python benchmarks/benchmark.py --batch_sizes 2 --dtypes fp32 bf16 --modes train predict
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.parse_results import merged_data, read_log  # noqa: E402

STATS_MODE = {"train": "train", "predict": "test"}  # the key unet2d.py logs each mode's figures under


def run_config(mode: str, dtype: str, batch_size: int, steps: int, warmup: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, str(ROOT / "unet2d.py"), "--synth_data", "--benchmark",
                   "--exec_mode", mode, "--dtype", dtype, "--batch_size", str(batch_size),
                   "--max_steps", str(steps), "--warmup_steps", str(warmup),
                   "--model_dir", f"{work}/model", "--log_dir", work, *extra]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark run failed: {' '.join(command)}\n{output[-3000:]}")
        stats = merged_data(read_log(Path(work) / "log.json"), [])
    key = STATS_MODE[mode]
    return {"mode": mode, "dtype": dtype, "batch_size": batch_size, "steps": steps, "warmup_steps": warmup,
            "images_per_s": stats[f"throughput_{key}"], "latency_ms_mean": stats[f"latency_{key}_mean"],
            "latency_ms_90": stats[f"latency_{key}_90"], "latency_ms_99": stats[f"latency_{key}_99"],
            "peak_rss_gib": usage.ru_maxrss / 2**20}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def tensorflow_version() -> str:
    from importlib.metadata import version
    return version("tensorflow")


def markdown(results: list[dict]) -> str:
    lines = ["| mode | dtype | batch | images/s | latency mean ms | p90 ms | p99 ms | peak RSS GiB | vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    fp32 = {(r["mode"], r["batch_size"]): r["images_per_s"] for r in results if r["dtype"] == "fp32"}
    for r in results:
        base = fp32.get((r["mode"], r["batch_size"]))
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['mode']} | {r['dtype']} | {r['batch_size']} | {r['images_per_s']:.3f} | "
                     f"{r['latency_ms_mean']:.0f} | {r['latency_ms_90']:.0f} | {r['latency_ms_99']:.0f} | "
                     f"{r['peak_rss_gib']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=sorted(STATS_MODE), default=["train", "predict"])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[2])
    parser.add_argument("--steps", type=int, default=12, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the figures")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("extra", nargs="*", help="further unet2d.py flags after --, e.g. -- --xla")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be greater than --warmup")

    results = []
    for mode in args.modes:
        for batch_size in args.batch_sizes:
            for dtype in args.dtypes:
                result = run_config(mode, dtype, batch_size, args.steps, args.warmup, args.extra)
                print(f"{mode:8s} {dtype} batch {batch_size}: {result['images_per_s']:.3f} images/s, "
                      f"peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
                results.append(result)
    machine = {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "tensorflow": tensorflow_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
