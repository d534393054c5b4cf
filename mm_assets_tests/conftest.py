"""Shared helpers for the build tests: small export batches on disk and S2S files read back.

The helpers parse S2S files with the standard library only (gzip + str.split), never with the
writer's code, so a mistake in the writer cannot hide in its own reader.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from mm_assets.core.bucket_loads import bucket_dirs, loads_relation
from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.export_reader import ReadReport, read_export_batch
from mm_assets.core.s2s_writer import BuiltFile, write_s2s_files
from mm_assets.core.segment_merge import MergeReport, merge_segment_loads
from mm_assets.state.database import sqlite_url
from mm_assets_tests.postgres.server import LocalPostgres, postgres_bin_dir

FIELDS = ("user_id", "segment", "timestamp", "client", "device_type")
CSV_HEADER = ",".join(FIELDS) + "\n"
PARTNER = "ExamplePartner"
NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def make_settings(**overrides: object) -> BuildSettings:
    values: dict[str, object] = {
        "partner_name": PARTNER,
        "segment_namespace": "ep",
        "threads": 2,
    }
    values.update(overrides)
    return BuildSettings(**values)  # type: ignore[arg-type]


def csv_bytes(rows: Iterable[Sequence[object]], fields: Sequence[str] = FIELDS) -> bytes:
    """A CSV file (header + rows, `\\n` line endings); a row may be shorter than `fields`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue().encode()


def write_batch(root: Path, files: dict[str, bytes], name: str = "batch_1") -> Path:
    batch = root / "export" / name
    batch.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = batch / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return batch


def quarantine_rows(report: ReadReport) -> list[dict[str, object]]:
    return pq.read_table(report.quarantine_path).to_pylist()


def accepted_loads(report: ReadReport) -> list[tuple[str, bool, str, str, int]]:
    """The reader's good rows as (agency, mobile, user_id, segment, ts), sorted."""
    con = duckdb.connect()
    loads = loads_relation(con, bucket_dirs(report.loads_dir))
    rows = con.execute(f"SELECT agency, mobile, user_id, segment, ts FROM {loads}").fetchall()
    con.close()
    return sorted(rows)


@dataclass
class Build:
    read: ReadReport
    merge: MergeReport
    built: list[BuiltFile]
    outbox: Path  # the batch's outbox folder


def run_build(
    batch_dir: Path,
    work: Path,
    settings: BuildSettings,
    *,
    outbox_root: Path | None = None,
    now: datetime = NOW,
) -> Build:
    """read -> merge -> write, the way the Dagster assets chain them."""
    read = read_export_batch(batch_dir, work / "raw_audiences", settings)
    merge = merge_segment_loads(read.loads_dir, work / "merged_segment_loads", settings)
    outbox = (outbox_root or work / "outbox") / batch_dir.name
    built = write_s2s_files(merge.merged_dir, outbox, settings, now=now, batch=batch_dir.name)
    return Build(read, merge, built, outbox)


@dataclass
class S2sFile:
    name: str
    header: dict[str, str]
    header_lines: list[str]
    rows: list[tuple[str, list[tuple[str, str]]]]  # (user, [(segment, timestamp), ...]) per line

    @property
    def agency(self) -> str:
        parts = self.name.removesuffix(".log.gz").split("_")
        return parts[0] if len(parts) == 3 else ""

    @property
    def mobile(self) -> bool:
        return self.header["Mobile"] == "1"

    def loads(self) -> set[tuple[str, str, str]]:
        """Every (user, segment, timestamp) of the file."""
        return {(u, s, t) for u, loads in self.rows for s, t in loads}

    def users(self) -> set[str]:
        return {u for u, _ in self.rows}


def parse_s2s(path: Path) -> S2sFile:
    """Read an S2S file back with the standard library: header, blank line, rows."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    assert "\r" not in text
    head, sep, body = text.partition("\n\n")
    assert sep, f"{path.name}: no blank line after the header"
    header_lines = head.split("\n")
    header = dict(line.split(": ", 1) for line in header_lines)
    assert body.endswith("\n"), f"{path.name}: last row lacks its newline"
    rows = []
    for line in body[:-1].split("\n"):
        user, *loads = line.split(" ")
        assert loads, f"{path.name}: row without loads: {line!r}"
        rows.append((user, [tuple(load.rsplit(":", 1)) for load in loads]))
    return S2sFile(path.name, header, header_lines, rows)  # type: ignore[arg-type]


def s2s_files_in(outbox: Path) -> list[Path]:
    return sorted(outbox.glob("*.log.gz"))


# -- databases: the same ledger / status-store tests on SQLite and on a real PostgreSQL ----------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (Debian's binaries, temp folder, ephemeral port).

    Skipped only off root without the binaries; as root (CI) they must be there:
    `scripts/test.sh` installs Debian's `postgresql`.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        if os.geteuid() == 0:
            pytest.fail("PostgreSQL is not installed; scripts/test.sh installs it (as root)")
        pytest.skip("PostgreSQL binaries not installed (scripts/test.sh installs them as root)")
    with LocalPostgres(bin_dir) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger database: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state" / "ledger.sqlite")
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    return server.new_database()


def break_s2s_header(outbox: Path, name: str) -> None:
    """Rewrite one built file with its header out of order (S2S-HDR: FileIdentifier before
    Version) and keep the manifest consistent with the new bytes."""
    import hashlib
    import json

    from mm_assets.core.s2s_writer import MANIFEST

    path = outbox / name
    head, _, body = gzip.decompress(path.read_bytes()).partition(b"\n\n")
    lines = head.split(b"\n")
    lines[0], lines[1] = lines[1], lines[0]
    data = gzip.compress(b"\n".join(lines) + b"\n\n" + body)
    path.write_bytes(data)
    manifest = json.loads((outbox / MANIFEST).read_text())
    for entry in manifest["files"]:
        if entry["name"] == name:
            entry["bytes"], entry["md5"] = len(data), hashlib.md5(data).hexdigest()
    (outbox / MANIFEST).write_text(json.dumps(manifest))


def approve_outbox(outbox: Path, run_id: str) -> None:
    """Record the outbox's files as approved by every build check, as passing checks record
    them (delivery's gate, `mm_assets/delivery/gate.py`)."""
    from mm_assets.core.s2s_writer import read_manifest
    from mm_assets.delivery import gate

    for check in gate.REQUIRED_CHECKS:
        gate.record_approval(
            outbox,
            check,
            passed=True,
            manifest_digest=gate.manifest_sha256(outbox),
            files={f.name: f.md5 for f in read_manifest(outbox)},
            run_id=run_id,
            now=datetime.now(UTC),
        )
