#!/usr/bin/env python3
"""One model, both stacks: how far apart are the two stacks' answers for the same checkpoint?

    python -m benchmarks.across_stacks --tf215_python "$(scripts/setup_env.sh tf2.15 | tail -n 1)"

For each direction (a model trained on current TensorFlow read on TF 2.15, and
the reverse): the writing stack trains a full-width UNet on ISBI fold 0
(--steps steps at batch 1, in --dtype), then

- each stack exports that checkpoint (the reading one across stacks) and
  computes the class probabilities of the 30 slices of the test volume with
  its export, as predict.py does; the largest absolute difference between the
  two stacks' probabilities is reported;
- each stack resumes a copy of the checkpoint for one more step; the loss of
  that first resumed step is reported for both.

Results go to --out as across_stacks.json and across_stacks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.input_modes import machine_name
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.parse_results import read_log

ROOT = Path(__file__).resolve().parents[1]
PROBABILITIES = """
import sys, numpy as np, tifffile
from pathlib import Path
from runtime.inference.export import load_probability_fn
from runtime.inference.strategies import predict_probabilities
fn, _ = load_probability_fn(Path(sys.argv[1]))
slices = tifffile.imread(sys.argv[2])
np.save(sys.argv[3], np.stack(predict_probabilities(fn, list(slices), 2, "resize")).astype(np.float32))
"""


def run(python: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([python, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {python} {' '.join(args)}\n{done.stderr[-3000:]}")
    return done


def first_loss(log_dir: Path) -> float:
    return next(r["data"]["train_total_loss"] for r in read_log(log_dir / "log.json")
                if "train_total_loss" in r.get("data", {}))


def direction(writer: str, pythons: dict[str, str], args: argparse.Namespace, work: Path) -> dict:
    common = ["--data_dir", str(args.data_dir), "--fold", "0", "--batch_size", "1", "--dtype", args.dtype,
              "--base_filters", str(args.base_filters), "--overlays", "0"]
    model = work / f"{writer}-model"
    started = time.perf_counter()
    run(pythons[writer], "unet2d.py", *common, "--exec_mode", "train", "--max_steps", str(args.steps),
        "--model_dir", str(model), "--log_dir", str(work / f"{writer}-train"))
    result = {"writer": writer, "train_minutes": round((time.perf_counter() - started) / 60, 1)}
    probabilities, losses = {}, {}
    for stack, python in pythons.items():
        copy = work / f"{writer}-model-on-{stack}"
        shutil.copytree(model, copy)
        run(python, "unet2d.py", *common, "--exec_mode", "export", "--model_dir", str(copy), "--log_dir",
            str(work / f"{writer}-export-{stack}"))
        target = work / f"{writer}-{stack}.npy"
        run(python, "-c", PROBABILITIES, str(copy / "export"), str(args.data_dir / "test-volume.tif"), str(target))
        probabilities[stack] = np.load(target)
        run(python, "unet2d.py", *common, "--exec_mode", "train", "--resume_training", "--max_steps",
            str(args.steps + 1), "--log_every", "1", "--model_dir", str(copy), "--log_dir",
            str(work / f"{writer}-resume-{stack}"))
        losses[stack] = first_loss(work / f"{writer}-resume-{stack}")
    difference = np.abs(probabilities["current"].astype(np.float64) - probabilities["tf2.15"])
    result.update({"largest_probability_difference": float(difference.max()),
                   "mean_probability_difference": float(difference.mean()),
                   "first_resumed_loss": losses})
    return result


def markdown(report: dict) -> str:
    lines = ["# One model, both stacks", "",
             f"Measured {report['date']} on {report['machine']} by `{report['command']}`: full width "
             f"(--base_filters {report['base_filters']}), --dtype {report['dtype']}, {report['steps']} training "
             "step(s) at batch 1 on ISBI fold 0; probabilities of the 30 test slices by each stack's export "
             "(resize strategy).", "",
             "| trained on | largest probability difference | mean difference | first resumed loss, "
             "current | first resumed loss, TF 2.15 | training min |", "|---|---:|---:|---:|---:|---:|"]
    for row in report["directions"]:
        lines.append(f"| {row['writer']} | {row['largest_probability_difference']:.2e} | "
                     f"{row['mean_probability_difference']:.2e} | {row['first_resumed_loss']['current']:.6f} | "
                     f"{row['first_resumed_loss']['tf2.15']:.6f} | {row['train_minutes']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tf215_python", required=True, help="the TF 2.15 stack's Python")
    parser.add_argument("--data_dir", type=Path, default=default_data_dir())
    parser.add_argument("--base_filters", type=int, default=64)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    check_data_dir(args.data_dir)
    pythons = {"current": sys.executable, "tf2.15": args.tf215_python}
    with tempfile.TemporaryDirectory(prefix="across-stacks-") as scratch:
        directions = [direction(writer, pythons, args, Path(scratch)) for writer in pythons]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine_name(), "base_filters": args.base_filters,
              "dtype": args.dtype, "steps": args.steps, "directions": directions,
              "command": (f"python -m benchmarks.across_stacks --tf215_python $TF215_PYTHON --base_filters "
                          f"{args.base_filters} --dtype {args.dtype} --steps {args.steps}")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "across_stacks.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "across_stacks.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
