"""Reading runs' results back from their log.json files, and averaging a 5-fold cross-validation.

    python -m runtime.parse_results --model_dir <results_dir> --env bf16_1hpu
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserInputError, exit_status

# Their home is the log format's module; tests and benchmarks import them from here too.
from runtime.reporting.dllog import final_eval, merged_data, read_log  # noqa: F401


def fold_logs(results_dir: Path, env: str, folds: list[int] | None = None) -> list[Path]:
    """The log.json of each fold run of ``env`` (e.g. bf16_1hpu) under a 5-fold results folder.

    ``folds`` keeps only those fold numbers, so a re-run of some folds (FOLDS= of
    train_and_evaluate.sh) is not averaged with older runs of the others.
    With --log_all_workers the logs sit in worker_N folders; worker 0's stands for the run.
    """
    wanted = None if folds is None else {f"{env}_fold{k}" for k in folds}
    logs = []
    for run_dir in sorted(Path(results_dir).glob(f"{env}_fold*")):
        if not run_dir.is_dir() or (wanted is not None and run_dir.name not in wanted):
            continue
        for candidate in (run_dir / "log.json", run_dir / "worker_0" / "log.json"):
            if candidate.is_file():
                logs.append(candidate)
                break
    return logs


AVERAGED = ("eval_dice_score", "eval_ce_loss", "eval_v_rand", "eval_v_info", "eval_mask_dice",
            "eval_v_rand_thinned", "eval_v_info_thinned")


def average_folds(results_dir: Path, env: str, folds: list[int] | None = None) -> dict[str, float]:
    """Mean evaluation results over the folds' JSON logs; corrupt or unfinished ones are named."""
    logs = fold_logs(results_dir, env, folds)
    if not logs:
        which = "*" if folds is None else "{" + ",".join(map(str, folds)) + "}"
        raise UserInputError(f"no log.json of a {env}_fold{which} run in {results_dir}")
    results = []
    for path in logs:
        try:
            result = final_eval(read_log(path))
        except UserInputError as error:
            print(f"skipping {path}: {error}", file=sys.stderr)
            continue
        if result is None:
            print(f"skipping {path}: it holds no evaluation result (did the run finish?)", file=sys.stderr)
            continue
        results.append(result)
        shown = "  ".join(f"{key} {float(result[key]):.4f}" for key in AVERAGED if key in result)
        print(f"{path.parent.name}: {shown}")
    if not results:
        raise UserInputError(f"none of the {len(logs)} {env} logs in {results_dir} holds an evaluation result")
    summary: dict[str, float] = {"folds": len(results)}
    for key in AVERAGED:  # the challenge scores only if every fold has them (runs of older versions do not)
        if all(key in result for result in results):
            summary[key] = sum(float(result[key]) for result in results) / len(results)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Average the evaluation results of a 5-fold cross-validation.")
    parser.add_argument("--model_dir", required=True, type=Path,
                        help="the results folder of train_and_evaluate.sh")
    parser.add_argument("--env", required=True,
                        help="which runs to average: <precision>_<workers>hpu, e.g. bf16_1hpu or fp32_8hpu")
    parser.add_argument("--folds", type=int, nargs="+", choices=range(5), default=None, metavar="K",
                        help="average only these folds (0-4) [every fold run found]")
    args = parser.parse_args(argv)
    return exit_status("parse_results.py", lambda: report(average_folds(args.model_dir, args.env, args.folds)))


def report(summary: dict[str, float]) -> None:
    print(f"Evaluation dice score: {summary['eval_dice_score']} (average of {summary['folds']} folds)")
    print(f"Evaluation cross-entropy loss: {summary['eval_ce_loss']}")
    for key, name in (("eval_v_rand", "V_Rand of the mask"), ("eval_v_info", "V_Info of the mask"),
                      ("eval_v_rand_thinned", "V_Rand (ISBI 2012 challenge score: thinned, best threshold)"),
                      ("eval_v_info_thinned", "V_Info (ISBI 2012 challenge score: thinned, best threshold)")):
        if key in summary:
            print(f"Evaluation {name}: {summary[key]}")


if __name__ == "__main__":
    sys.exit(main())
