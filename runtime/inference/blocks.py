"""How a volume is cut for blockwise prediction: output chunks, blocks of whole chunks, and the tile size.

A block is a rectangle of one slice made of whole output chunks, so that
each block writes exactly its own chunks and no two writers ever touch one
(no lock, in one process or many). Its probabilities come from output tiles
on one grid per slice (``strategies.tile_places``), so a block is predicted
exactly as the whole slice would be, however the volume is cut.

The UNet is fully convolutional: a tile of output T needs T + 184 input
pixels (T + 184 = 124 + 16 k), and the 92-pixel context on each side is paid
again by every tile. Larger tiles waste less (572 -> 388 computes 2.17 input
pixels per output pixel, 1084 -> 900 computes 1.45) but need more memory, and
a CPU computes a large input's pixels more slowly than a small one's (on a
2-core AVX2 EPYC at full width, 0.107 Mpixel/s at 1596 against 0.150 at 572:
benchmarks/results/blockwise_tiles.md). So where the volume is large enough
to pay for it, the tile is chosen by timing one pass of each tile that fits
the memory bound (``fastest_tile``); else as the one that computes the fewest
input pixels (``choose_tile``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.geometry import OUTPUT_SIZE

CONTEXT = 92
TILE_OUTPUTS = tuple(OUTPUT_SIZE + 256 * k for k in range(7))  # 388, 644, 900, 1156, 1412, 1668, 1924
# Forward-pass memory per input pixel and per base filter, float32: 15.5-17.5 measured at full width for inputs
# of 572 to 1596 (docs/performance.md "Blockwise prediction"); TensorFlow's own 0.7 GiB comes on top.
ACTIVATION_BYTES = 17
CHUNK_TARGET = 1024  # output chunks of about 1024 x 1024 (1 MB in uint8): whole multiples of the tile


@dataclass(frozen=True)
class Block:
    """A rectangle of slice ``z``: whole output chunks (at the volume's edges, what is left of them)."""

    z: int
    top: int
    left: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.z}.{self.top}.{self.left}"


def tile_cost(height: int, width: int, tile: int) -> int:
    """Input pixels the tiles of one slice compute."""
    return tiles_per_slice(height, width, tile) * (tile + 2 * CONTEXT) ** 2


def tile_bytes(tile: int, base_filters: int) -> int:
    """Forward-pass memory of one tile of output ``tile`` at width ``base_filters``."""
    return (tile + 2 * CONTEXT) ** 2 * ACTIVATION_BYTES * base_filters


def fitting_tiles(base_filters: int, memory_bound: int, sizes: tuple[int, ...] = TILE_OUTPUTS) -> tuple[int, ...]:
    """The tiles whose forward pass fits ``memory_bound``; 388 if none does."""
    return tuple(tile for tile in sizes if tile_bytes(tile, base_filters) <= memory_bound) or (OUTPUT_SIZE,)


def choose_tile(height: int, width: int, base_filters: int, memory_bound: int,
                sizes: tuple[int, ...] = TILE_OUTPUTS) -> int:
    """The tile that computes the fewest input pixels for slices of this size, of those whose forward pass
    fits ``memory_bound`` (the smallest on a tie); 388 if none does."""
    return min(fitting_tiles(base_filters, memory_bound, sizes),
               key=lambda tile: (tile_cost(height, width, tile), tile))


def tiles_per_slice(height: int, width: int, tile: int) -> int:
    return math.ceil(height / tile) * math.ceil(width / tile)


def fastest_tile(height: int, width: int, seconds: dict[int, float]) -> int:
    """The tile whose passes over one slice take the least time, from the seconds one pass of each took (the
    smallest on a tie)."""
    return min(seconds, key=lambda tile: (tiles_per_slice(height, width, tile) * seconds[tile], tile))


TIMING_SHARE = 0.05  # timing the tiles may cost at most this share of the volume's work at 388


def worth_timing(shape: tuple[int, int, int], tiles: tuple[int, ...], seconds_smallest: float) -> bool:
    """Whether timing every tile (a warm-up and a timed pass each, estimated from the smallest tile's pass by
    input pixels) costs at most ``TIMING_SHARE`` of predicting the volume with the smallest tile."""
    depth, height, width = shape
    smallest = min(tiles)
    work = depth * tiles_per_slice(height, width, smallest) * seconds_smallest
    timing = sum(2 * seconds_smallest * ((tile + 2 * CONTEXT) / (smallest + 2 * CONTEXT)) ** 2
                 for tile in tiles if tile != smallest)
    return len(tiles) > 1 and timing <= TIMING_SHARE * work


def tiles_per_pass(tile: int, base_filters: int, memory_bound: int, asked: int) -> int:
    """``asked`` tiles per forward pass, fewer if their memory would pass the bound (at least one)."""
    return max(1, min(asked, memory_bound // tile_bytes(tile, base_filters)))


def default_chunk(tile: int, size: int) -> int:
    """Output chunk side: the smallest whole multiple of the tile of at least ``CHUNK_TARGET``, so that blocks
    hold whole tiles (no tile computed twice), cut to the slice."""
    return min(size, tile * math.ceil(CHUNK_TARGET / tile))


def plan_blocks(shape: tuple[int, int, int], chunk: tuple[int, int], chunks_per_block: int = 1) -> list[Block]:
    """Every block of a (slices, height, width) volume, slice by slice, row by row: squares of
    ``chunks_per_block`` x ``chunks_per_block`` chunks."""
    depth, height, width = shape
    step_y, step_x = chunk[0] * chunks_per_block, chunk[1] * chunks_per_block
    return [Block(z, top, left, min(step_y, height - top), min(step_x, width - left))
            for z in range(depth) for top in range(0, height, step_y) for left in range(0, width, step_x)]
