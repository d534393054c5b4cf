"""Files that appear whole or not at all, and survive a crash once written (the state, the
step summaries, the parts index, the outbox): the one definition of how, for core modules."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to the disk (a folder: the renames made in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` aside, sync it, rename it into place and sync the folder: a reader
    sees the old file or the new one, never a part, and a crash after the call loses nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with open(temp, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)
    fsync_path(path.parent)
