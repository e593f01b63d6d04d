#!/usr/bin/env python3
"""Training speed by precision on this CPU, natively and as an AVX2-only CPU sees it, and by UNet width.

``precision``: one training step at batch 1 (the full UNet, synthetic data,
unet2d.py's own --benchmark) in fp32, bf16 and auto, three ways:

* native: the CPU as it is;
* cap: ONEDNN_MAX_CPU_ISA=AVX2, oneDNN's kernels limited to AVX2 (fp32 and
  auto only: an explicit bf16 is refused there, see runtime/execution/device.py);
* emulated: the cap plus TF_ENABLE_ONEDNN_OPTS=0, where bf16 runs on
  TensorFlow's own kernels, as on a CPU without AVX-512 (fp32 beside it).

``widths``: parameters and training images/s at --base_filters 8, 16, 32
and 64 in auto precision. Writes precision.{json,md} or widths.{json,md}
into --out, each with the machine it ran on.

    python -m benchmarks.precision precision     # about 12 minutes on 2 cores with AVX512_BF16
    python -m benchmarks.precision precision --settings cap --rounds 2 --steps 8   # auto against fp32, A/B
    python -m benchmarks.precision widths        # about 5 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from benchmarks.benchmark import machine_record, run_config

ROOT = Path(__file__).resolve().parents[1]

CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTINGS = {  # name: (extra environment, precisions timed)
    "native": ({}, ("fp32", "bf16", "auto")),
    "cap": (CAP, ("fp32", "auto")),
    "emulated": ({**CAP, "TF_ENABLE_ONEDNN_OPTS": "0"}, ("fp32", "bf16")),
}
WIDTHS = (8, 16, 32, 64)


def parameter_count(base_filters: int) -> int:
    from model.unet import build_unet
    return int(build_unet(1, base_filters=base_filters).count_params())


def measure_precision(steps: int, warmup: int, batch_size: int, settings: list[str], rounds: int) -> list[dict]:
    """Each setting's precisions in turn, ``rounds`` times over (A/B/A/B), so that drift hits them alike."""
    rows = []
    for round_ in range(rounds):
        for setting in settings:
            env, dtypes = SETTINGS[setting]
            for dtype in dtypes:
                row = run_config("train", dtype, batch_size, steps, warmup, [], env)
                rows.append({"setting": setting, "round": round_, "environment": env, **row})
                print(f"{setting:9s} {dtype:5s} {row['images_per_s']:.3f} images/s  {row['precision']}", flush=True)
    return rows


def measure_widths(steps: int, warmup: int, batch_size: int, settings: list[str], rounds: int) -> list[dict]:
    rows = []
    for width in WIDTHS:
        row = run_config("train", "auto", batch_size, steps, warmup, ["--base_filters", str(width)])
        rows.append({"base_filters": width, "parameters": parameter_count(width), **row})
        print(f"base_filters {width:3d}: {rows[-1]['parameters']:,} parameters, {row['images_per_s']:.3f} images/s",
              flush=True)
    return rows


def precision_table(rows: list[dict]) -> list[str]:
    """Mean step time per setting and precision over the rounds, against fp32 in the same setting."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["dtype"]), []).append(r)
    mean = {key: sum(r["latency_ms_mean"] for r in runs) / len(runs) / 1000 for key, runs in groups.items()}
    lines = ["| setting | --dtype | ran as | s per step (each round) | mean | vs fp32 (same setting) |",
             "|---|---|---|---|---:|---:|"]
    for (setting, dtype), runs in groups.items():
        each = ", ".join(f"{r['latency_ms_mean'] / 1000:.2f}" for r in runs)
        lines.append(f"| {setting} | {dtype} | {runs[0]['precision']} | {each} | {mean[setting, dtype]:.2f} | "
                     f"{mean[setting, dtype] / mean[setting, 'fp32']:.2f}x |")
    return lines


def widths_table(rows: list[dict]) -> list[str]:
    lines = ["| --base_filters | parameters | precision | images/s | s per step |", "|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['base_filters']} | {r['parameters']:,} | {r['precision']} | {r['images_per_s']:.3f} | "
                     f"{r['latency_ms_mean'] / 1000:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("precision", "widths"))
    parser.add_argument("--steps", type=int, default=5, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS),
                        help="precision: which settings to run")
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, in turn")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    measure, table = ((measure_precision, precision_table) if args.what == "precision"
                      else (measure_widths, widths_table))
    rows = measure(args.steps, args.warmup, args.batch_size, args.settings, args.rounds)
    machine = machine_record()
    args.out.mkdir(parents=True, exist_ok=True)
    command = f"python -m benchmarks.precision {' '.join(sys.argv[1:])}"
    (args.out / f"{args.what}.json").write_text(json.dumps(
        {"date": date.today().isoformat(), "machine": machine, "command": command, "results": rows}, indent=2))
    header = [f"Measured {date.today().isoformat()} on {machine['cpu']} ({machine['cpus']} cores; ISA flags: "
              f"{machine['isa']}), TensorFlow {machine['tensorflow']}, batch {args.batch_size}, "
              f"{args.steps} steps of which {args.warmup} warm-up, by `{command}`.", ""]
    (args.out / f"{args.what}.md").write_text("\n".join(header + table(rows)) + "\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
