#!/usr/bin/env python3
"""The U-Net paper's ingredients one by one on ISBI 2012 fold 0: which of them beat the recipe, and at what cost.

    python -m benchmarks.ablation --data_dir $DATA --base_filters 16 --seeds 123,1,2 --steps 400
    python -m benchmarks.ablation --data_dir $DATA --configs "recipe,+ elastic,tile + elastic + TTA" --resume
    python -m benchmarks.ablation --data_dir $DATA --picture docs/images/ablation_cells.png

Each configuration adds one ingredient to the one before: the recipe;
+ tile input mode; + elastic deformation; + border weights; + test-time
augmentation at evaluation (the previous model, scored with --tta);
tile + elastic + TTA (the elastic model, scored with --tta); and the border
weights without their class balance (--border_class_weights uniform), scored
without and with --tta. Each trains
with unet2d.py as a user would (fold 0, batch 2, the fastest precision of
the machine) and is scored by its own final evaluation: the recipe's
eval_dice_score, the organisers' thinned V_Rand and V_Info with their best
thresholds, and the mask scores. Every seed scores the same validation
slices (--split_seed, 123 by default), so the seeds differ only in
training, and each configuration is also compared with the recipe seed by
seed. The best combination is the one whose smaller gain over the recipe,
in mean Dice and in mean thinned V_Rand, is largest, each gain counted in
the recipe's seed spread of its score when there are two seeds or more;
the tables mark it only when that gain is positive. Rows accumulate in
--out as ablation.json and ablation.md, rewritten after every run; the model dirs stay
in --work, so --picture can draw the recipe's cells against the best's
against the truth on one validation slice afterwards. At full width a run
can outlast a sitting (over 2 hours on a CPU without bfloat16): --resume
picks each one up from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.input_modes import machine_name, tensorflow_version, unet2d
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.parse_results import final_eval

ROOT = Path(__file__).resolve().parents[1]

UNIFORM_BORDER_WEIGHTS = ["--input_mode", "tile", "--elastic", "--border_weights", "--border_class_weights", "uniform"]
# name -> (training flags, evaluation flags); a configuration with evaluation flags only re-scores the model of
# the configuration it names.
CONFIGS: dict[str, tuple[list[str], list[str]]] = {
    "recipe": ([], []),
    "+ tile": (["--input_mode", "tile"], []),
    "+ elastic": (["--input_mode", "tile", "--elastic"], []),
    "+ border weights": (["--input_mode", "tile", "--elastic", "--border_weights"], []),
    "+ TTA at evaluation": (["--input_mode", "tile", "--elastic", "--border_weights"], ["--tta"]),
    "tile + elastic + TTA": (["--input_mode", "tile", "--elastic"], ["--tta"]),
    "+ border weights (w_c = 1)": (UNIFORM_BORDER_WEIGHTS, []),
    "+ TTA at evaluation (w_c = 1)": (UNIFORM_BORDER_WEIGHTS, ["--tta"]),
}
RESCORED = {"+ TTA at evaluation": "+ border weights", "tile + elastic + TTA": "+ elastic",
            "+ TTA at evaluation (w_c = 1)": "+ border weights (w_c = 1)"}
SPELLED_OUT = {"recipe": "the recipe", "+ tile": "tile", "+ elastic": "tile + elastic",
               "+ border weights": "tile + elastic + border weights",
               "+ TTA at evaluation": "tile + elastic + border weights + TTA",
               "tile + elastic + TTA": "tile + elastic + TTA",
               "+ border weights (w_c = 1)": "tile + elastic + border weights without class balance",
               "+ TTA at evaluation (w_c = 1)": "tile + elastic + border weights without class balance + TTA"}
SCORES = ("eval_dice_score", "eval_v_rand_thinned", "eval_v_rand_thinned_threshold", "eval_v_info_thinned",
          "eval_v_info_thinned_threshold", "eval_v_rand", "eval_v_info", "eval_mask_dice")


def model_dir(args: argparse.Namespace, name: str, seed: int) -> Path:
    slug = re.sub(r"[^a-z]+", "_", name.lower()).strip("_")
    return args.work / f"{slug}-w{args.base_filters}-seed{seed}-split{args.split_seed}"


def split_flags(split_seed: int | None) -> list[str]:
    return [] if split_seed is None else ["--split_seed", str(split_seed)]


def run_config(name: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (or re-score) one configuration at one seed; its scores and times."""
    train_flags, eval_flags = CONFIGS[name]
    folder = model_dir(args, RESCORED.get(name, name), seed)
    common = ["--data_dir", str(args.data_dir), "--fold", "0", "--batch_size", "2", "--seed", str(seed),
              *split_flags(args.split_seed), "--base_filters", str(args.base_filters), "--model_dir", str(folder),
              "--overlays", "0", *train_flags]
    started = time.perf_counter()
    if name in RESCORED:
        records = unet2d("--exec_mode", "evaluate", *common, *eval_flags, log_dir=folder / "eval-tta")
        plain_started = time.perf_counter()
        unet2d("--exec_mode", "evaluate", *common, log_dir=folder / "eval-plain")
        timing = {"eval_minutes": round((plain_started - started) / 60, 2),
                  "eval_minutes_without": round((time.perf_counter() - plain_started) / 60, 2)}
    else:
        resume = ["--resume_training", "--checkpoint_minutes", "10"] if args.resume else []
        records = unet2d("--exec_mode", "train_and_evaluate", "--max_steps", str(args.steps), "--log_every", "50",
                         *common, *resume, log_dir=folder)
        timing = {"train_minutes": round((time.perf_counter() - started) / 60, 2)}
        restored = [r["data"]["step"] for r in records if r.get("step") == "CHECKPOINT" and "restored" in r["data"]]
        if restored:  # this call's minutes would miss the earlier parts
            timing = {"train_minutes": round(args.steps * mean_step_seconds(records) / 60, 2),
                      "resumed_at_step": restored[-1]}
    scores = final_eval(records) or {}
    return {"config": name, "seed": seed, "split_seed": args.split_seed, "base_filters": args.base_filters,
            "steps": args.steps, **timing,
            **{key: scores[key] for key in SCORES if key in scores}}


