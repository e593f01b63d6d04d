#!/usr/bin/env python3
"""Data-parallel scaling on one machine: N workers against one, each worker pinned to its own cores.

For each mode (train, predict) and precision, runs unet2d.py --benchmark on
synthetic data as one worker (``--distribution none``, pinned to
``--threads`` cores) and as N workers through scripts/launch_workers.py
(``--distribution multi_worker``, each pinned to its own ``--threads``
cores), and reports images/s over all workers and the ratio. With
``--horovod_python`` (the TF 2.15 stack's interpreter) the same N-worker runs
go through mpirun + Horovod too, beside them. Writes scaling.json and
scaling.md into --out.

    python -m benchmarks.scaling --workers 2 --threads 1
    python -m benchmarks.scaling --horovod_python "$(scripts/setup_env.sh tf2.15 | tail -1)"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime.parse_results import merged_data, read_log

ROOT = Path(__file__).resolve().parents[1]

STATS_KEY = {"train": "train", "predict": "test"}


def benchmark_flags(mode: str, dtype: str, batch: int, steps: int, warmup: int, work: str) -> list[str]:
    return ["--synth_data", "--benchmark", "--exec_mode", mode, "--dtype", dtype, "--batch_size", str(batch),
            "--max_steps", str(steps), "--warmup_steps", str(warmup), "--model_dir", f"{work}/model",
            "--log_dir", work]


def throughput(command: list[str], work: str, mode: str, env: dict[str, str] | None = None) -> float:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(merged_data(read_log(Path(work) / "log.json"), [])[f"throughput_{STATS_KEY[mode]}"])


def single(mode: str, dtype: str, args: argparse.Namespace) -> float:
    """One worker on --threads cores: the launcher with -n 1 pins it the same way as the N workers."""
    with tempfile.TemporaryDirectory() as work:
        flags = benchmark_flags(mode, dtype, args.batch_size, args.steps, args.warmup, work)
        command = [sys.executable, str(ROOT / "scripts" / "launch_workers.py"), "-n", "1",
                   "--threads_per_worker", str(args.threads), "--", str(ROOT / "unet2d.py"), *flags]
        return throughput(command, work, mode)


def scaled_steps(mode: str, args: argparse.Namespace) -> tuple[int, int]:
    """Training runs max_steps // replicas steps: N workers get N times the steps, so each times as many as one."""
    factor = args.workers if mode == "train" else 1  # predict benchmarks run max_steps on every worker
    return args.steps * factor, args.warmup


def multi_worker(mode: str, dtype: str, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as work:
        steps, warmup = scaled_steps(mode, args)
        flags = benchmark_flags(mode, dtype, args.batch_size, steps, warmup, work)
        command = [sys.executable, str(ROOT / "scripts" / "launch_workers.py"), "-n", str(args.workers),
                   "--threads_per_worker", str(args.threads), "--", str(ROOT / "unet2d.py"), *flags,
                   "--distribution", "multi_worker"]
        return throughput(command, work, mode)


def horovod(mode: str, dtype: str, args: argparse.Namespace, workers: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        steps, warmup = scaled_steps(mode, args) if workers > 1 else (args.steps, args.warmup)
        flags = benchmark_flags(mode, dtype, args.batch_size, steps, warmup, work)
        threads = {"TF_NUM_INTRAOP_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
        command = ["mpirun", "--allow-run-as-root", "--bind-to", "core", "--map-by", f"slot:PE={args.threads}",
                   "-np", str(workers), *[arg for name in threads for arg in ("-x", name)],
                   args.horovod_python, str(ROOT / "unet2d.py"), *flags, *(["--use_horovod"] if workers > 1 else [])]
        return throughput(command, work, mode, env=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="cores (and threads) per worker")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per worker, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["train", "predict"], choices=sorted(STATS_KEY))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--horovod_python", default=None, help="the TF 2.15 stack's python, to measure Horovod too")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        for dtype in args.dtypes:
            one = single(mode, dtype, args)
            many = multi_worker(mode, dtype, args)
            row = {"mode": mode, "dtype": dtype, "batch_size": args.batch_size, "threads_per_worker": args.threads,
                   "workers": args.workers, "one_worker": one, "multi_worker": many, "speedup": many / one}
            if args.horovod_python:
                try:
                    row["horovod_one_worker"] = horovod(mode, dtype, args, 1)
                    row["horovod"] = horovod(mode, dtype, args, args.workers)
                    row["horovod_speedup"] = row["horovod"] / row["horovod_one_worker"]
                except SystemExit as failure:  # keep the tf.distribute figures; say why Horovod has none
                    row["horovod_error"] = str(failure)[-500:]
            print(json.dumps(row), flush=True)
            rows.append(row)
            write(args, rows)


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    """scaling.json and scaling.md of the rows measured so far (rewritten after each, so a long run keeps them)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    header = (f"| mode | dtype | 1 worker img/s | {args.workers} workers (multi_worker) img/s | speed-up |"
              + (" Horovod 1 / N img/s | Horovod speed-up |" if args.horovod_python else ""))
    lines = [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    for r in rows:
        line = (f"| {r['mode']} | {r['dtype']} | {r['one_worker']:.3f} | {r['multi_worker']:.3f} | "
                f"{r['speedup']:.2f}x |")
        if "horovod" in r:
            line += f" {r['horovod_one_worker']:.3f} / {r['horovod']:.3f} | {r['horovod_speedup']:.2f}x |"
        elif args.horovod_python:
            line += " failed | - |"
        lines.append(line)
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
