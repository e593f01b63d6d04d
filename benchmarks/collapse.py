#!/usr/bin/env python3
"""How often a configuration ends as a constant predictor, seed by seed, against the recipe.

    python -m benchmarks.collapse --data_dir $DATA --fold 2 --base_filters 8 --seeds 1-10 --deterministic
    python -m benchmarks.collapse --data_dir $DATA --configs combination --seeds 11 --base_filters 16

Each run trains with unet2d.py as a user would (batch 2, ``--steps`` steps, ``--dtype auto``) on a fold and
is scored by its own final evaluation. A run counts as collapsed when it says so (runtime/loop/collapse.py:
its last training batches predicted as one class, or its evaluation's masks one class). Rows accumulate in
``--out``/collapse.json and collapse.md, rewritten after every run; with ``--resume`` the runs already there
are not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.ablation import UNIFORM_BORDER_WEIGHTS
from benchmarks.input_modes import machine_name, tensorflow_version, unet2d
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.loop.collapse import ONE_CLASS
from runtime.parse_results import final_eval

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"recipe": [], "combination": UNIFORM_BORDER_WEIGHTS,
           "combination-he": [*UNIFORM_BORDER_WEIGHTS, "--weight_init", "he"], "recipe-he": ["--weight_init", "he"]}
SCORES = ("eval_dice_score", "eval_v_rand_thinned", "eval_v_rand_thinned_threshold", "eval_mask_dice")
FINER = ("eval_v_rand_thinned_finer", "eval_v_rand_thinned_finer_threshold")


def seeds_of(text: str) -> list[int]:
    """'1-10' or '1,5,7'."""
    if "-" in text:
        first, last = (int(part) for part in text.split("-"))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(",")]


def one_class_until(shares: list[tuple[int, float]]) -> int | None:
    """The last logged step whose window was predicted as one class (0: none was); None if not logged."""
    if not shares:
        return None
    return max((step for step, share in shares if share >= ONE_CLASS), default=0)


def command(row: dict, args: argparse.Namespace, exec_mode: str) -> tuple[Path, list[str]]:
    """A row's model dir and the unet2d.py flags that train (or evaluate) it."""
    # --extra is part of the folder's name: a fix under test must never resume (or overwrite) the run without it.
    extra = "".join(f"-{part.lstrip('-')}" for part in row["extra"].split())
    deterministic = "-det" if row["deterministic"] else ""
    folder = args.work / f"{row['config']}{extra}-f{row['fold']}-w{row['base_filters']}-s{row['seed']}{deterministic}"
    flags = ["--data_dir", str(args.data_dir), "--exec_mode", exec_mode, "--fold", str(row["fold"]),
             "--batch_size", "2", "--max_steps", str(row["steps"]), "--log_every", "10", "--seed", str(row["seed"]),
             "--base_filters", str(row["base_filters"]), "--model_dir", str(folder), "--overlays", "0",
             *(["--deterministic"] if row["deterministic"] else []), *CONFIGS[row["config"]], *row["extra"].split()]
    return folder, flags


def run(name: str, seed: int, args: argparse.Namespace) -> dict:
    row = {"config": name, "seed": seed, "fold": args.fold, "base_filters": args.base_filters, "steps": args.steps,
           "deterministic": args.deterministic, "extra": args.extra}
    folder, flags = command(row, args, "train_and_evaluate")
    started = time.perf_counter()
    records = unet2d(*flags, log_dir=folder)
    losses = [(r["step"][0], r["data"]["train_total_loss"]) for r in records
              if isinstance(r.get("step"), list) and "train_total_loss" in r.get("data", {})]
    shares = [(r["step"][0], r["data"]["train_majority_share"]) for r in records
              if isinstance(r.get("step"), list) and "train_majority_share" in r.get("data", {})]
    warnings = [r["data"]["message"] for r in records if r.get("step") == "WARNING"]
    scores = final_eval(records) or {}
    return {**row, "minutes": round((time.perf_counter() - started) / 60, 2),
            "loss_first": losses[0][1] if losses else None,
            "loss_at_100": next((loss for step, loss in losses if step >= 100), None),
            "loss_last": losses[-1][1] if losses else None,
            "one_class_until": one_class_until(shares), "majority_shares": shares,
            "collapsed": bool(warnings), "warnings": warnings,
            **{key: scores[key] for key in SCORES if key in scores}}


