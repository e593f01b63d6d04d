#!/usr/bin/env python3
"""Where each ablation model's cells are best: the organisers' threshold sweep against a finer one above 0.9.

    python -m benchmarks.threshold_sweep --data_dir $DATA --base_filters 64 --seeds 123
    python -m benchmarks.threshold_sweep --data_dir $DATA --base_filters 8 --seeds 123,1,2

The organisers score a probability map at P(cell) > 0.0, 0.1, ..., 0.9 and
keep the best (runtime/inference/thinned.py). A model whose best threshold is
the last one, 0.9, may be better still above it: its faint membranes are
cell-like with P(cell) > 0.9, which says how sure it is, not how well it
separates the cells. This rescoring tells the two apart for the models
benchmarks/ablation.py trained (in --work): each is exported with
unet2d.py --exec_mode export, predicts its own validation slices (its
input mode's strategy, --tta where the configuration has it), and is scored
over the organisers' thresholds and over 0.95, 0.98 and 0.99 as well. The
organisers' best here must equal the one its training run logged (checked).
Rows accumulate in --out as threshold_sweep.json and threshold_sweep.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks import ablation
from benchmarks.input_modes import machine_name, tensorflow_version, unet2d
from benchmarks.input_pipeline import check_data_dir, default_data_dir
from runtime.inference.thinned import FINER_THRESHOLDS, THRESHOLDS, best_of_means, slice_sweep
from runtime.parse_results import read_log

ROOT = Path(__file__).resolve().parents[1]

ABOVE = FINER_THRESHOLDS[len(THRESHOLDS):]  # where the organisers' sweep stops, as unet2d.py --finer_sweep


def validation_slices(model_dir: Path) -> list[int]:
    """The validation slices the model's training run held out, from its log's DATA record."""
    for record in read_log(model_dir / "log.json"):
        if record.get("step") == "DATA" and "val_slices" in record.get("data", {}):
            return [int(i) for i in record["data"]["val_slices"]]
    raise SystemExit(f"no DATA record with val_slices in {model_dir / 'log.json'}: train it with ablation.py first")


def summary(name: str, means: np.ndarray) -> dict:
    """A configuration's scores: best over the organisers' thresholds, best over the finer sweep, V_Rand at each."""
    best = best_of_means(means, FINER_THRESHOLDS)
    row = {"config": name}
    for label, suffix in (("organisers", ""), ("finer", "_finer")):
        for score in ("v_rand", "v_info"):
            row[f"{label}_{score}"] = best[f"eval_{score}_thinned{suffix}"]
            row[f"{label}_{score}_threshold"] = best[f"eval_{score}_thinned{suffix}_threshold"]
    row["v_rand_at"] = {str(t): float(means[FINER_THRESHOLDS.index(t), 0]) for t in (0.9, *ABOVE)}
    return row


def rescore(name: str, seed: int, args: argparse.Namespace) -> dict:
    """Export one trained configuration, predict its validation slices, and sweep the thresholds."""
    import tifffile

    from runtime.inference.export import load_probability_fn
    from runtime.inference.strategies import predict_probabilities
    from runtime.inference.thinned import cell_probability

    train_flags, eval_flags = ablation.CONFIGS[name]
    folder = ablation.model_dir(args, ablation.RESCORED.get(name, name), seed)
    export = folder / "export"
    unet2d("--exec_mode", "export", "--model_dir", str(folder), "--export_dir", str(export),
           "--base_filters", str(args.base_filters), log_dir=folder / "export-log")
    probability_fn, _ = load_probability_fn(export)
    indices = validation_slices(folder)
    images = tifffile.imread(args.data_dir / "train-volume.tif")[indices]
    truths = (tifffile.imread(args.data_dir / "train-labels.tif")[indices] > 0).astype(np.uint8)
    strategy = "tile" if "tile" in train_flags else "resize"
    maps = predict_probabilities(probability_fn, list(images), 2, strategy, "--tta" in eval_flags)
    means = np.mean([slice_sweep(truth, cell_probability(m), FINER_THRESHOLDS)
                     for truth, m in zip(truths, maps, strict=True)], axis=0)
    return {**summary(name, means), "seed": seed, "base_filters": args.base_filters,
            "split_seed": args.split_seed, "val_slices": indices}


def key(row: dict) -> tuple:
    return row["config"], row["seed"], row["base_filters"], row.get("split_seed")


def logged_v_rand(path: Path, row: dict) -> float | None:
    """The thinned V_Rand the configuration's own run logged, as ablation.json keeps it."""
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    return next((r["eval_v_rand_thinned"] for r in rows if key(r) == key(row)), None)


