#!/usr/bin/env python3
"""Does starting from a trained model help when labels are few? (--init_from, --freeze_encoder)

    python -m benchmarks.fine_tuning isbi    # ISBI 2012: 3 labelled slices, scored on 6 others (~40 min at width 8)
    python -m benchmarks.fine_tuning demo3   # the 3-class demo: a 2-class source fine-tuned to 3 classes

ISBI: the 30 training slices are split once (a fixed permutation) into a
target of 3 training and 6 evaluation slices, and a source of the other 21.
A source model trains on the source slices alone, so it never sees a target
slice. Then, per seed, three runs train on the 3 target slices and are scored
on the 6 (eval Dice and the organisers' thinned V_Rand) every 50 steps up to
--steps: from scratch, from the source, and from the source with the encoder
frozen. Step 0 is the model before training (the source itself, or the
seed's fresh initialisation).

demo3: the same on the synthetic 3-class demo stacks: the source trains on
their membrane/cell labels (mitochondria counted as cell), the target runs
learn all 3 classes.

Results accumulate in --out as fine_tuning.json and fine_tuning.md (rewritten
after every run, so a stopped measurement keeps what it has), and the
learning curves in docs/images/fine-tuning-<part>.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.input_modes import unet2d
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.parse_results import read_log

ROOT = Path(__file__).resolve().parents[1]

CONDITIONS = ("scratch", "source", "source, encoder frozen")
SPLIT_SEED = 0  # the permutation of the 30 ISBI training slices
TARGET_TRAIN, TARGET_EVAL = 3, 6
DEMO = {"classes": 3, "size": 1024, "slices": 20, "seed": 0}


def split(images: np.ndarray, labels: np.ndarray, work: Path) -> dict[str, list[str]]:
    """Stacks of the target's training and evaluation slices and of the source's, as own-data flags."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    parts = {"target_train": order[:TARGET_TRAIN], "target_eval": order[TARGET_TRAIN:TARGET_TRAIN + TARGET_EVAL],
             "source": order[TARGET_TRAIN + TARGET_EVAL:]}
    stacks = {}
    for name, indices in parts.items():
        indices = np.sort(indices)
        tifffile.imwrite(work / f"{name}-images.tif", images[indices])
        tifffile.imwrite(work / f"{name}-labels.tif", labels[indices])
        stacks[name] = [str(work / f"{name}-images.tif"), str(work / f"{name}-labels.tif")]
        stacks[f"{name}_slices"] = indices.tolist()
    return stacks


def scores_by_step(records: list[dict]) -> dict[int, dict[str, float]]:
    found = {}
    for record in records:
        data = record.get("data", {})
        if record.get("step") == [] and "eval_dice_score" in data:
            found[int(data["global_step"])] = {key: data[key] for key in data
                                               if key in ("eval_dice_score", "eval_v_rand_thinned")
                                               or key.startswith("eval_dice_class_")}
    return found


def initial_checkpoint(model_dir: Path, seed: int, classes: int, width: int, source: Path | None) -> None:
    """The weights a run with --seed ``seed`` (and --init_from ``source``) starts from, as a checkpoint at step 0,
    to score step 0 as evaluate scores the later steps."""
    import tensorflow as tf

    from model.unet import build_unet
    from runtime.loop import warm_start
    from runtime.loop.checkpoints import checkpoint_dir

    model = build_unet(seed, classes, base_filters=width)
    if source is not None:
        warm_start.initialise(model, warm_start.find_source(str(source), model_dir, width, print), seed)
    step = tf.Variable(0, dtype=tf.int64)
    # save(), not write(): evaluate restores a checkpoint as training saves it, save counter included.
    tf.train.Checkpoint(model=model, step=step).save(str(checkpoint_dir(model_dir) / "checkpoint"))


