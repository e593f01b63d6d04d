"""Learning curves of one or several runs: losses, Dice and the challenge scores against the step.

    python -m runtime.plot_curves results/bf16_1hpu_fold*/log.json --output curves.png

Each series is named by what it holds (e.g. "Dice of the masks"); with
several log.json files, each is also named after its folder (e.g. the five
folds of a cross-validation side by side). Evaluations are points: a run
that evaluates once (``--evaluate_every 0``) gives one point per score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserInputError, exit_status
from runtime.parse_results import read_log

PANELS = (  # (title, [(log key, line style)])
    ("training loss", [("train_total_loss", "-")]),
    ("evaluation loss", [("eval_total_loss", "o-")]),
    ("Dice", [("eval_dice_score", "o-"), ("eval_mask_dice", "s--")]),
    ("challenge scores", [("eval_v_rand_thinned", "o-"), ("eval_v_info_thinned", "s--"), ("eval_v_rand", "^:"),
                          ("eval_v_info", "v:")]),
)
SERIES_NAMES = {
    "train_total_loss": "training loss (cross-entropy + Dice)",
    "eval_total_loss": "evaluation loss (cross-entropy + Dice)",
    "eval_dice_score": "Dice of the probabilities (the recipe's)",
    "eval_mask_dice": "Dice of the masks",
    "eval_v_rand_thinned": "V_Rand, thinned (organisers')",
    "eval_v_info_thinned": "V_Info, thinned (organisers')",
    "eval_v_rand": "V_Rand of the mask",
    "eval_v_info": "V_Info of the mask",
}


def series_label(run: str, key: str, several_runs: bool) -> str:
    """What a line holds, and whose it is when several runs share the panel."""
    what = SERIES_NAMES[key]
    return f"{run}: {what}" if several_runs else what


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Every logged metric as (steps, values): training windows at their step, evaluations at global_step."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        if record.get("type") != "LOG":
            continue
        step, data = record.get("step"), record.get("data", {})
        if isinstance(step, list) and len(step) == 2:
            at = step[0]
        elif step == [] and "global_step" in data:
            at = data["global_step"]
        else:
            continue
        for key, value in data.items():
            if isinstance(value, (int, float)) and key != "global_step":
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(at))
                values.append(float(value))
    return series


def run_name(path: Path) -> str:
    return path.parent.name if path.name == "log.json" else path.stem


def plot(logs: list[Path], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    from common.files import atomic_output

    runs = {run_name(path): curves(read_log(path)) for path in logs}
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), constrained_layout=True)
    for axis, (title, keys) in zip(axes, PANELS, strict=True):
        for name, series in runs.items():
            for key, style in keys:
                if key in series:
                    steps, values = series[key]
                    axis.plot(steps, values, style, label=series_label(name, key, len(runs) > 1), markersize=3,
                              linewidth=1.2)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    with atomic_output(output) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot learning curves from log.json files into a PNG.")
    parser.add_argument("logs", nargs="+", type=Path, help="log.json files (one per run)")
    parser.add_argument("-o", "--output", type=Path, default=Path("curves.png"), help="PNG file to write")
    args = parser.parse_args(argv)

    def draw() -> None:
        missing = [str(path) for path in args.logs if not path.is_file()]
        if missing:
            raise UserInputError(f"no such log: {', '.join(missing)}")
        print(f"wrote {plot(args.logs, args.output)}")

    return exit_status("plot_curves.py", draw)


if __name__ == "__main__":
    sys.exit(main())