def markdown(results: dict) -> str:
    configs = list(ablation.CONFIGS)
    rows = sorted(results["rows"], key=lambda r: (r["base_filters"], r["seed"], configs.index(r["config"])))
    lines = ["# The organisers' threshold sweep against a finer one", "",
             "Written by `benchmarks/threshold_sweep.py`: models trained by `benchmarks/ablation.py` (ISBI 2012 "
             "fold 0, batch 2), each scored on its validation slices over the organisers' thresholds of P(cell) "
             f"(0.0-0.9) and over {', '.join(map(str, ABOVE))} as well. Thinned V_Rand / V_Info, mean over the "
             "slices, the best threshold in brackets.", "",
             *[line for command in results["commands"] for line in (f"`{command}`", "")],
             f"Last measured {results['measured']}, TensorFlow {results['tensorflow']}.",
             "", "| configuration | width | seed | V_Rand, organisers' | V_Info, organisers' | V_Rand, finer "
             "| V_Info, finer | V_Rand at 0.9 / 0.95 / 0.98 / 0.99 |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        at = " / ".join(f"{row['v_rand_at'][str(t)]:.4f}" for t in (0.9, *ABOVE))
        lines.append(f"| {row['config']} | {row['base_filters']} | {row['seed']} | "
                     + " | ".join(f"{row[f'{label}_{score}']:.4f} ({row[f'{label}_{score}_threshold']})"
                                  for label in ("organisers", "finer") for score in ("v_rand", "v_info"))
                     + f" | {at} |")
    for width in sorted({r["base_filters"] for r in rows}):
        paired = ablation.paired([r for r in rows if r["base_filters"] == width],
                                 {"organisers_v_rand": "V_Rand, organisers'", "finer_v_rand": "V_Rand, finer"})
        if paired:
            lines += ["", f"Width {width}, minus the recipe of the same seed:", *paired[2:]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=None, help="the ISBI 2012 stacks [../shared or ./data]")
    parser.add_argument("--base_filters", type=int, default=64)
    parser.add_argument("--seeds", default="123", help="the training seeds of the models, a comma list [123]")
    parser.add_argument("--split_seed", type=int, default=123, help="as the models were trained with [123]")
    parser.add_argument("--configs", default="recipe,+ tile,+ elastic,tile + elastic + TTA",
                        help="which trained configurations, a comma list")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "unet2d" / "ablation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--ablation_json", type=Path, default=ROOT / "benchmarks" / "results" / "ablation.json",
                        help="the scores the models' own runs logged, to check these against")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.data_dir = args.data_dir or default_data_dir()
    check_data_dir(args.data_dir)
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in ablation.CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(ablation.CONFIGS)}")
    path = args.out / "threshold_sweep.json"
    results = json.loads(path.read_text()) if path.is_file() else {"commands": [], "rows": []}
    command = ablation.invocation("threshold_sweep.py", argv)
    results["commands"] = list(dict.fromkeys([*results["commands"], command]))
    results.update(tensorflow=tensorflow_version(), measured=f"{date.today().isoformat()} on {machine_name()}")
    for seed in args.seeds:
        for name in configs:
            row = rescore(name, seed, args)
            logged = logged_v_rand(args.ablation_json, row)
            if logged is not None and abs(logged - row["organisers_v_rand"]) > 1e-3:
                raise SystemExit(f"{name}, seed {seed}: the organisers' V_Rand here ({row['organisers_v_rand']:.4f}) "
                                 f"is not the one its run logged ({logged:.4f}): not the same model or slices")
            results["rows"] = [r for r in results["rows"] if key(r) != key(row)] + [row]
            print(json.dumps(row), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
            (args.out / "threshold_sweep.md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
