#!/usr/bin/env python3
"""Throughput of unet2d.py's own --benchmark mode, per mode, precision and batch size, against the kernel ceiling.

Each configuration runs as a separate process (as a user would run it) on
synthetic data; the figures are read back from its log.json, and the peak
resident memory from the operating system. For each precision and batch
size, kernel_ceiling.py times the model's convolution kernels alone, and
every result is reported as a fraction of that ceiling. The input pipeline
is measured alone too (input_pipeline.py). Writes results.json, results.md
and results.png (throughput and memory against batch size) into --out.

    python -m benchmarks.benchmark                     # the full matrix: about 25 minutes on 2 cores
    python -m benchmarks.benchmark --batch_sizes 2 --dtypes bf16 --modes train
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

from benchmarks.input_modes import tensorflow_version
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.parse_results import merged_data, read_log

ROOT = Path(__file__).resolve().parents[1]

STATS_MODE = {"train": "train", "predict": "test"}  # the key unet2d.py logs each mode's figures under
# The ceiling of the kernels each run really uses; for training also TensorFlow's own kernels alone.
CEILING_KEY = {"train": "own_train_images_per_s", "predict": "predict_images_per_s"}
TF_CEILING_KEY = {"train": "train_images_per_s", "predict": "predict_images_per_s"}


def run_json(script: str, *flags: str) -> object:
    """Run one of the measuring scripts beside this one in its own process; its JSON answer."""
    command = [sys.executable, "-m", f"benchmarks.{Path(script).stem}", *flags, "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_config(mode: str, dtype: str, batch_size: int, steps: int, warmup: int, extra: list[str],
               env: dict[str, str] | None = None) -> dict:
    """One unet2d.py --benchmark run on synthetic data; ``env`` adds variables (e.g. ONEDNN_MAX_CPU_ISA)."""
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, str(ROOT / "unet2d.py"), "--synth_data", "--benchmark",
                   "--exec_mode", mode, "--dtype", dtype, "--batch_size", str(batch_size),
                   "--max_steps", str(steps), "--warmup_steps", str(warmup),
                   "--model_dir", f"{work}/model", "--log_dir", work, *extra]
        full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark run failed: {' '.join(command)}\n{output[-3000:]}")
        log = read_log(Path(work) / "log.json")
        stats = merged_data(log, [])
        setup = merged_data(log, "SETUP")
    key = STATS_MODE[mode]
    return {"mode": mode, "dtype": dtype, "precision": setup.get("precision", dtype), "batch_size": batch_size,
            "steps": steps, "warmup_steps": warmup,
            "images_per_s": stats[f"throughput_{key}"], "latency_ms_mean": stats[f"latency_{key}_mean"],
            "latency_ms_90": stats[f"latency_{key}_90"], "latency_ms_99": stats[f"latency_{key}_99"],
            "time_to_first_step_s": stats.get("time_to_first_step_s"), "peak_rss_gib": usage.ru_maxrss / 2**20}


def machine_record() -> dict:
    """What a result was measured on: the CPU, its ISA flags that decide bf16, and the software."""
    from runtime.execution.device import describe_cpu
    return {"platform": platform.platform(), **describe_cpu(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "tensorflow": tensorflow_version()}


def markdown(results: list[dict], pipeline: list[dict]) -> str:
    lines = ["| mode | dtype | batch | images/s | vs fp32 | of kernel ceiling | of TF-kernel ceiling "
             "| latency mean ms | p90 ms | p99 ms | first step s | peak RSS GiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fp32 = {(r["mode"], r["batch_size"]): r["images_per_s"] for r in results if r["dtype"] == "fp32"}
    for r in results:
        base = fp32.get((r["mode"], r["batch_size"]))
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        ceiling = f"{r['of_ceiling']:.0%}" if r.get("of_ceiling") else "-"
        tf_ceiling = f"{r['of_tf_kernel_ceiling']:.0%}" if r.get("of_tf_kernel_ceiling") else "-"
        first = f"{r['time_to_first_step_s']:.1f}" if r.get("time_to_first_step_s") else "-"
        lines.append(f"| {r['mode']} | {r['dtype']} | {r['batch_size']} | {r['images_per_s']:.3f} | {ratio} | "
                     f"{ceiling} | {tf_ceiling} | {r['latency_ms_mean']:.0f} | {r['latency_ms_90']:.0f} | "
                     f"{r['latency_ms_99']:.0f} | {first} | {r['peak_rss_gib']:.2f} |")
    if pipeline:
        lines += ["", "| input pipeline (augmented, batch 8) | images/s |", "|---|---:|"]
        lines += [f"| {p['threads']} thread(s){', parallel map' if p['parallel_map'] else ''} | "
                  f"{p['images_per_s']:.1f} |" for p in pipeline]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Throughput (with the kernel ceiling dashed) and peak memory against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True,
                                           gridspec_kw={"width_ratios": [1.4, 1]})
    for mode, dtype in sorted({(r["mode"], r["dtype"]) for r in results}):
        runs = sorted((r for r in results if r["mode"] == mode and r["dtype"] == dtype),
                      key=lambda r: r["batch_size"])
        batches = [r["batch_size"] for r in runs]
        line, = speed.plot(batches, [r["images_per_s"] for r in runs], "o-", label=f"{mode} {dtype}")
        if all(r.get("ceiling_images_per_s") for r in runs):
            speed.plot(batches, [r["ceiling_images_per_s"] for r in runs], "--", color=line.get_color(),
                       alpha=0.6, label=f"{mode} {dtype} kernel ceiling")
        memory.plot(batches, [r["peak_rss_gib"] for r in runs], "o-", label=f"{mode} {dtype}")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    batch_sizes = sorted({r["batch_size"] for r in results})
    for axis, title, unit in ((speed, "throughput", "images/s"), (memory, "peak memory (RSS)", "GiB")):
        axis.set(title=title, xlabel="batch size", ylabel=unit, xscale="log")
        if axis is speed:
            axis.set_yscale("log")
            low, high = axis.get_ylim()
            axis.set_yticks([0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 30, 50, 100])
            axis.set_ylim(low, high)
            axis.yaxis.set_major_formatter(ScalarFormatter())
            axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xticks(batch_sizes)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3)
    speed.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    memory.legend(fontsize=7, loc="upper left")
    figure.savefig(path, dpi=100)
    plt.close(figure)



def _portable(argv: list[str]) -> list[str]:
    """The command as a reader would type it: the data folder as $DATA, not this machine's path."""
    pairs = zip(["", *argv], argv, strict=False)  # each value with the flag before it
    return ["$DATA" if previous == "--data_dir" else value for previous, value in pairs]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=sorted(STATS_MODE), default=["train", "predict"])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16", "auto"], default=["fp32", "bf16"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--base_filters", type=int, default=64, help="the UNet's width (64: the recipe's)")
    parser.add_argument("--steps", type=int, default=8, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the figures")
    parser.add_argument("--no_ceiling", action="store_true", help="skip the kernel-ceiling measurement")
    parser.add_argument("--no_pipeline", action="store_true", help="skip the input-pipeline measurement")
    parser.add_argument("--data_dir", type=Path, default=default_data_dir(),
                        help="ISBI 2012 data for the input-pipeline measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--plot_only", action="store_true",
                        help="redraw results.png and results.md from the results.json in --out, measuring nothing")
    parser.add_argument("extra", nargs="*", help="further unet2d.py flags after --, e.g. -- --xla")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be greater than --warmup")
    if args.plot_only:
        report = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(markdown(report["results"], report["input_pipeline"]))
        plot(report["results"], args.out / "results.png")
        return

    # First: it needs the real data, and a missing folder should stop the run now, not after 20 minutes.
    if not args.no_pipeline:
        check_data_dir(args.data_dir)  # before 20 minutes of measuring, not after
    pipeline = [] if args.no_pipeline else run_json("input_pipeline.py", "--data_dir", str(args.data_dir))
    ceilings = {}
    if not args.no_ceiling:
        for dtype in args.dtypes:
            for batch_size in args.batch_sizes:
                ceilings[dtype, batch_size] = run_json("kernel_ceiling.py", "--dtype", dtype,
                                                       "--batch_size", str(batch_size),
                                                       "--base_filters", str(args.base_filters))
                print(f"kernel ceiling {dtype} batch {batch_size}: "
                      f"train {ceilings[dtype, batch_size]['train_images_per_s']:.3f} images/s "
                      f"(own kernels {ceilings[dtype, batch_size]['own_train_images_per_s']:.3f}), "
                      f"predict {ceilings[dtype, batch_size]['predict_images_per_s']:.3f}", flush=True)
    results = []
    for mode in args.modes:
        for batch_size in args.batch_sizes:
            for dtype in args.dtypes:
                result = run_config(mode, dtype, batch_size, args.steps, args.warmup,
                                    ["--base_filters", str(args.base_filters), *args.extra])
                if (dtype, batch_size) in ceilings:
                    ceiling = ceilings[dtype, batch_size]
                    result["ceiling_images_per_s"] = ceiling.get(CEILING_KEY[mode], ceiling[TF_CEILING_KEY[mode]])
                    result["of_ceiling"] = result["images_per_s"] / result["ceiling_images_per_s"]
                    result["of_tf_kernel_ceiling"] = result["images_per_s"] / ceiling[TF_CEILING_KEY[mode]]
                print(f"{mode:8s} {dtype} batch {batch_size}: {result['images_per_s']:.3f} images/s, "
                      f"peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
                results.append(result)
    machine = machine_record()
    args.out.mkdir(parents=True, exist_ok=True)
    ceiling_summary = [{key: value for key, value in c.items() if key != "layers"} for c in ceilings.values()]
    (args.out / "results.json").write_text(json.dumps(
        {"machine": machine, "command": _portable(sys.argv[1:]), "results": results, "kernel_ceiling": ceiling_summary,
         "kernel_ceiling_layers": list(ceilings.values()), "input_pipeline": pipeline}, indent=2))
    (args.out / "results.md").write_text(markdown(results, pipeline))
    plot(results, args.out / "results.png")
    print(markdown(results, pipeline))


if __name__ == "__main__":
    main()