def measure(part: str, stacks: dict, source_classes: int, classes: int, args: argparse.Namespace,
            work: Path, results: dict) -> None:
    common = ["--input_mode", "tile", "--base_filters", str(args.width), "--batch_size", str(args.batch_size),
              "--dtype", args.dtype, "--overlays", "0"]
    target_eval = ["--val_images", stacks["target_eval"][0], "--val_labels", stacks["target_eval"][1]]
    target_train = ["--train_images", stacks["target_train"][0], "--train_labels", stacks["target_train"][1]]
    source = work / "source"
    entry = results.setdefault(part, {"settings": {}, "runs": []})
    entry["settings"] = {**{k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "work")},
                         "slices": {k: v for k, v in stacks.items() if k.endswith("_slices")},
                         "source_classes": source_classes, "classes": classes, "date": str(date.today()),
                         "tensorflow": tf_version()}
    if not (source / "model_checkpoint").is_dir():
        started = time.perf_counter()
        unet2d("--exec_mode", "train", "--train_images", stacks["source"][0], "--train_labels", stacks["source"][1],
               "--num_classes", str(source_classes), "--max_steps", str(args.source_steps), "--log_every", "100",
               "--seed", "123", "--model_dir", str(source), *common, log_dir=work / "source-logs")
        entry["settings"]["source_minutes"] = round((time.perf_counter() - started) / 60, 1)
    source_at_0 = None
    if source_classes == classes:  # the source scored on the target's slices: step 0 of both source runs
        source_at_0 = scores_by_step(unet2d("--exec_mode", "evaluate", "--num_classes", str(classes), *target_eval,
                                            "--model_dir", str(source), *common, log_dir=work / "source-eval"))
    for seed in args.seeds:
        for condition in CONDITIONS:
            if any(r["seed"] == seed and r["condition"] == condition for r in entry["runs"]):
                continue
            model = work / f"{condition.replace(', ', '-').replace(' ', '_')}-{seed}"
            start = []
            if condition != "scratch":
                start = ["--init_from", str(source)] + (["--freeze_encoder"] if "frozen" in condition else [])
            if condition == "scratch" or source_at_0 is None:  # step 0: the weights the run starts from
                first = work / f"first-{model.name}"
                initial_checkpoint(first, seed, classes, args.width, None if condition == "scratch" else source)
                at_0 = scores_by_step(unet2d("--exec_mode", "evaluate", "--num_classes", str(classes), *target_eval,
                                             "--model_dir", str(first), *common,
                                             log_dir=work / f"eval0-{model.name}"))
                at_0 = {0: next(iter(at_0.values()))}
            else:
                at_0 = {0: next(iter(source_at_0.values()))}
            started = time.perf_counter()
            logged = work / f"logs-{model.name}" / "log.json"
            if logged.is_file() and args.steps in scores_by_step(read_log(logged)):  # a finished run of --work
                records = read_log(logged)
            else:
                records = unet2d("--exec_mode", "train_and_evaluate", *target_train, *target_eval,
                                 "--num_classes", str(classes), "--seed", str(seed), "--max_steps", str(args.steps),
                                 "--evaluate_every", str(args.every), "--log_every", str(args.every), *start,
                                 "--model_dir", str(model), *common, log_dir=work / f"logs-{model.name}")
            curve = {**at_0, **scores_by_step(records)}
            entry["runs"].append({"seed": seed, "condition": condition, "minutes":
                                  round((time.perf_counter() - started) / 60, 1),
                                  "curve": {str(step): scores for step, scores in sorted(curve.items())}})
            write_results(args.out, results)
            print(f"{part} seed {seed} {condition}: {curve[max(curve)]}", flush=True)


def tf_version() -> str:
    from importlib.metadata import version

    return version("tensorflow")


def summary(runs: list[dict], condition: str, step: int, key: str) -> tuple[float, float, int] | None:
    values = [run["curve"][str(step)][key] for run in runs
              if run["condition"] == condition and str(step) in run["curve"]]
    if not values:
        return None
    return float(np.mean(values)), float(np.max(values) - np.min(values)), len(values)


