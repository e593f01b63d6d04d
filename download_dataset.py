#!/usr/bin/env python3
"""Get the ISBI 2012 EM segmentation data, or generate an offline demo dataset.

    python download_dataset.py [--data_dir ./data] [--mirror URL_OR_FOLDER ...]
    python download_dataset.py --synthetic --data_dir ./demo_data [--seed 0]
    python download_dataset.py --synthetic --classes 3 --size 1024 --data_dir ./demo3

Downloads are verified against the published pixel hashes and written
atomically; files already present and valid are not fetched again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserInputError, exit_status
from common.files import ensure_writable_dir
from data_loading.isbi import CHALLENGE_URL, PIXEL_SHA256, SHAPE

PROGRAM = "download_dataset.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=Path("./data"), help="where the three TIFF files go")
    parser.add_argument("--mirror", action="append", default=[], metavar="URL",
                        help="further source tried after the challenge site: an http(s):// base URL, "
                             "a file:// URL or a local folder holding the files (repeatable, tried in order)")
    parser.add_argument("--no_challenge_site", action="store_true",
                        help=f"do not try the challenge's own location ({CHALLENGE_URL})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a server")
    parser.add_argument("--retries", type=int, default=3, help="retries per source on transient errors")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled for each further one")
    parser.add_argument("--synthetic", action="store_true",
                        help="generate an EM-like demo dataset with exact labels instead (no network)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument("--slices", type=int, default=SHAPE[0], help="slices per synthetic stack")
    parser.add_argument("--size", type=int, default=SHAPE[1], help="height and width of synthetic slices")
    parser.add_argument("--classes", type=int, choices=(2, 3), default=2,
                        help="synthetic labels: 2 = the recipe's 0/255 membrane/cell; 3 = class ids "
                             "0 membrane, 1 cell interior, 2 mitochondrion")
    args = parser.parse_args(argv)
    if args.synthetic and (args.slices < 1 or args.size < 32):
        parser.error("--slices must be at least 1 and --size at least 32")
    return args


def generate(args: argparse.Namespace) -> int:
    from data_loading.synthetic_em import generate_volume
    from data_loading.tiff_io import write_stack_atomically

    ensure_writable_dir(args.data_dir, "--data_dir")
    images, labels = generate_volume(args.slices, args.size, args.seed, args.classes)
    test_images, _ = generate_volume(args.slices, args.size, args.seed + 10_000, args.classes)
    for name, stack in (("train-volume.tif", images), ("train-labels.tif", labels), ("test-volume.tif", test_images)):
        try:
            write_stack_atomically(args.data_dir / name, stack)
        except OSError as error:
            raise UserInputError(f"cannot write {args.data_dir / name}: {error.strerror or error}") from None
    print(f"synthetic EM dataset (seed {args.seed}, {args.classes} classes, {args.slices} slices of "
          f"{args.size}x{args.size}) "
          f"written to {args.data_dir}")
    return 0


def download(args: argparse.Namespace) -> int:
    from data_loading.download import fetch_all, make_source

    specs = ([] if args.no_challenge_site else [CHALLENGE_URL]) + args.mirror
    try:
        sources = [make_source(spec, args.timeout, args.retries, args.backoff) for spec in specs]
    except ValueError as error:
        raise UserInputError(str(error)) from None
    ensure_writable_dir(args.data_dir, "--data_dir")
    report = fetch_all(args.data_dir, sources)
    if not report.failed:
        print(f"ISBI 2012 data ready and verified in {args.data_dir}")
        return 0
    print(f"{PROGRAM}: error: could not get {', '.join(report.failed)}", file=sys.stderr)
    for name, attempts in report.failed.items():
        for attempt in attempts:
            print(f"  {name}: {attempt}", file=sys.stderr)
    print(f"To place the files by hand, copy {', '.join(PIXEL_SHA256)} (30 slices of 512x512, uint8) into "
          f"{args.data_dir}, or pass the folder holding them as --mirror; they are checked against the "
          "pixel hashes in data_loading/isbi.py. Without the data, '--synthetic' generates a demo dataset.",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Bad input is one line and status 2 (the project's one table); sources that all failed are status 1."""
    args = parse_args(argv)
    statuses: list[int] = []
    failed = exit_status(PROGRAM, lambda: statuses.append(generate(args) if args.synthetic else download(args)))
    return failed or statuses[0]


if __name__ == "__main__":
    sys.exit(main())
