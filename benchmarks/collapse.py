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


def run(name: str, seed: int, args: argparse.Namespace) -> dict:
    folder = args.work / f"{name}-f{args.fold}-w{args.base_filters}-s{seed}{'-det' if args.deterministic else ''}"
    flags = ["--data_dir", str(args.data_dir), "--exec_mode", "train_and_evaluate", "--fold", str(args.fold),
             "--batch_size", "2", "--max_steps", str(args.steps), "--log_every", "10", "--seed", str(seed),
             "--base_filters", str(args.base_filters), "--model_dir", str(folder), "--overlays", "0",
             *(["--deterministic"] if args.deterministic else []), *CONFIGS[name], *args.extra.split()]
    started = time.perf_counter()
    records = unet2d(*flags, log_dir=folder)
    losses = [(r["step"][0], r["data"]["train_total_loss"]) for r in records
              if isinstance(r.get("step"), list) and "train_total_loss" in r.get("data", {})]
    shares = [(r["step"][0], r["data"]["train_majority_share"]) for r in records
              if isinstance(r.get("step"), list) and "train_majority_share" in r.get("data", {})]
    warnings = [r["data"]["message"] for r in records if r.get("step") == "WARNING"]
    scores = final_eval(records) or {}
    return {"config": name, "seed": seed, "fold": args.fold, "base_filters": args.base_filters, "steps": args.steps,
            "deterministic": args.deterministic, "extra": args.extra,
            "minutes": round((time.perf_counter() - started) / 60, 2),
            "loss_first": losses[0][1] if losses else None,
            "loss_at_100": next((loss for step, loss in losses if step >= 100), None),
            "loss_last": losses[-1][1] if losses else None,
            "one_class_until": one_class_until(shares),
            "collapsed": bool(warnings), "warnings": warnings,
            **{key: scores[key] for key in SCORES if key in scores}}


def table(rows: list[dict], args: argparse.Namespace) -> list[str]:
    lines = ["# Collapsed runs, seed by seed", "", f"- date: {date.today().isoformat()}",
             f"- machine: {machine_name()}, TensorFlow {tensorflow_version()}",
             f"- command: `python -m benchmarks.collapse {args.command_line}`", "",
             "| config | seed | loss step 1 | step 100 | last | one class until step | collapsed | Dice | "
             "thinned V_Rand (threshold) | minutes |", "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']}{' ' + r['extra'] if r['extra'] else ''} | {r['seed']} | "
                     f"{r['loss_first']:.3f} | {r['loss_at_100']:.3f} | {r['loss_last']:.3f} | "
                     f"{'-' if r.get('one_class_until') is None else r['one_class_until']} | "
                     f"{'**yes**' if r['collapsed'] else 'no'} | {r.get('eval_dice_score', float('nan')):.4f} | "
                     f"{r.get('eval_v_rand_thinned', float('nan')):.4f} "
                     f"({r.get('eval_v_rand_thinned_threshold', float('nan')):.2f}) | {r['minutes']} |")
    lines += ["", "| config | runs | collapsed | with a one-class phase (of the runs that logged it) | mean Dice ± "
              "half range | mean thinned V_Rand ± half range |", "|---|---:|---:|---:|---:|---:|"]
    for name in sorted({(r["config"], r["extra"]) for r in rows}):
        group = [r for r in rows if (r["config"], r["extra"]) == name]
        dice = [r.get("eval_dice_score", np.nan) for r in group]
        v_rand = [r.get("eval_v_rand_thinned", np.nan) for r in group]
        logged = [r["one_class_until"] for r in group if r.get("one_class_until") is not None]
        lines.append(f"| {' '.join(filter(None, name))} | {len(group)} | {sum(r['collapsed'] for r in group)} | "
                     f"{sum(step > 0 for step in logged)} of {len(logged)} | "
                     f"{np.mean(dice):.4f} ± {(max(dice) - min(dice)) / 2:.4f} | "
                     f"{np.mean(v_rand):.4f} ± {(max(v_rand) - min(v_rand)) / 2:.4f} |")
    return lines + paired(rows)


# Each configuration against another of the same seed: the seed-to-seed spread of a score is larger than a
# configuration's effect on it, so the fair test is the difference within a seed.
PAIRS = (("combination", "recipe"), ("combination-he", "recipe"), ("recipe-he", "recipe"),
         ("combination-he", "combination"))


def paired(rows: list[dict]) -> list[str]:
    lines = ["", "Against another configuration of the same seed (the seeds both have):", "",
             "| config | against | seeds | Dice: wins, mean difference (min, max) | thinned V_Rand: wins, mean "
             "difference (min, max) |", "|---|---|---:|---|---|"]
    for name, baseline in PAIRS:
        theirs = {r["seed"]: r for r in rows if r["config"] == baseline and not r["extra"]}
        pairs = [(r, theirs[r["seed"]]) for r in rows if r["config"] == name and not r["extra"]
                 and r["seed"] in theirs]
        if not pairs:
            continue
        cells = []
        for key in ("eval_dice_score", "eval_v_rand_thinned"):
            gains = [mine.get(key, np.nan) - other.get(key, np.nan) for mine, other in pairs]
            cells.append(f"{sum(gain > 0 for gain in gains)} of {len(gains)}, {np.mean(gains):+.4f} "
                         f"({min(gains):+.4f}, {max(gains):+.4f})")
        lines.append(f"| {name} | {baseline} | {len(pairs)} | {cells[0]} | {cells[1]} |")
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
    args = parser.parse_args()
    args.command_line = " ".join(sys.argv[1:])
    args.data_dir = args.data_dir or default_data_dir()
    check_data_dir(args.data_dir)
    path = args.out / f"{args.name}.json"
    rows = json.loads(path.read_text())["rows"] if args.resume and path.is_file() else []
    for seed in seeds_of(args.seeds):
        for name in args.configs.split(","):
            if any(r["config"] == name and r["seed"] == seed and r["extra"] == args.extra for r in rows):
                continue
            rows.append(run(name, seed, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "warnings"}), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
            (args.out / f"{args.name}.md").write_text("\n".join(table(rows, args)) + "\n")


if __name__ == "__main__":
    main()
