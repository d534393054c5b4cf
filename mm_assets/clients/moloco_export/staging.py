"""Copy one batch's objects into a local staging folder, streamed and checksummed.

The folder is `BatchStorage.export_dir/<batch>/`, so `raw_audiences` reads a staged batch
exactly like a local one. A small state file (`.moloco_staged.json`, hidden so the reader skips
it) remembers the version (generation/ETag) each file was staged from: an object whose version,
size and file are unchanged is skipped, a rewritten one is downloaded again. Each download goes
to a hidden `.NAME.partial` file and is renamed only after its size and MD5/CRC32C match what the
store listed, so a crash or a corrupt read never leaves a half file under a data name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import google_crc32c

from mm_assets.clients.moloco_export.errors import ChecksumMismatch, UnsafeObjectName
from mm_assets.clients.moloco_export.listing import (
    ExportObject,
    ExportStore,
    batch_fingerprint,
    normalise_prefix,
)

STATE_FILE = ".moloco_staged.json"


@dataclass
class StageReport:
    batch: str
    method: str
    objects: int = 0  # data objects of the batch
    bytes_total: int = 0
    downloaded: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    skipped_unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # staged earlier, gone from the batch
    files: dict[str, dict[str, object]] = field(default_factory=dict)  # rel -> size, version
    version: str = ""  # batch_fingerprint of the data objects: the sensor's run key uses it


def relative_name(obj: ExportObject, prefix: str, batch: str) -> str:
    """The object's path inside the batch folder; refuses names that would escape it."""
    head = f"{normalise_prefix(prefix)}{batch}/"
    if not obj.name.startswith(head):
        raise UnsafeObjectName(f"{obj.name!r} is not under {head!r}")
    rel = obj.name[len(head) :]
    parts = PurePosixPath(rel).parts
    if (
        not rel
        or rel.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in rel
        or "\0" in rel
    ):
        raise UnsafeObjectName(f"object name {obj.name!r} cannot be staged safely")
    return rel


def _load_state(dest: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads((dest / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(dest: Path, state: dict[str, dict[str, object]]) -> None:
    tmp = dest / f"{STATE_FILE}.partial"
    tmp.write_text(json.dumps(state, sort_keys=True, indent=1))
    os.replace(tmp, dest / STATE_FILE)


class _HashingWriter:
    """A write-only file that hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.md5.update(data)
        self.crc.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()


def download_object(store: ExportStore, obj: ExportObject, target: Path) -> None:
    """Stream `obj` into `target` via a hidden partial file; verify size and checksums."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with open(partial, "wb") as f:
            out = _HashingWriter(f)
            store.write_to(obj, out)
        md5, crc, size = out.md5, out.crc, out.size
        if size != obj.size:
            raise ChecksumMismatch(f"{obj.name}: {size} bytes read, {obj.size} listed")
        if obj.md5_hex and md5.hexdigest() != obj.md5_hex.lower():
            raise ChecksumMismatch(f"{obj.name}: MD5 {md5.hexdigest()} != listed {obj.md5_hex}")
        if obj.crc32c_b64 and base64.b64encode(crc.digest()).decode() != obj.crc32c_b64:
            raise ChecksumMismatch(f"{obj.name}: CRC32C differs from the listed value")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def stage_batch(
    store: ExportStore,
    prefix: str,
    batch: str,
    objects: list[ExportObject],
    dest: Path,
    *,
    log: Callable[[str], None] = lambda _m: None,
) -> StageReport:
    """Make `dest` hold exactly the batch's data objects (markers are not staged)."""
    dest.mkdir(parents=True, exist_ok=True)
    state = _load_state(dest)
    report = StageReport(batch=batch, method=store.method)
    wanted: dict[str, ExportObject] = {}
    for obj in sorted(objects, key=lambda o: o.name):
        if obj.is_marker:
            continue
        wanted[relative_name(obj, prefix, batch)] = obj
    report.version = batch_fingerprint(list(wanted.values()))
    for rel, obj in wanted.items():
        report.objects += 1
        report.bytes_total += obj.size
        report.files[rel] = {"bytes": obj.size, "version": obj.version}
        target = dest / rel
        known = state.get(rel)
        if (
            known
            and known.get("version") == obj.version
            and target.is_file()
            and target.stat().st_size == obj.size
        ):
            report.skipped_unchanged.append(rel)
            continue
        download_object(store, obj, target)
        state[rel] = {"version": obj.version, "size": obj.size}
        _save_state(dest, state)  # after each file, so a crash keeps what was done
        report.downloaded.append(rel)
        report.bytes_downloaded += obj.size
        log(f"staged {rel} ({obj.size} bytes, version {obj.version})")
    for rel in sorted(set(state) - set(wanted)):
        # Only files this stager wrote are removed: anything else in the folder is not ours.
        (dest / rel).unlink(missing_ok=True)
        del state[rel]
        report.removed.append(rel)
    _save_state(dest, state)
    return report