def mean_step_seconds(records: list[dict]) -> float:
    """Seconds per training step over every window the log holds, of all the parts of a resumed run."""
    steps = seconds = 0.0
    start = 0
    for record in records:
        step, data = record.get("step"), record.get("data", {})
        if step == "CHECKPOINT" and "restored" in data:
            start = data["step"]
        elif step == "CHECKPOINT" and data.get("message", "").startswith("no checkpoint"):
            start = 0
        elif isinstance(step, list) and len(step) == 2 and "iter duration [ms]" in data:
            steps += step[0] - start
            seconds += (step[0] - start) * data["iter duration [ms]"] / 1000.0
            start = step[0]
    return seconds / steps if steps else float("nan")


def config_means(rows: list[dict], key: str) -> dict[str, float]:
    """Each configuration's mean of one score over its seeds, in the order of CONFIGS."""
    return {name: float(np.mean([r[key] for r in rows if r["config"] == name]))
            for name in CONFIGS if any(r["config"] == name for r in rows)}


def half_range(values: list[float]) -> float:
    """The seed-to-seed spread the goal is judged by."""
    return (max(values) - min(values)) / 2


def recipe_spreads(rows: list[dict]) -> tuple[float, float] | None:
    """The recipe's spread of eval_dice_score and of thinned V_Rand; None below two seeds, or where either is 0."""
    recipe = [r for r in rows if r["config"] == "recipe"]
    spreads = tuple(half_range([r[key] for r in recipe]) for key in ("eval_dice_score", "eval_v_rand_thinned"))
    return spreads if len(recipe) >= 2 and min(spreads) > 0 else None


