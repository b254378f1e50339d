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
