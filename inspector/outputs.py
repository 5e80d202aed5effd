"""Output paths checked before any work: a run that cannot write its results should say so in its first second."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from inspector.errors import InputError


def check_output(path: Path, flag: str, *, folder: bool) -> None:
    """InputError unless `path` can be written as a folder (or a file): it is not the other kind, and its nearest
    existing ancestor is a folder this process may write in. Nothing is created."""
    kind, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists():
        if path.is_dir() != folder:
            raise InputError(f"{flag} {path}: is a {other}; expected a {kind}")
        target = path if folder else path.parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: no permission to write in {target}")
        return
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{flag} {path}: {ancestor} is a file, so no {kind} can be made under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: no permission to create it in {ancestor}")


def make_output_folder(path: Path, flag: str) -> Path:
    """Create the folder and its parents; InputError naming the reason when the file system refuses."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot create the folder ({exc.strerror})") from exc
    return path


def temp_file_beside(out: Path, flag: str) -> Path:
    """An empty, new temp file in `out`'s folder, to be renamed onto `out`; its mode follows the umask like any
    written file (mkstemp's 0600 would leave a model the service user cannot read)."""
    while True:
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise InputError(f"{flag} {out}: cannot write in {out.parent} ({exc.strerror})") from exc
        return tmp