def markdown(results: dict) -> str:
    lines = ["# Fine-tuning from a trained model with few labels", "",
             "Written by `benchmarks/fine_tuning.py`. Each cell: the mean over the seeds, then the spread "
             "(largest minus smallest) in brackets; n seeds.", ""]
    for part, entry in results.items():
        settings, runs = entry["settings"], entry["runs"]
        steps = sorted({int(s) for run in runs for s in run["curve"]})
        lines += [f"## {part}", "", "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()
                                                                if k != "slices"), "",
                  f"Slices: {settings.get('slices')}", ""]
        scores = [("eval_dice_score", "eval Dice"), ("eval_v_rand_thinned", "thinned V_Rand")]
        classes = sorted({key for run in runs for curve in run["curve"].values() for key in curve
                          if key.startswith("eval_dice_class_")})
        scores += [(key, f"Dice of class {key.rsplit('_', 1)[1]}") for key in classes if settings["classes"] > 2]
        for key, title in scores:
            lines += [f"### {title}", "", "| start | " + " | ".join(f"step {s}" for s in steps) + " |",
                      "|---|" + "---:|" * len(steps)]
            for condition in CONDITIONS:
                cells = []
                for step in steps:
                    found = summary(runs, condition, step, key) if all(
                        key in run["curve"].get(str(step), {}) for run in runs
                        if run["condition"] == condition and str(step) in run["curve"]) else None
                    cells.append("" if found is None else f"{found[0]:.3f} ({found[1]:.3f}, n={found[2]})")
                lines.append(f"| {condition} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict, part: str, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results[part]["runs"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, (key, title) in zip(axes, (("eval_dice_score", "eval Dice"),
                                         ("eval_v_rand_thinned", "thinned V_Rand (organisers')")), strict=True):
        for condition in CONDITIONS:
            steps = sorted({int(s) for run in runs if run["condition"] == condition for s in run["curve"]})
            found = [summary(runs, condition, step, key) for step in steps]
            means = np.array([f[0] for f in found])
            spreads = np.array([f[1] for f in found])
            axis.plot(steps, means, marker="o", label=condition)
            axis.fill_between(steps, means - spreads / 2, means + spreads / 2, alpha=0.2)
        axis.set_xlabel("training steps on the target's labelled slices")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Fine-tuning ({part}): mean over seeds, band = spread")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=90)


def write_results(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fine_tuning.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "fine_tuning.md").write_text(markdown(results))
    for part in results:
        if results[part]["runs"]:
            plot(results, part, ROOT / "docs" / "images" / f"fine-tuning-{part}.png")


def demo_stacks(work: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = work / "demo3"
    if not (folder / "train-volume.tif").is_file():
        subprocess.run([sys.executable, str(ROOT / "download_dataset.py"), "--synthetic", "--data_dir", str(folder),
                        "--classes", str(DEMO["classes"]), "--size", str(DEMO["size"]),
                        "--slices", str(DEMO["slices"]), "--seed", str(DEMO["seed"])], cwd=ROOT, check=True)
    return tifffile.imread(folder / "train-volume.tif"), tifffile.imread(folder / "train-labels.tif")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("isbi", "demo3"))
    parser.add_argument("--data_dir", type=Path, default=default_data_dir())
    parser.add_argument("--width", type=int, default=8, help="--base_filters of every model")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--source_steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=400, help="training steps of each target run")
    parser.add_argument("--every", type=int, default=50, help="evaluate every N steps")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[1, 2])
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results_file = args.out / "fine_tuning.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    work = args.work or Path(tempfile.mkdtemp(prefix=f"fine-tuning-{args.part}-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.part == "isbi":
        check_data_dir(args.data_dir)
        images = tifffile.imread(args.data_dir / "train-volume.tif")
        labels = tifffile.imread(args.data_dir / "train-labels.tif")
        measure("isbi", split(images, labels, work), 2, 2, args, work, results)
    else:
        images, labels = demo_stacks(work)
        stacks = split(images, labels, work)
        two = work / "source-two-classes-labels.tif"  # mitochondria (2) are inside cells (1): the source's labels
        tifffile.imwrite(two, np.minimum(tifffile.imread(stacks["source"][1]), 1))
        stacks["source"] = [stacks["source"][0], str(two)]
        measure("demo3", stacks, 2, 3, args, work, results)
    print(f"results in {args.out / 'fine_tuning.md'}; runs in {work}")


if __name__ == "__main__":
    main()
