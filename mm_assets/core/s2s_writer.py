"""Write merged user lines as gzipped S2S files in the outbox (S2S-FMT, S2S-HDR, S2S-NAME).

One file family per agency and per kind of ID (cookie / mobile, S2S-MOB). A family whose gzip
would pass the size limit (S2S-QUOTA) is split into several complete files, each with its own
header and unique name; a user's lines never straddle two files.

Files are written under a hidden `.partial` name and renamed into place when complete, so no
half-written file is ever visible under an S2S name. Families are compressed in parallel
threads: zlib-ng releases the GIL.

A build replaces a batch's outbox atomically. The outbox layout:

    OUTBOX/<batch>                  symlink -> .builds/<batch>/<build id>  (what readers open:
                                    OUTBOX/<batch>/manifest.json and the files beside it)
    OUTBOX/.builds/<batch>/<id>/    one folder per build: files + manifest.json
    OUTBOX/.locks/<batch>.lock      held by the build of that batch (flock)
    OUTBOX/.issued_names            every name ever issued (FileIdentifier is unique)

(The last two only without a shared database; with one, both are rows in it: see
`mm_assets/state/`.)

A build writes a new folder and, once files and manifest are complete and synced, swaps the
symlink with one rename: readers see the old build or the new one, never a mix, and a build
killed mid-write leaves the old outbox intact. The previous build is kept (a delivery that
resolved the link just before the swap still reads it); older ones and dead builds' folders
are removed. A batch folder of the old layout (a real folder) is moved under `.builds` first.
Two builds of one batch never run at once: the second gets `BuildInProgress`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from zlib_ng import zlib_ng

from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.s2s_format import FileHeader, FormatError
from mm_assets.core.segment_merge import GLOBAL_KEY, FileKey
from mm_assets.state.build_lock import (  # noqa: F401 - the build lock's home for its callers
    DELEGATED_BUILD_LOCK_ENV,
    LOCKS,
    BuildInProgress,
    batch_build_lock,
    delegated_build_lock,
)
from mm_assets.state.name_register import (  # noqa: F401 - NAME_REGISTER: the outbox's file
    NAME_REGISTER,
    IssuesNames,
    open_name_register,
)

CHUNK_ROWS = 32_768
MANIFEST = "manifest.json"
BUILDS = ".builds"
# Bytes a gzip member may still add after our last sync flush: final block and trailer.
GZIP_CLOSE_BYTES = 32


@dataclass(frozen=True)
class BuiltFile:
    """One entry of a batch's manifest."""

    name: str
    agency: str  # "" for global data
    mobile: bool
    hash_segments: bool
    users: int
    lines: int
    loads: int
    bytes: int
    md5: str


def worst_case_deflate(raw: int) -> int:
    """Most bytes deflate can emit for `raw` input plus a sync flush (stored blocks)."""
    return raw + 5 * (raw // 16_000 + 2)


class _FilePart:
    """One S2S file being written: header, then gzip chunks ending in sync flushes."""

    def __init__(self, folder: Path, name: str, header: bytes, level: int) -> None:
        self.name = name
        self.final_path = folder / name
        self.partial_path = folder / f".{name}.partial"
        self._file = open(self.partial_path, "wb")  # noqa: SIM115 - closed in finish()
        self._gzip = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)
        self._md5 = hashlib.md5()
        self.bytes = 0
        self.users = self.lines = self.loads = 0
        self.add(header)

    def add(self, raw: bytes | memoryview) -> None:
        out = self._gzip.compress(raw) + self._gzip.flush(zlib_ng.Z_SYNC_FLUSH)
        self._file.write(out)
        self._md5.update(out)
        self.bytes += len(out)

    def fits(self, raw: int, limit: int) -> bool:
        return self.bytes + worst_case_deflate(raw) + GZIP_CLOSE_BYTES <= limit

    def finish(self) -> str:
        out = self._gzip.flush()
        self._file.write(out)
        self._md5.update(out)
        self.bytes += len(out)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial_path, self.final_path)
        return self._md5.hexdigest()


def _text_bytes(texts: pa.Array) -> memoryview:
    """The concatenated bytes of a string array's values, without a per-row Python loop."""
    texts = texts.cast(pa.large_string()) if texts.type != pa.large_string() else texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)
    start, end = offsets[texts.offset], offsets[texts.offset + len(texts)]
    return memoryview(texts.buffers()[2])[start:end]


