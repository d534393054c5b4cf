"""Merge a batch's segment loads into one S2S line per user and file (S2S-EFF, S2S-LINE).

The conflict rule, deterministic and independent of row order (exports are unordered sets):
for one user and segment in one file, exactly one load is kept,

1. a removal (`-1`) wins over any add: an opt-out must never be undone by a stale add;
2. otherwise "add now" (`0`) wins over an explicit time;
3. otherwise the latest Unix timestamp wins.

Identical repeats are folded silently (counted); differing timestamps are counted as conflicts.
Users are processed one hash bucket at a time, so memory follows the budget, not the batch.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.duckdb_session import open_duckdb, sql_glob, sql_string
from mm_assets.core.s2s_format import MAX_LINE_CHARS, split_user_line

if TYPE_CHECKING:
    from mm_assets.core.snapshot_diff import SnapshotDiff

GLOBAL_KEY = "_global"  # the taxonomy folder of global data; `_` cannot start an agency name
# Sort key of a load under the conflict rule: smaller wins. Timestamps are at most 2**38.
RANK_REMOVE, RANK_NOW = -(2**62), -(2**62) + 1


@dataclass(frozen=True)
class FileKey:
    """One output file family: an agency (or global) and a kind of ID (S2S-NAME, S2S-MOB)."""

    agency: str  # "" for global data
    mobile: bool

    @property
    def folder(self) -> str:
        return f"taxonomy={self.agency or GLOBAL_KEY}/mobile={int(self.mobile)}"


@dataclass
class FileKeyStats:
    users: int = 0
    lines: int = 0
    loads: int = 0
    text_bytes: int = 0


@dataclass
class MergeReport:
    rows_in: int
    loads_out: int
    repeats_folded: int  # rows that repeated a kept load exactly or lost a conflict
    conflicts: int  # user+segment pairs whose loads disagreed on the timestamp
    users: int  # user lines before continuation (one per user and file)
    continued_users: int  # users whose loads needed more than one line (S2S-LINE)
    buckets: int
    merged_dir: Path
    by_file: dict[FileKey, FileKeyStats] = field(default_factory=dict)


def merge_segment_loads(
    loads_dir: Path,
    out_dir: Path,
    settings: BuildSettings,
    snapshot: SnapshotDiff | None = None,
) -> MergeReport:
    """Merge the bucketed loads written by the export reader into per-file line tables.

    In snapshot mode (`snapshot`), each bucket's loads are replaced by their diff against the
    held audience state before the lines are built (core/snapshot_diff.py)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    merged_dir = out_dir / "lines"
    merged_dir.mkdir(parents=True)
    buckets = sorted(loads_dir.glob("bucket=*"))
    con = open_duckdb(":memory:", settings, out_dir / "spill")
    totals = defaultdict(int)
    by_file: dict[FileKey, FileKeyStats] = defaultdict(FileKeyStats)
    try:
        for bucket in buckets:
            if any(bucket.glob("*.parquet")):
                _merge_bucket(con, bucket, merged_dir, totals, by_file, snapshot)
    finally:
        con.close()
        shutil.rmtree(out_dir / "spill", ignore_errors=True)
    return MergeReport(
        rows_in=totals["rows_in"],
        loads_out=totals["loads_out"],
        repeats_folded=totals["rows_in"] - totals["loads_out"],
        conflicts=totals["conflicts"],
        users=totals["users"],
        continued_users=totals["continued"],
        buckets=len(buckets),
        merged_dir=merged_dir,
        by_file=dict(sorted(by_file.items(), key=lambda kv: (kv[0].agency, kv[0].mobile))),
    )


def _merge_bucket(con, bucket: Path, merged_dir: Path, totals, by_file, snapshot=None) -> None:
    files = sql_glob(bucket, "*.parquet")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT agency, mobile, user_id, segment,
               min(CASE ts WHEN -1 THEN {RANK_REMOVE} WHEN 0 THEN {RANK_NOW} ELSE -ts END) AS rank,
               count(*) AS n, min(ts) <> max(ts) AS conflict
        FROM read_parquet({files}) GROUP BY agency, mobile, user_id, segment""")
    if snapshot is not None:
        snapshot.diff_bucket(con, bucket)  # snapshot mode: `kept` becomes the diff
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE user_lines AS
        SELECT agency, mobile, user_id, count(*) AS loads, 1 AS lines,
               user_id || ' ' || string_agg(segment || ':' || CASE rank
                   WHEN {RANK_REMOVE} THEN '-1' WHEN {RANK_NOW} THEN '0'
                   ELSE CAST(-rank AS VARCHAR) END, ' ') || chr(10) AS text
        FROM kept GROUP BY agency, mobile, user_id""")
    rows_in, loads_out, conflicts = con.execute(
        "SELECT sum(n), count(*), count(*) FILTER (WHERE conflict) FROM kept"
    ).fetchone()
    totals["rows_in"] += rows_in or 0
    totals["loads_out"] += loads_out or 0
    totals["conflicts"] += conflicts or 0
    con.execute("DROP TABLE kept")
    _continue_long_lines(con, totals)
    for agency, mobile, users, lines, loads, text_bytes in con.execute(
        "SELECT agency, mobile, count(*), sum(lines), sum(loads), sum(strlen(text)) "
        "FROM user_lines GROUP BY agency, mobile"
    ).fetchall():
        stats = by_file[FileKey(agency, mobile)]
        stats.users += users
        stats.lines += lines
        stats.loads += loads
        stats.text_bytes += text_bytes
        totals["users"] += users
    con.execute(f"""
        COPY (SELECT CASE WHEN agency = '' THEN '{GLOBAL_KEY}' ELSE agency END AS taxonomy,
                     CAST(mobile AS INTEGER) AS mobile, user_id, loads, lines, text
              FROM user_lines)
        TO {sql_string(str(merged_dir))} (FORMAT parquet, PARTITION_BY (taxonomy, mobile),
            COMPRESSION lz4_raw, OVERWRITE_OR_IGNORE true,
            FILENAME_PATTERN '{bucket.name.replace("=", "_")}_{{i}}')""")
    con.execute("DROP TABLE user_lines")


def _continue_long_lines(con, totals) -> None:
    """S2S-LINE: a user whose one line would reach 8,000 characters continues on more lines.

    Rare (a long tail of users with hundreds of loads), so plain Python is fast enough here.
    """
    long_rows = con.execute(
        f"SELECT rowid, user_id, text FROM user_lines WHERE length(text) > {MAX_LINE_CHARS + 1}"
    ).fetchall()
    updates = []
    for rowid, user_id, text in long_rows:
        loads = text[len(user_id) + 1 : -1].split(" ")
        lines = list(split_user_line(user_id, loads))
        updates.append([len(lines), "\n".join(lines) + "\n", rowid])
    if updates:
        con.executemany("UPDATE user_lines SET lines = ?, text = ? WHERE rowid = ?", updates)
    totals["continued"] += sum(1 for u in updates if u[0] > 1)
