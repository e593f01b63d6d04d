#!/usr/bin/env python3
"""Write a volume as an OME-Zarr image, slice by slice, in bounded memory.

    python convert_volume.py train-volume.tif train-volume.ome.zarr
    python convert_volume.py sample_A.hdf:/volumes/raw sample_A.ome.zarr --chunks 1 1024 1024
    python convert_volume.py slices/ stack.ome.zarr

INPUT is anything the recipe reads (a multipage TIFF, a folder of PNG/TIFF
slices, an HDF5 dataset, a Zarr array); OUTPUT is a new OME-Zarr image: NGFF
0.5 (Zarr format 3) on the current stack, NGFF 0.4 (Zarr format 2) on the TF
2.15 stack or with ``--ngff 0.4``, grey values as stored, axes z, y, x. Chunks of one slice by
1024 x 1024 read well for training tiles and blockwise prediction. Memory
holds a chunk's depth of slices; the output appears under its name only when
complete, and an existing output is refused, never replaced.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common.errors import exit_status, write_failure
from runtime.cli.arguments import DefaultsHelpFormatter, OneLineErrorParser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="convert_volume.py", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    parser.add_argument("input", help="multipage TIFF, folder of PNG/TIFF slices, HDF5 dataset (file.h5:/path) or "
                                      "Zarr array")
    parser.add_argument("output", help="the new OME-Zarr image (e.g. volume.ome.zarr); must not exist")
    parser.add_argument("--chunks", type=int, nargs=3, default=(1, 1024, 1024), metavar=("Z", "Y", "X"),
                        help="chunk shape in slices, rows and columns (cut to the volume's size)")
    parser.add_argument("--scale", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X"),
                        help="voxel size for the OME metadata (e.g. 40 4 4 nm for CREMI)")
    parser.add_argument("--ngff", choices=("0.4", "0.5"), default=None,
                        help="OME-Zarr version: 0.5 (Zarr format 3) or 0.4 (format 2, which the TF 2.15 stack "
                             "reads) [default: 0.5 on the current stack, 0.4 on TF 2.15]")
    args = parser.parse_args(argv)
    if min(args.chunks) < 1 or min(args.scale) <= 0:
        parser.error("--chunks must be positive integers and --scale positive numbers")
    return args


class Progress:
    """Slices done, MB/s and time left on one line of a terminal; a summary line either way."""

    def __init__(self, total: int, slice_bytes: int) -> None:
        self.total, self.slice_bytes = total, slice_bytes
        self.started = time.perf_counter()
        self.live = sys.stderr.isatty()

    def update(self, done: int) -> None:
        if not self.live:
            return
        seconds = time.perf_counter() - self.started
        rate = done * self.slice_bytes / max(seconds, 1e-9) / 1e6
        left = (self.total - done) * seconds / max(done, 1)
        print(f"\rconvert_volume.py: {done}/{self.total} slices, {rate:.0f} MB/s, {left:.0f} s left ",
              end="", file=sys.stderr, flush=True)

    def summary(self) -> str:
        if self.live:
            print(file=sys.stderr)
        seconds = time.perf_counter() - self.started
        rate = self.total * self.slice_bytes / max(seconds, 1e-9) / 1e6
        return f"{self.total} slices in {seconds:.1f} s ({rate:.0f} MB/s)"


def convert(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from data_loading.ome_zarr import OmeZarrWriter
    from data_loading.readers import open_volume

    reader = open_volume(args.input, "INPUT")
    output = Path(args.output)
    try:
        writer = OmeZarrWriter(output, reader.shape, reader.dtype, tuple(args.chunks), reader.stem, tuple(args.scale),
                               args.ngff)
    except OSError as error:
        raise write_failure(output.name, output.parent, error) from None
    progress = Progress(reader.shape[0], reader.shape[1] * reader.shape[2] * reader.dtype.itemsize)
    try:
        for z in range(reader.shape[0]):
            writer.write(reader.read(z))
            progress.update(z + 1)
        writer.close()
    except OSError as error:
        writer.abandon()
        raise write_failure(output.name, output.parent, error) from None
    except BaseException:
        writer.abandon()
        raise
    count, height, width = reader.shape
    print(f"convert_volume.py: wrote {output} (OME-Zarr {writer.version}, {count} slices of {height}x{width} "
          f"{reader.dtype}, chunks {'x'.join(map(str, writer.chunks))}): {progress.summary()}")
    return output


def main(argv: list[str] | None = None) -> int:
    return exit_status("convert_volume.py", lambda: convert(argv))


if __name__ == "__main__":
    sys.exit(main())
