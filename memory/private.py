"""Folders and files only their owner can open: the data dir, the database, backups and exports.

Folders are made 0700 and files 0600 where they are created; something that already exists is tightened only when
it belongs to the user running Longhand (never a folder someone else owns).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _owned(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


def private_dir(path: Path | str, *, tighten_existing: bool = True) -> Path:
    """Create `path` (and any missing parents) and make the folder itself 0700; with `tighten_existing=False`
    a folder that was already there (one the user chose, holding other things) is left as it is."""
    path = Path(path)
    existed = path.is_dir()
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if _owned(path) and (tighten_existing or not existed):
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path | str) -> Path:
    """Make an existing file 0600."""
    path = Path(path)
    if _owned(path):
        os.chmod(path, PRIVATE_FILE_MODE)
    return path


def open_private(path: Path | str, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    """`open(path, "wb")` for a file that is 0600 from the moment it exists."""
    return os.fdopen(os.open(path, flags, PRIVATE_FILE_MODE), "wb")


def write_private_atomic(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` all at once or not at all, durably, 0600 from the start.

    The bytes go to a `.part` file beside it, fsynced, then renamed over `path`, and the folder is fsynced so the
    rename survives a power cut: a reader sees the old file or the whole new one, never half of it.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    try:
        with open_private(partial) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path