def rescore(row: dict, args: argparse.Namespace) -> dict:
    """The row's final model scored again with --finer_sweep (thresholds 0.95, 0.98, 0.99 beyond the organisers'
    0.9): whether a configuration's lower V_Rand is a worse segmentation or the same one less sure of itself."""
    folder, flags = command(row, args, "evaluate")
    scores = final_eval(unet2d(*flags, "--finer_sweep", log_dir=folder.with_name(folder.name + "-finer"))) or {}
    return {**row, **{key: scores[key] for key in FINER if key in scores}}


def table(rows: list[dict], args: argparse.Namespace) -> list[str]:
    finer = finer_swept(rows)
    keys = KEYS if finer else KEYS[:2]
    lines = ["# Collapsed runs, seed by seed", "", f"- date: {date.today().isoformat()}",
             f"- machine: {machine_name()}, TensorFlow {tensorflow_version()}",
             f"- command: `python -m benchmarks.collapse {args.command_line}`", "",
             "| config | seed | loss step 1 | step 100 | last | one class until step | collapsed | Dice | "
             f"thinned V_Rand (threshold) | {'the same, to 0.99 (threshold) | ' if finer else ''}minutes |",
             f"|---|---:|---:|---:|---:|---:|---|---:|---:|{'---:|' if finer else ''}---:|"]
    for r in rows:
        lines.append(f"| {label(r)} | {r['seed']} | "
                     f"{r['loss_first']:.3f} | {r['loss_at_100']:.3f} | {r['loss_last']:.3f} | "
                     f"{'-' if r.get('one_class_until') is None else r['one_class_until']} | "
                     f"{'**yes**' if r['collapsed'] else 'no'} | {r.get('eval_dice_score', float('nan')):.4f} | "
                     f"{scored(r, 'eval_v_rand_thinned')} | "
                     f"{scored(r, 'eval_v_rand_thinned_finer') + ' | ' if finer else ''}{r['minutes']} |")
    lines += ["", "| config | runs | collapsed | with a one-class phase (of the runs that logged it) | Dice: mean ± "
              "standard deviation (half range) | thinned V_Rand: mean ± standard deviation (half range) |"
              f"{' the same, to 0.99 |' if finer else ''}", "|---|---:|---:|---:|" + "---:|" * len(keys)]
    for name in sorted({label(r) for r in rows}):
        group = [r for r in rows if label(r) == name]
        logged = [r["one_class_until"] for r in group if r.get("one_class_until") is not None]
        spreads = []
        for key in keys:
            scores = [r[key] for r in group if key in r]
            if len(scores) < len(group):
                spreads.append("-")
                continue
            half_range = (max(scores) - min(scores)) / 2
            spreads.append(f"{np.mean(scores):.4f} ± {np.std(scores, ddof=1):.4f} ({half_range:.4f})"
                           if len(scores) > 1 else f"{scores[0]:.4f} (one run)")
        lines.append(f"| {name} | {len(group)} | {sum(r['collapsed'] for r in group)} | "
                     f"{sum(step > 0 for step in logged)} of {len(logged)} | {' | '.join(spreads)} |")
    return lines + phases(rows) + paired(rows)


PHASE_STEPS = (50, 100, 150, 200, 250, 300)


def phases(rows: list[dict]) -> list[str]:
    """How many runs of each configuration were still in their one-class phase at a given step.

    A collapse is a run whose training ended inside that phase, so this counts, for every shorter run, how often
    the configuration would have collapsed: the risk a rare 400-step collapse hides. Read off each run's last
    one-class window, so a phase that ended and came back counts as lasting to its last window.
    """
    lines = ["", "Runs still in their one-class phase at a step (the last logged window at 99.5 % or more at or "
             "after it), of the runs that logged the majority share:", "",
             "| config | logged | " + " | ".join(f"step {step}" for step in PHASE_STEPS) + " | longest |",
             "|---|---:|" + "---:|" * (len(PHASE_STEPS) + 1)]
    for name in sorted({label(r) for r in rows}):
        logged = [r["one_class_until"] for r in rows if label(r) == name and r.get("one_class_until") is not None]
        if logged:
            lines.append(f"| {name} | {len(logged)} | "
                         + " | ".join(str(sum(until >= step for until in logged)) for step in PHASE_STEPS)
                         + f" | {max(logged)} |")
    return lines


KEYS = ("eval_dice_score", "eval_v_rand_thinned", "eval_v_rand_thinned_finer")  # the scores the summaries compare


def finer_swept(rows: list[dict]) -> bool:
    """Whether any row was rescored with --finer_sweep: the tables show that column only then."""
    return any(FINER[0] in r for r in rows)


