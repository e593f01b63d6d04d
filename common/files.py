"""Writing files and folders a user will read: never half-written, refused in one line when impossible."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import UserInputError


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only if the block completes.

    A crash or a full disk therefore leaves either the old file or none, never
    a truncated one under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's private 0600 is not what users expect
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def replaced_folder(folder: Path, owned: frozenset[str]) -> Iterator[Path]:
    """An empty folder beside ``folder`` to write a complete new version of it into; it takes ``folder``'s
    place only if the block completes, so ``folder`` is the old version, whole, until it is the new one.

    Entries of the old folder that are not among ``owned`` (what the writer makes) and that the new version
    lacks are the user's: they move into the new version, never deleted. A crash between the two renames
    leaves the old version under ``.<name>.old-<pid>`` beside it.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's private 0700 is not what users expect
        if folder.exists():
            for entry in folder.iterdir():
                if entry.name not in owned and not (staging / entry.name).exists():
                    os.replace(entry, staging / entry.name)
            aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, aside)
            os.replace(staging, folder)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def ensure_writable_dir(folder: Path, flag: str) -> None:
    """An output folder named by ``flag``: created if missing, refused in one line if a file or not writable."""
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{flag} is not a folder: {folder}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"cannot create {flag} {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} is not writable: {folder}")
