"""Image files read by path: anything but a regular file (a pipe, a socket, a device) is named, never read."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def file_kind(mode: int) -> str:
    """What a name that is not a regular file is, in words, from its st_mode."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def not_regular(path: Path) -> str | None:
    """Why `path` (links followed) is no regular file, in words; None when it is one. Nothing is opened: a pipe would block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        why = exc.strerror or str(exc)
        if os.path.islink(path):
            why += f" (a link to {os.readlink(path)})"
        return why
    return None if stat.S_ISREG(mode) else f"{file_kind(mode)}, not a regular file"


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at `path`, links followed; OSError (its strerror saying what is there) for anything else,
    which is not read: reading a pipe waits for a writer forever."""
    why = not_regular(path)
    if why is not None:
        raise OSError(errno.EINVAL, why)
    # O_NONBLOCK: a pipe put there after the stat must not block the open either.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{file_kind(mode)}, not a regular file")
        return f.read()
