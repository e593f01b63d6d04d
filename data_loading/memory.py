"""Will the data fit? The memory a run's stacks take, against what the machine has left.

A run either keeps its stacks in memory (uint8 grey values and class ids,
read slice by slice) or streams them (every tile or slice read from its
volume when needed): ``--volume_loading``. Either way one slice at a time
is worked on at full size (its grey values, probabilities, masks, cell
labels), which the estimate counts as well. Whatever does not fit would be
killed by the kernel midway through reading or, worse, through training; it
is refused before the first read instead, in one line that names the way
that fits (streaming) where there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserInputError

GIB = 2**30
LIMIT_VARIABLE = "UNET2D_MEMORY_LIMIT_GIB"  # caps what a run may use, e.g. on a shared machine


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers, Slurm jobs), if one is set."""
    folder = Path("/sys/fs/cgroup")
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """The smallest of: free memory, room under the cgroup limit, and ``$UNET2D_MEMORY_LIMIT_GIB``; None if unknown."""
    candidates = [_meminfo_available(), _cgroup_available()]
    if os.environ.get(LIMIT_VARIABLE):
        try:
            candidates.append(int(float(os.environ[LIMIT_VARIABLE]) * GIB))
        except ValueError:
            raise UserInputError(f"${LIMIT_VARIABLE} must be a number of GiB, got "
                                 f"{os.environ[LIMIT_VARIABLE]!r}") from None
    known = [value for value in candidates if value is not None]
    return min(known) if known else None


def check_fits(needed: int, what: str, remedy: str = "use fewer or smaller stacks (or free memory)") -> None:
    """A one-line UserInputError if ``needed`` bytes exceed the memory left."""
    available = available_bytes()
    if available is not None and needed > available:
        raise UserInputError(f"{what} need about {needed / GIB:.1f} GiB of memory, but only "
                             f"{max(available, 0) / GIB:.1f} GiB is available; {remedy}")


def slice_working_bytes(pixels: int, num_classes: int, tta: bool = False) -> int:
    """Memory one slice of ``pixels`` takes while predicted and scored: its float input and overlapping tiles
    (2.2x the slice at the 572/388 tile), K float32 probabilities for the tiles and stitched, the class ids,
    and the int64 cell regions of masks, thinned masks and truth; twice the probabilities with ``tta``."""
    per_pixel = 4 + 4 * 2.2 + num_classes * 4 * (2.2 + 1 + (2 if tta else 0)) + 1 + 3 * 8
    return int(pixels * per_pixel)


@dataclass(frozen=True)
class MemoryNeeds:
    """Bytes a run needs with its stacks in memory, and streamed; ``unstreamable`` says why it cannot stream."""

    in_memory: int
    streamed: int
    unstreamable: str | None = None


STREAM_ROUTE = "--volume_loading stream reads them a tile at a time"


def keep_in_memory(asked: str, needs: MemoryNeeds, what: str = "the image and label stacks") -> bool:
    """Whether the stacks stay in memory (``asked``: auto, memory or stream), after checking that it fits.

    ``auto`` keeps them in memory while they take at most half of what is
    available (the other half is the model's, TensorFlow's and the page
    cache's), and streams them beyond that.
    """
    if asked == "stream" and needs.unstreamable:
        raise UserInputError(f"--volume_loading stream: {needs.unstreamable}")
    if asked == "memory" or (asked == "auto" and needs.unstreamable):
        remedy = (f"{STREAM_ROUTE} (but {needs.unstreamable})" if needs.unstreamable
                  else f"{STREAM_ROUTE} (or free memory)")
        check_fits(needs.in_memory, what, remedy)
        return True
    available = available_bytes()
    if asked == "auto" and (available is None or needs.in_memory <= available // 2):
        return True
    check_fits(needs.streamed, f"{what}, streamed,", "use smaller slices (or free memory)")
    return False
