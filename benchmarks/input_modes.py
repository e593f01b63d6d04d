#!/usr/bin/env python3
"""--input_mode tile against the recipe's resize: accuracy after equal training, and throughput.

Three parts, each a few runs of unet2d.py as a user would start them, read
back from their log.json; results accumulate in --out as input_modes.json
and input_modes.md (rewritten after every run, so a stopped measurement
keeps what it has):

    python -m benchmarks.input_modes throughput   # train and predict images/s, A/B interleaved (~10 min)
    python -m benchmarks.input_modes demo         # 3-class synthetic EM, 1024x1024 slices (~40 min)
    python -m benchmarks.input_modes isbi         # ISBI 2012 fold 0, challenge scores by tile prediction (~40 min)
    python -m benchmarks.input_modes isbi_steps --steps 120,200
                                                  # one resize-trained model, scored both ways at each step count

Every trained model is scored at full resolution by both prediction
strategies, so a model trained at one scale and applied at another shows.
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
from collections.abc import Iterator
from datetime import date
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.parse_results import final_eval, merged_data, read_log

ROOT = Path(__file__).resolve().parents[1]

MODES = ("resize", "tile")
DEMO = {"classes": 3, "size": 1024, "slices": 20, "seed": 0}
SCORES = ("eval_dice_score", "eval_v_rand", "eval_v_info", "eval_mask_dice")


def unet2d(*flags: str, log_dir: Path) -> list[dict]:
    """One run of unet2d.py; its log records. A failed run ends the measurement with its output."""
    command = [sys.executable, str(ROOT / "unet2d.py"), *flags, "--log_dir", str(log_dir)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return read_log(log_dir / "log.json")


def demo_data(folder: Path) -> Path:
    """The 3-class demo stacks, generated once (about a minute) by download_dataset.py --synthetic."""
    if not (folder / "test-volume.tif").is_file():
        subprocess.run([sys.executable, str(ROOT / "download_dataset.py"), "--synthetic", "--data_dir", str(folder),
                        "--classes", str(DEMO["classes"]), "--size", str(DEMO["size"]),
                        "--slices", str(DEMO["slices"]), "--seed", str(DEMO["seed"])], cwd=ROOT, check=True)
    return folder


def accuracy(data_dir: Path, classes: int, args: argparse.Namespace, work: Path) -> Iterator[dict]:
    """Train one model per input mode on fold 0; score each by both prediction strategies."""
    for mode in MODES:
        model = work / f"model-{mode}"
        common = ["--data_dir", str(data_dir), "--fold", "0", "--num_classes", str(classes), "--dtype", args.dtype,
                  "--batch_size", str(args.batch_size), "--model_dir", str(model), "--input_mode", mode,
                  "--overlays", "2"]
        started = time.perf_counter()
        unet2d("--exec_mode", "train", "--max_steps", str(args.steps), "--log_every", "20", *common,
               log_dir=work / f"train-{mode}")
        minutes = (time.perf_counter() - started) / 60
        for strategy in MODES:
            scores = final_eval(unet2d("--exec_mode", "evaluate", "--predict_strategy", strategy, *common,
                                       log_dir=work / f"eval-{mode}-{strategy}"))
            row = {"input_mode": mode, "predict_strategy": strategy, "steps": args.steps,
                   "batch_size": args.batch_size, "dtype": args.dtype, "train_minutes": round(minutes, 1)}
            row.update({key: value for key, value in scores.items()
                        if key in SCORES or key.startswith("eval_dice_class_")})
            yield row


def by_steps(data_dir: Path, args: argparse.Namespace, work: Path) -> Iterator[dict]:
    """Per seed, one resize-trained model on ISBI fold 0, stopped at each step count and scored both ways.

    Each later step count resumes the same run (resume is exact), so the model
    at step 200 is the one a straight 200-step run gives: every step count of
    a seed is measured on one training stream.
    """
    for seed in args.seeds:
        model = work / f"model-resize-{seed}"
        common = ["--data_dir", str(data_dir), "--fold", "0", "--dtype", args.dtype, "--batch_size",
                  str(args.batch_size), "--model_dir", str(model), "--seed", str(seed),
                  "--base_filters", str(args.base_filters)]
        minutes = 0.0
        for position, steps in enumerate(args.step_counts):
            started = time.perf_counter()
            resume = ["--resume_training"] if position else []
            unet2d("--exec_mode", "train", "--max_steps", str(steps), "--log_every", "20", *resume, *common,
                   log_dir=work / f"train-{seed}-{steps}")
            minutes += (time.perf_counter() - started) / 60
            for strategy in MODES:
                scores = final_eval(unet2d("--exec_mode", "evaluate", "--predict_strategy", strategy, *common,
                                           log_dir=work / f"eval-{seed}-{steps}-{strategy}"))
                row = {"input_mode": "resize", "predict_strategy": strategy, "steps": steps, "seed": seed,
                       "base_filters": args.base_filters, "batch_size": args.batch_size, "dtype": args.dtype,
                       "train_minutes": round(minutes, 1)}
                row.update({key: value for key, value in scores.items() if key in SCORES})
                yield row


def throughput(data_dir: Path, args: argparse.Namespace, work: Path) -> Iterator[dict]:
    """--benchmark train and predict on the ISBI stacks, resize and tile alternating (A B A B)."""
    for repeat in range(args.repeats):
        for exec_mode in ("train", "predict"):
            for mode in MODES:
                key = "train" if exec_mode == "train" else "test"
                records = unet2d("--data_dir", str(data_dir), "--exec_mode", exec_mode, "--benchmark",
                                 "--input_mode", mode, "--dtype", args.dtype, "--batch_size", str(args.batch_size),
                                 "--max_steps", str(args.steps), "--warmup_steps", str(args.warmup),
                                 "--model_dir", str(work / "model"), log_dir=work / f"{exec_mode}-{mode}-{repeat}")
                stats = merged_data(records, [])
                yield {"exec_mode": exec_mode, "input_mode": mode, "repeat": repeat, "dtype": args.dtype,
                       "batch_size": args.batch_size, "inputs_per_s": stats[f"throughput_{key}"]}


def write_results(out: Path, part: str, rows: list[dict], settings: dict) -> None:
    path = out / "input_modes.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[part] = {"settings": settings, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    (out / "input_modes.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    lines = ["# --input_mode tile against resize", "", "Written by `benchmarks/input_modes.py`; every mask "
             "score at the labels' full resolution.", ""]
    for part in ("demo", "isbi"):
        if part not in results:
            continue
        settings, rows = results[part]["settings"], results[part]["rows"]
        classes = sorted(k for k in rows[0] if k.startswith("eval_dice_class_"))
        lines += [f"## {settings['title']}", "", f"`{settings['command']}`", "", measured(settings),
                  "| trained with | scored by | " + " | ".join(c.replace("eval_", "") for c in classes)
                  + " | V_Rand | V_Info | mask Dice | training min |",
                  "|---|---|" + "---:|" * (len(classes) + 4)]
        for row in rows:
            cells = [f"{row.get(c, float('nan')):.4f}" for c in (*classes, "eval_v_rand", "eval_v_info",
                                                                  "eval_mask_dice")]
            lines.append(f"| {row['input_mode']} | {row['predict_strategy']} | " + " | ".join(cells)
                         + f" | {row['train_minutes']} |")
        lines.append("")
    if "isbi_steps" in results:
        settings, rows = results["isbi_steps"]["settings"], results["isbi_steps"]["rows"]
        lines += [f"## {settings['title']}", "", f"`{settings['command']}`", "", measured(settings),
                  "| seed | steps | scored by | eval_dice_score (388x388) | V_Rand | V_Info | mask Dice "
                  "| training min |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            cells = [f"{row.get(c, float('nan')):.4f}" for c in SCORES]
            lines.append(f"| {row['seed']} | {row['steps']} | {row['predict_strategy']} | " + " | ".join(cells)
                         + f" | {row['train_minutes']} |")
        lines.append("")
    if "throughput" in results:
        settings, rows = results["throughput"]["settings"], results["throughput"]["rows"]
        lines += ["## Throughput (network inputs of 572x572 per second)", "", f"`{settings['command']}`", "",
                  measured(settings),
                  "| exec mode | resize | tile | tile / resize |", "|---|---:|---:|---:|"]
        for exec_mode in ("train", "predict"):
            mean = {mode: _mean([r["inputs_per_s"] for r in rows
                                 if r["exec_mode"] == exec_mode and r["input_mode"] == mode]) for mode in MODES}
            ratio = mean["tile"] / mean["resize"] if mean["tile"] and mean["resize"] else None
            lines.append(f"| {exec_mode} | {_cell(mean['resize'])} | {_cell(mean['tile'])} | {_cell(ratio, 2)} |")
        lines.append("")
    return "\n".join(lines)


def measured(settings: dict) -> str:
    """When and on what a part was measured, as a line of its own (empty when not recorded)."""
    return f"Measured {settings['measured']}.\n" if settings.get("measured") else ""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("throughput", "demo", "isbi", "isbi_steps"))
    parser.add_argument("--data_dir", type=Path, default=None, help="the ISBI 2012 stacks [../shared or ./data]")
    parser.add_argument("--demo_dir", type=Path, default=Path.home() / ".cache" / "unet2d" / "demo" /
                        "synthetic-em3-20x1024-seed0", help="where the 3-class demo stacks are (generated if missing)")
    parser.add_argument("--steps", default=None,
                        help="training steps [120; throughput: 12; isbi_steps: a comma list, 120,200]")
    parser.add_argument("--seeds", default="123", help="isbi_steps: training seeds, a comma list [123]")
    parser.add_argument("--base_filters", type=int, default=64, help="isbi_steps: UNet width [64, the recipe's]")
    parser.add_argument("--warmup", type=int, default=4, help="throughput: steps left out of the figures")
    parser.add_argument("--repeats", type=int, default=2, help="throughput: A/B rounds")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        step_counts = [int(n) for n in (args.steps or ("120,200" if args.part == "isbi_steps" else
                                                        "12" if args.part == "throughput" else "120")).split(",")]
    except ValueError:
        parser.error(f"--steps: whole numbers separated by commas, not {args.steps!r}")
    if args.part != "isbi_steps" and len(step_counts) != 1:
        parser.error("--steps: one step count for this part (a list only for isbi_steps)")
    args.step_counts = sorted(step_counts)
    try:
        args.seeds = [int(n) for n in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: whole numbers separated by commas, not {args.seeds!r}")
    args.steps = args.step_counts[-1]
    command = "python -m benchmarks.input_modes " + " ".join(argv if argv is not None else sys.argv[1:])
    command = re.sub(r"--data_dir \S+", "--data_dir $DATA", command)  # the reader's data, not this machine's path
    with tempfile.TemporaryDirectory() as work:
        if args.part == "demo":
            title = (f"Demo: synthetic EM, {DEMO['classes']} classes (0 membrane, 1 interior, 2 mitochondrion), "
                     f"{DEMO['slices']} slices of {DEMO['size']}x{DEMO['size']}, fold 0")
            runs = accuracy(demo_data(args.demo_dir), DEMO["classes"], args, Path(work))
        else:
            data_dir = args.data_dir or default_data_dir()
            check_data_dir(data_dir)
            title = "ISBI 2012, fold 0"
            if args.part == "isbi_steps":
                title = (f"ISBI 2012, fold 0: per seed one model trained with resize (--base_filters "
                         f"{args.base_filters}), scored both ways after {', '.join(map(str, args.step_counts))} steps")
            parts = {"throughput": throughput, "isbi_steps": by_steps,
                     "isbi": lambda data, settings, folder: accuracy(data, 2, settings, folder)}
            runs = parts[args.part](data_dir, args, Path(work))
        settings = {"title": title, "command": command, "steps": args.steps, "batch_size": args.batch_size,
                    "dtype": args.dtype, "tensorflow": tensorflow_version(),
                    "measured": f"{date.today().isoformat()} on {machine_name()}"}
        rows: list[dict] = []
        for row in runs:
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(args.out, args.part, rows, settings)
    return 0


@cache
def machine_name() -> str:
    """CPU model, cores and the ISA flags that decide the precision, as runtime.cli.machine reports them."""
    done = subprocess.run([sys.executable, "-m", "runtime.cli.machine"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1].split(":")[0] if done.returncode == 0 and done.stdout.strip() else "?"


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from its package metadata (importing it takes seconds).
    Gaudi's stack installs it as tensorflow-cpu."""
    for package in ("tensorflow", "tensorflow-cpu"):
        try:
            return version(package)
        except PackageNotFoundError:
            continue
    return "?"


if __name__ == "__main__":
    sys.exit(main())
