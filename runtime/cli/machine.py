"""``python -m runtime.cli.machine``: this machine's device and what --dtype auto picks on it, in one line.

``--dtype_only`` prints just ``bf16`` or ``fp32``: what train_and_evaluate.sh's
``auto`` runs as, so its run names say what ran. TensorFlow's start-up lines
are kept out as in a training run.
"""

from __future__ import annotations

import argparse
import os

from common.quiet_start import asked_for_tensorflow_lines, tensorflow_start_quietly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.cli.machine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype_only", action="store_true", help="print only the dtype --dtype auto runs as")
    parser.add_argument("--no_hpu", action="store_true", help="leave a Gaudi card out, as unet2d.py --no_hpu")
    args = parser.parse_args(argv)
    with tensorflow_start_quietly(not asked_for_tensorflow_lines(None)):
        from runtime.execution.device import choose_precision, describe_cpu, select_device

        device = select_device(args.no_hpu)
    precision = choose_precision("auto", device)
    if args.dtype_only:
        print(precision.dtype)
        return 0
    what = device.describe()
    if device.kind == "CPU":
        cpu = describe_cpu()
        cap = f", ONEDNN_MAX_CPU_ISA={cpu['onednn_max_cpu_isa']}" if cpu["onednn_max_cpu_isa"] != "none" else ""
        what = f"CPU {cpu['cpu']} ({os.cpu_count()} cores; {cpu['isa']}{cap})"
    print(f"{what}: --dtype auto runs {precision.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