def smaller_gains(rows: list[dict]) -> dict[str, float]:
    """Each configuration's smaller gain over the recipe, of the two the goal asks for (mean eval_dice_score and
    mean thinned V_Rand), each counted in the recipe's spread of that score where it has one (two seeds or
    more): the scores move by different amounts from seed to seed, and the goal judges each by its own spread.
    Empty without recipe rows."""
    dice, v_rand = config_means(rows, "eval_dice_score"), config_means(rows, "eval_v_rand_thinned")
    if "recipe" not in dice:
        return {}
    dice_unit, v_rand_unit = recipe_spreads(rows) or (1.0, 1.0)
    return {name: min((dice[name] - dice["recipe"]) / dice_unit, (v_rand[name] - v_rand["recipe"]) / v_rand_unit)
            for name in dice if name != "recipe"}


def best_config(rows: list[dict]) -> str | None:
    """The configuration of largest smaller gain over the recipe; without recipe rows, the one of highest mean
    thinned V_Rand."""
    has_recipe = any(r["config"] == "recipe" for r in rows)
    ranking = smaller_gains(rows) if has_recipe else config_means(rows, "eval_v_rand_thinned")
    return max(ranking, key=ranking.get, default=None)


def marked_best(rows: list[dict]) -> str | None:
    """The configuration a table marks **(best)**: none when even the best of them loses to the recipe."""
    best, gains = best_config(rows), smaller_gains(rows)
    return best if best is not None and gains.get(best, 1.0) > 0 else None


def section(width: int, split_seed: int | None) -> str:
    """Key of one table: rows of one width and one split (None: the split drawn by each seed, as --seed does)."""
    return str(width) if split_seed is None else f"{width}-split{split_seed}"


def invocation(script: str, argv: list[str] | None) -> str:
    """How a benchmark was started, for its results file, with the machine's data path left out."""
    command = f"python -m benchmarks.{Path(script).stem} " + shlex.join(argv if argv is not None else sys.argv[1:])
    return re.sub(r"--data_dir \S+", "--data_dir $DATA", command)


def commands_of(settings: dict) -> list[str]:
    """The commands that wrote a section's rows (older results files kept only the last one)."""
    return settings.get("commands") or [settings["command"]]


def record_run(settings: dict | None, command: str, steps: int) -> dict:
    """A section's settings after one more invocation. Runs of one section are often split over sittings and
    configurations, so every command is kept: the table then says how each of its rows was made."""
    settings = dict(settings or {})
    commands = commands_of(settings) if settings else []
    settings.pop("command", None)
    return {**settings, "commands": list(dict.fromkeys([*commands, command])), "steps": steps,
            "tensorflow": tensorflow_version(), "measured": f"{date.today().isoformat()} on {machine_name()}"}


def markdown(results: dict) -> str:
    lines = ["# The U-Net paper's ingredients on ISBI 2012 fold 0", "",
             "Written by `benchmarks/ablation.py`. Batch 2, --dtype auto (the machine's fastest precision). "
             "Thinned V_Rand / V_Info: the organisers' protocol (best over the thresholds 0.0-0.9 of P(cell), "
             "the threshold in brackets); mask V_Rand / V_Info: of the class decision, as in earlier tables. "
             "**(best)**: the configuration whose smaller gain over the recipe, in mean eval_dice_score and in "
             "mean thinned V_Rand, is largest, when that gain is positive; with two recipe seeds or more each "
             "gain counts in the recipe's spread of its score (a smaller gain above 1: the goal is met).", ""]
    keys = {(r["base_filters"], r.get("split_seed")) for r in results["rows"]}
    for width, split_seed in sorted(keys, key=lambda k: (k[1] is None, k[0])):  # fixed splits first
        fixed = split_seed is not None
        settings = results["settings"][section(width, split_seed)]
        commands = commands_of(settings)
        split = (f"`--split_seed {split_seed}`: every seed scores the same validation slices" if fixed else
                 "no `--split_seed`: each `--seed` also draws its own fold split, so the seeds differ in their "
                 "validation slices too")
        lines += [f"## --base_filters {width}, {'fixed split' if fixed else 'split by seed'}", "",
                  *[line for command in commands for line in (f"`{command}`", "")],
                  f"{'Last measured' if len(commands) > 1 else 'Measured'} {settings['measured']}, "
                  f"TensorFlow {settings['tensorflow']}, {settings['steps']} steps; {split}.", "",
                  *([settings["note"], ""] if "note" in settings else [])]
        lines += table([r for r in results["rows"]
                        if r["base_filters"] == width and r.get("split_seed") == split_seed], paired_with_recipe=fixed)
    return "\n".join(lines)


