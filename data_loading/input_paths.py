"""Checking an input path before anything opens it.

Opening a FIFO blocks until a writer appears, reading a device such as
/dev/zero never ends, and a dangling symbolic link reads as "not found" with
no hint why: every path the user hands us is looked at with ``stat`` first
and refused in one line unless it is a regular file or a folder, as asked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from common.errors import UserInputError

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_input(path: Path, what: str, expect: str = "file") -> Path:
    """``path`` if it is what ``expect`` asks ("file", "folder" or "any": either), else a UserInputError.

    ``what`` names the input in the message, e.g. "--predict_input" or "data file".
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise UserInputError(f"{what} {path} is a dangling symbolic link (to {os.readlink(path)})") from None
        raise UserInputError(f"{what} not found: {path}") from None
    except OSError as error:
        raise UserInputError(f"cannot access {what} {path}: {error.strerror}") from None
    for is_kind, kind in _SPECIAL_KINDS:
        if is_kind(info.st_mode):
            raise UserInputError(f"{what} {path} is {kind}, not a regular file or folder")
    if expect == "file" and not stat.S_ISREG(info.st_mode):
        raise UserInputError(f"{what} is not a file: {path}")
    if expect == "folder" and not stat.S_ISDIR(info.st_mode):
        raise UserInputError(f"{what} is not a folder: {path}")
    return path
