"""Will the data fit? The memory a run's stacks take, against what the machine has left.

Stacks are read whole into memory as uint8, and the input pipeline keeps
its own float32 copies (resize mode) or mirror-padded uint8 canvases (tile
mode). A stack that does not fit would be killed by the kernel midway
through reading or, worse, through training; it is refused before the first
read instead.
"""

from __future__ import annotations

import os
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


def check_fits(needed: int, what: str) -> None:
    """A one-line UserInputError if ``needed`` bytes exceed the memory left."""
    available = available_bytes()
    if available is not None and needed > available:
        raise UserInputError(f"{what} need about {needed / GIB:.1f} GiB of memory, but only "
                             f"{max(available, 0) / GIB:.1f} GiB is available; use fewer or smaller stacks "
                             "(or free memory)")