PAIRED_SCORES = {"eval_dice_score": "eval_dice_score", "eval_v_rand_thinned": "V_Rand thinned"}


def paired(rows: list[dict], scores: dict[str, str] = PAIRED_SCORES) -> list[str]:
    """Each configuration minus the recipe, seed by seed (same validation slices): mean, and min..max, of each
    score (key -> column title)."""
    recipe = {r["seed"]: r for r in rows if r["config"] == "recipe"}
    lines = []
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name and r["seed"] in recipe and name != "recipe"]
        if not mine:
            continue
        cells = []
        for key in scores:
            deltas = [r[key] - recipe[r["seed"]][key] for r in mine]
            cells.append(f"{np.mean(deltas):+.4f} ({min(deltas):+.4f}..{max(deltas):+.4f})")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
    if not lines:  # nothing to pair yet
        return []
    return ["", "Minus the recipe of the same seed (mean, min..max over the seeds):", "",
            f"| configuration | seeds | {' | '.join(scores.values())} |", "|---|---:|" + "---:|" * len(scores),
            *lines]


def table(rows: list[dict], paired_with_recipe: bool = False) -> list[str]:
    best = marked_best(rows)
    lines = ["| configuration | seed | eval_dice_score | V_Rand thinned | V_Info thinned | V_Rand mask "
             "| V_Info mask | mask Dice | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    seeds = list(dict.fromkeys(r["seed"] for r in rows))  # in the order they were first run
    one_seed = len(seeds) == 1  # no spread to show: the best is marked in this table, and no means follow
    for row in sorted(rows, key=lambda r: (seeds.index(r["seed"]), list(CONFIGS).index(r["config"]))):
        minutes = row.get("train_minutes", row.get("eval_minutes"))
        if "resumed_at_step" in row:
            minutes = f"{minutes} (resumed)"
        name = f"{row['config']}{' **(best)**' if one_seed and row['config'] == best else ''}"
        lines.append(f"| {name} | {row['seed']} | {row.get('eval_dice_score', float('nan')):.4f} | "
                     f"{row.get('eval_v_rand_thinned', float('nan')):.4f} "
                     f"({row.get('eval_v_rand_thinned_threshold', float('nan')):.1f}) | "
                     f"{row.get('eval_v_info_thinned', float('nan')):.4f} "
                     f"({row.get('eval_v_info_thinned_threshold', float('nan')):.1f}) | "
                     f"{row.get('eval_v_rand', float('nan')):.4f} | {row.get('eval_v_info', float('nan')):.4f} | "
                     f"{row.get('eval_mask_dice', float('nan')):.4f} | {minutes} |")
    if any("resumed_at_step" in row for row in rows):
        lines += ["", "(resumed): picked up from its checkpoint by `--resume`; its minutes are the steps times "
                      "the mean time of a logged step, start-up and evaluation left out."]
    if not one_seed:
        lines += means(rows, best)
    if paired_with_recipe:
        lines += paired(rows)
    lines.append("")
    return lines


def means(rows: list[dict], best: str | None) -> list[str]:
    """Each configuration's mean over its seeds, with half the range as the spread the goal is judged by."""
    lines = ["", "Means over the seeds (spread: half the range):", "",
             "| configuration | seeds | eval_dice_score | V_Rand thinned | V_Info thinned |",
             "|---|---:|---:|---:|---:|"]
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        if not mine:
            continue
        cells = []
        for key in ("eval_dice_score", "eval_v_rand_thinned", "eval_v_info_thinned"):
            values = [r[key] for r in mine if key in r]
            cells.append(f"{np.mean(values):.4f} ± {half_range(values):.4f}" if values else "-")
        lines.append(f"| {name}{' **(best)**' if name == best else ''} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def write(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "ablation.md").write_text(markdown(results))


def picture(args: argparse.Namespace, target: Path) -> None:
    """One validation slice of fold 0: the recipe's cells, the best configuration's and the truth's, side by side."""
    import matplotlib
    import tifffile

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.inference.metrics import cell_regions

    results = json.loads((args.out / "ablation.json").read_text())
    rows = [r for r in results["rows"] if r["base_filters"] == args.base_filters
            and r.get("split_seed") == args.split_seed]
    best, seed = best_config(rows), args.seeds[0]
    labels = tifffile.imread(args.data_dir / "train-labels.tif")
    images = tifffile.imread(args.data_dir / "train-volume.tif")
    val_slice = args.val_slice
    stack = args.work / "val-slice.tif"
    tifffile.imwrite(stack, images[val_slice:val_slice + 1])
    panels = []
    for name in ("recipe", best):  # each at the threshold of its own best thinned V_Rand (this seed)
        threshold = next(r["eval_v_rand_thinned_threshold"] for r in rows if (r["config"], r["seed"]) == (name, seed))
        folder = model_dir(args, RESCORED.get(name, name), seed)
        train_flags, eval_flags = CONFIGS[name]
        unet2d("--exec_mode", "predict", "--data_dir", str(args.data_dir), "--model_dir", str(folder),
               "--predict_input", str(stack), "--cell_labels", "--cell_threshold", str(threshold),
               "--overlays", "0", "--base_filters", str(args.base_filters), *train_flags, *eval_flags,
               log_dir=folder / "picture")
        panels.append((f"{SPELLED_OUT[name]} (P(cell) > {threshold})",
                       tifffile.imread(folder / "predictions" / "val-slice-cells.tif")[0]))
    panels.append(("truth", cell_regions((labels[val_slice] > 0).astype(np.uint8))))
    colours = np.random.default_rng(0).uniform(0.25, 1.0, (65536, 3))
    colours[0] = 0.0
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for axis, (name, cells) in zip(axes, panels, strict=True):
        axis.imshow(colours[cells.astype(np.int64) % len(colours)], interpolation="nearest")
        axis.set_title(f"{name}: {int(cells.max())} cells")
        axis.axis("off")
    figure.suptitle(f"ISBI 2012 training slice {val_slice} (fold 0 validation), seed {seed}, "
                    f"--base_filters {args.base_filters}, {args.steps} steps")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=80)
    print(f"wrote {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=None, help="the ISBI 2012 stacks [../shared or ./data]")
    parser.add_argument("--base_filters", type=int, default=64, help="UNet width [64, the recipe's]")
    parser.add_argument("--seeds", default="123", help="training seeds, a comma list [123]")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--split_seed", type=int, default=123,
                        help="seed of the fold split, the same for every seed [123]; -1: each seed draws its own")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which configurations, a comma list [all]")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "unet2d" / "ablation",
                        help="where the model dirs are kept")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--resume", action="store_true",
                        help="resume each training run from its newest checkpoint in --work (written every 10 "
                             "minutes), for runs longer than one sitting; a finished run is only scored again")
    parser.add_argument("--picture", type=Path, default=None, help="draw the picture from the runs in --work")
    parser.add_argument("--val_slice", type=int, default=19,
                        help="the training slice the picture shows [19: in fold 0's validation set at seed 123]")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.split_seed = None if args.split_seed < 0 else args.split_seed
    args.data_dir = args.data_dir or default_data_dir()
    check_data_dir(args.data_dir)
    if args.picture:
        picture(args, args.picture)
        return 0
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    command = invocation("ablation.py", argv)
    path = args.out / "ablation.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": [], "settings": {}}
    key = section(args.base_filters, args.split_seed)
    results["settings"][key] = record_run(results["settings"].get(key), command, args.steps)
    for seed in args.seeds:
        for name in configs:
            row = run_config(name, seed, args)
            results["rows"] = [r for r in results["rows"] if (r["config"], r["seed"], r["base_filters"],
                                                              r.get("split_seed")) != (name, seed, args.base_filters,
                                                                                       args.split_seed)] + [row]
            print(json.dumps(row), flush=True)
            write(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