def scored(row: dict, key: str) -> str:
    """A V_Rand and its threshold, or '-' where the row was not scored so."""
    return f"{row[key]:.4f} ({row[key + '_threshold']:.2f})" if key in row else "-"


def label(row: dict) -> str:
    """A configuration as the tables name it: its name, then the flags --extra added."""
    return " ".join(filter(None, (row["config"], row["extra"])))


# Each configuration against another of the same seed. A seed draws the fold's validation slices as well as the
# start and the batches (the recipe's --seed sets the split), so most of the seed-to-seed spread of a score is
# how hard that seed's validation slices are, shared by every configuration run with it: the fair test of a
# configuration is its difference from another within a seed, and whether the mean difference stands clear of
# that difference's own spread (a 95 % interval of Student's t over the seeds).
PAIRS = (("combination", "recipe"), ("combination-he", "recipe"), ("combination --lr_warmup_steps 100", "recipe"),
         ("recipe-he", "recipe"), ("combination-he", "combination"),
         ("combination --lr_warmup_steps 100", "combination"))


def paired(rows: list[dict]) -> list[str]:
    from scipy import stats  # scikit-image's dependency

    finer = finer_swept(rows)
    keys = KEYS if finer else KEYS[:2]
    lines = ["", "Against another configuration of the same seed (the seeds both have): how many seeds it wins, "
             "the mean difference with its 95 % interval, and the smallest and largest difference:", "",
             "| config | against | seeds | Dice: wins, mean difference [95 % interval] (min, max) | thinned V_Rand: "
             f"wins, mean difference [95 % interval] (min, max) |{' the same, to 0.99 |' if finer else ''}",
             "|---|---|---:|" + "---|" * len(keys)]
    for name, baseline in PAIRS:
        theirs = {r["seed"]: r for r in rows if label(r) == baseline}
        pairs = [(r, theirs[r["seed"]]) for r in rows if label(r) == name and r["seed"] in theirs]
        if not pairs:
            continue
        cells = []
        for key in keys:
            if not all(key in mine and key in other for mine, other in pairs):
                cells.append("-")
                continue
            gains = np.array([mine[key] - other[key] for mine, other in pairs])
            interval = "[one seed: no interval]"
            if len(gains) > 1:
                half = stats.t.ppf(0.975, len(gains) - 1) * np.std(gains, ddof=1) / np.sqrt(len(gains))
                interval = f"[{gains.mean() - half:+.4f}, {gains.mean() + half:+.4f}]"
            cells.append(f"{sum(gains > 0)} of {len(gains)}, {gains.mean():+.4f} {interval} "
                         f"({gains.min():+.4f}, {gains.max():+.4f})")
        lines.append(f"| {name} | {baseline} | {len(pairs)} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="the ISBI 2012 stacks [../shared or ./data]")
    parser.add_argument("--configs", default="combination,recipe", help="a comma list of: " + ", ".join(CONFIGS))
    parser.add_argument("--seeds", default="1-10", help="'1-10' or '1,5,7'")
    parser.add_argument("--fold", type=int, default=2)
    parser.add_argument("--base_filters", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--extra", default="", help="more unet2d.py flags for every run (a fix under test)")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "unet2d" / "collapse")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="collapse", help="the records' file name in --out")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out; run the others")
    parser.add_argument("--rescore", action="store_true",
                        help="score the rows in --out that have no finer sweep yet again, with --finer_sweep")
    args = parser.parse_args()
    args.command_line = " ".join(sys.argv[1:])
    args.data_dir = args.data_dir or default_data_dir()
    check_data_dir(args.data_dir)
    path = args.out / f"{args.name}.json"
    rows = json.loads(path.read_text())["rows"] if (args.resume or args.rescore) and path.is_file() else []
    if args.rescore:
        for index, row in enumerate(rows):
            if FINER[0] not in row and command(row, args, "evaluate")[0].is_dir():
                rows[index] = rescore(row, args)
                print(json.dumps({k: rows[index].get(k) for k in ("config", "seed", "extra", *FINER)}), flush=True)
                save(rows, path, args)
        return
    for seed in seeds_of(args.seeds):
        for name in args.configs.split(","):
            if any(r["config"] == name and r["seed"] == seed and r["extra"] == args.extra for r in rows):
                continue
            rows.append(run(name, seed, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "warnings"}), flush=True)
            save(rows, path, args)


def save(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text("\n".join(table(rows, args)) + "\n")


if __name__ == "__main__":
    main()
