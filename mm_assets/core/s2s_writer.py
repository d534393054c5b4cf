"""Write merged user lines as gzipped S2S files in the outbox (S2S-FMT, S2S-HDR, S2S-NAME).

One file family per agency and per kind of ID (cookie / mobile, S2S-MOB). The merge leaves
each family's lines as compressed parts (core/line_parts.py: raw deflate ending in a sync
flush, whole users each, with their CRC-32 and sizes); a file is a gzip header, its header's
deflate part, as many parts as fit, a final empty block and the combined CRC-32: one gzip
member, written without inflating or compressing the lines again. A family whose gzip would
pass the size limit (S2S-QUOTA) is split into several complete files at part boundaries, each
with its own header and unique name; a user's lines never straddle two files.

Files are written under a hidden `.partial` name and renamed into place when complete, so no
half-written file is ever visible under an S2S name. Families are written in parallel threads.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from mm_assets.core.atomic_files import fsync_path
from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.line_parts import (
    FINAL_BLOCK,
    GZIP_HEADER,
    GZIP_TRAILER_BYTES,
    LinePart,
    combine_crc,
    deflate_part,
    file_header,
    gzip_trailer,
    read_parts_index,
)
from mm_assets.core.s2s_format import FormatError
from mm_assets.core.segment_merge import FileKey, family_folder
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

MANIFEST = "manifest.json"
BUILDS = ".builds"
COPY_BYTES = 2**20  # a part is copied into its file in pieces of this size


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


class _GzipFile:
    """One S2S file being written: one gzip member joined from deflate parts (line_parts.py);
    its md5 and sizes are counted as the bytes go out, never by reading the file back."""

    def __init__(self, folder: Path, name: str, header: tuple[bytes, int, int]) -> None:
        self.name = name
        self.final_path = folder / name
        self.partial_path = folder / f".{name}.partial"
        self._file = open(self.partial_path, "wb")  # noqa: SIM115 - closed in finish()
        self._md5 = hashlib.md5()
        self.bytes = 0
        header_bytes, self._crc, self._text_bytes = header
        self.users = self.lines = self.loads = 0
        self._write(GZIP_HEADER)
        self._write(header_bytes)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._md5.update(data)
        self.bytes += len(data)

    def fits(self, gz_bytes: int, limit: int) -> bool:
        return self.bytes + gz_bytes + len(FINAL_BLOCK) + GZIP_TRAILER_BYTES <= limit

    def add(self, lines_dir: Path, part: LinePart) -> None:
        with open(lines_dir / part.path, "rb") as source:
            while chunk := source.read(COPY_BYTES):
                self._write(chunk)
        self._crc = combine_crc(self._crc, part.crc32, part.text_bytes)
        self._text_bytes += part.text_bytes
        self.users += part.users
        self.lines += part.lines
        self.loads += part.loads

    def finish(self) -> str:
        self._write(FINAL_BLOCK + gzip_trailer(self._crc, self._text_bytes))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial_path, self.final_path)
        return self._md5.hexdigest()


class _FamilyWriter:
    """Writes one FileKey's parts into as many size-limited files as needed."""

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
        self.file: _GzipFile | None = None
        self.done: list[BuiltFile] = []

    def _open(self) -> _GzipFile:
        s = self.settings
        name = self.register.allocate(s.partner_name, self.key.agency or None, self.now)
        header = file_header(
            s, name, int(self.now.timestamp()), mobile=self.key.mobile, hashed=self.hashed
        )
        file = _GzipFile(self.folder, name, deflate_part([header.render()], s.gzip_level))
        if not file.fits(0, s.max_file_bytes):
            raise FormatError(f"size limit {s.max_file_bytes} bytes cannot hold a header")
        return file

    def _close(self) -> None:
        file, self.file = self.file, None
        if file is None:
            return
        md5 = file.finish()
        self.done.append(
            BuiltFile(
                name=file.name,
                agency=self.key.agency,
                mobile=self.key.mobile,
                hash_segments=self.hashed,
                users=file.users,
                lines=file.lines,
                loads=file.loads,
                bytes=file.bytes,
                md5=md5,
            )
        )

    def add(self, lines_dir: Path, part: LinePart) -> None:
        """Place a part (whole users) in the current file, or in a new one if it would pass
        the limit (S2S-QUOTA)."""
        limit = self.settings.max_file_bytes
        if self.file is None:
            self.file = self._open()
        if not self.file.fits(part.gz_bytes, limit):
            if self.file.users:
                self._close()
                self.file = self._open()
            if not self.file.fits(part.gz_bytes, limit):
                # The merge sizes parts to fit (line_parts.part_text_limit): only one user
                # alone can be this large.
                raise FormatError(
                    f"one user's lines ({part.text_bytes} bytes, {part.gz_bytes} gzipped) "
                    f"cannot fit a file of {limit} bytes"
                )
        self.file.add(lines_dir, part)

    def finish(self) -> list[BuiltFile]:
        self._close()
        return self.done


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
    fsync_path(root)
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
    # Read first: the lines of an unfinished merge fail the write before the outbox is touched.
    families = read_parts_index(merged_dir)
    root = batch_outbox.parent
    root.mkdir(parents=True, exist_ok=True)
    with batch_build_lock(root, batch_outbox.name):
        build_id = f"{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        build_dir = root / BUILDS / batch_outbox.name / build_id
        build_dir.mkdir(parents=True)
        register = open_name_register(root)

        def write_family(key: FileKey) -> list[BuiltFile]:
            writer = _FamilyWriter(key, build_dir, settings, register, now)
            for part in families[(key.agency, key.mobile)]:
                writer.add(merged_dir, part)
            return writer.finish()

        # Families in the order of their folders' names, as the files always were listed.
        keys = sorted((FileKey(*k) for k in families), key=family_folder)
        with ThreadPoolExecutor(max_workers=max(1, settings.threads)) as pool:
            built = [f for files in pool.map(write_family, keys) for f in files]
        write_manifest(build_dir, batch, now, built)
        fsync_path(build_dir)
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