class _FamilyWriter:
    """Writes one FileKey's users into as many size-limited files as needed."""

    def __init__(
        self,
        key: FileKey,
        folder: Path,
        settings: BuildSettings,
        register: IssuesNames,
        now: datetime,
    ) -> None:
        self.key, self.folder, self.settings = key, folder, settings
        self.register, self.now = register, now
        self.hashed = settings.is_hashed(key.agency)
        self.part: _FilePart | None = None
        self.done: list[BuiltFile] = []

    def _open(self) -> _FilePart:
        s = self.settings
        name = self.register.allocate(s.partner_name, self.key.agency or None, self.now)
        header = FileHeader(
            file_identifier=name,
            date_created=int(self.now.timestamp()),
            segment_namespace=s.segment_namespace,
            mobile=self.key.mobile,
            user_namespace=s.user_namespace,
            user_table_id=s.user_table_id,
            hash_segments=self.hashed,
            hash_ids=s.hash_ids,
        ).render()
        part = _FilePart(self.folder, name, header, s.gzip_level)
        if not part.fits(0, s.max_file_bytes):
            raise FormatError(f"size limit {s.max_file_bytes} bytes cannot hold a header")
        return part

    def _close(self) -> None:
        part, self.part = self.part, None
        if part is None:
            return
        md5 = part.finish()
        self.done.append(
            BuiltFile(
                name=part.name,
                agency=self.key.agency,
                mobile=self.key.mobile,
                hash_segments=self.hashed,
                users=part.users,
                lines=part.lines,
                loads=part.loads,
                bytes=part.bytes,
                md5=md5,
            )
        )

    def add(self, batch: pa.RecordBatch) -> None:
        """Place whole users; halve a chunk that would pass the limit until its users fit."""
        raw = _text_bytes(batch.column("text"))
        limit = self.settings.max_file_bytes
        if self.part is None:
            self.part = self._open()
        if not self.part.fits(len(raw), limit):
            if batch.num_rows > 1:
                half = batch.num_rows // 2
                self.add(batch.slice(0, half))
                self.add(batch.slice(half))
                return
            if self.part.users:
                self._close()
                self.part = self._open()
            if not self.part.fits(len(raw), limit):
                raise FormatError(
                    f"one user's lines ({len(raw)} bytes) cannot fit a file of {limit} bytes"
                )
        self.part.add(raw)
        self.part.users += batch.num_rows
        self.part.lines += int(pa.compute.sum(batch.column("lines")).as_py())
        self.part.loads += int(pa.compute.sum(batch.column("loads")).as_py())

    def finish(self) -> list[BuiltFile]:
        self._close()
        return self.done


def _family_batches(folder: Path) -> Iterator[pa.RecordBatch]:
    for path in sorted(folder.glob("*.parquet")):
        yield from pq.ParquetFile(path).iter_batches(
            batch_size=CHUNK_ROWS, columns=["text", "lines", "loads"]
        )


def family_folders(merged_dir: Path) -> dict[FileKey, Path]:
    families = {}
    for folder in sorted(merged_dir.glob("taxonomy=*/mobile=*")):
        taxonomy = folder.parent.name.split("=", 1)[1]
        agency = "" if taxonomy == GLOBAL_KEY else taxonomy
        families[FileKey(agency, folder.name.endswith("=1"))] = folder
    return families


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(batch_outbox: Path, build_dir: Path) -> None:
    """Point `batch_outbox` at `build_dir` with one atomic rename, then prune old builds."""
    root = batch_outbox.parent
    builds = build_dir.parent
    previous = batch_outbox.resolve() if batch_outbox.is_symlink() else None
    if batch_outbox.exists() and not batch_outbox.is_symlink():
        # The old layout's real folder: keep it as a build so the swap below is one rename.
        legacy = builds / f"legacy-{secrets.token_hex(4)}"
        os.replace(batch_outbox, legacy)
        previous = legacy
    link = root / f".{batch_outbox.name}.link.{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(build_dir, root), link)
    os.replace(link, batch_outbox)
    _fsync_dir(root)
    keep = {build_dir.resolve(), previous}
    for old in builds.iterdir():
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


def write_s2s_files(
    merged_dir: Path,
    batch_outbox: Path,
    settings: BuildSettings,
    *,
    now: datetime | None = None,
    batch: str = "",
) -> list[BuiltFile]:
    """Write every file family of a merged batch, with its manifest, and publish them as
    `batch_outbox` atomically (see the module docstring for the layout)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    root = batch_outbox.parent
    root.mkdir(parents=True, exist_ok=True)
    with batch_build_lock(root, batch_outbox.name):
        build_id = f"{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        build_dir = root / BUILDS / batch_outbox.name / build_id
        build_dir.mkdir(parents=True)
        register = open_name_register(root)

        def write_family(item: tuple[FileKey, Path]) -> list[BuiltFile]:
            writer = _FamilyWriter(item[0], build_dir, settings, register, now)
            for chunk in _family_batches(item[1]):
                writer.add(chunk)
            return writer.finish()

        with ThreadPoolExecutor(max_workers=max(1, settings.threads)) as pool:
            built = [
                f
                for files in pool.map(write_family, family_folders(merged_dir).items())
                for f in files
            ]
        write_manifest(build_dir, batch, now, built)
        _fsync_dir(build_dir)
        _publish(batch_outbox, build_dir)
    return built


def write_manifest(
    batch_outbox: Path, batch: str, built_at: datetime, files: list[BuiltFile]
) -> Path:
    path = batch_outbox / MANIFEST
    tmp = batch_outbox / f".{MANIFEST}.partial"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(
            {
                "batch": batch,
                "built_at": built_at.isoformat(),
                "files": [asdict(f) for f in files],
            },
            out,
            indent=2,
        )
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def read_manifest(batch_outbox: Path) -> list[BuiltFile]:
    data = json.loads((batch_outbox / MANIFEST).read_text())
    return [BuiltFile(**entry) for entry in data["files"]]
