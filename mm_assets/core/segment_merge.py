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

import pyarrow as pa

from mm_assets.core.batch_work import LINES
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
    merged_dir = out_dir / LINES
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


def user_key_sql() -> str:
    """SQL of a user's 64-bit key (columns `agency`, `mobile`, `user_id`): the reader writes it
    with every load, and the merge groups by it instead of by the three texts (measured ~2x
    faster). A key two users share is detected in the merge, never trusted (see _resolve)."""
    return "hash(agency, mobile, user_id)"


def user_bucket_sql(buckets: int) -> str:
    """SQL of a user's bucket: one user's loads always meet in one bucket, merged alone."""
    return f"{user_key_sql()} % {int(buckets)}"


def _merge_bucket(con, bucket: Path, merged_dir: Path, totals, by_file, snapshot=None) -> None:
    _resolve(con, sql_glob(bucket, "*.parquet"))
    if snapshot is not None:
        _snapshot_seam(con, bucket, snapshot)
    rows_in, loads_out, conflicts = con.execute(
        "SELECT sum(n), count(*), count(*) FILTER (WHERE conflict) FROM kept"
    ).fetchone()
    totals["rows_in"] += rows_in or 0
    totals["loads_out"] += loads_out or 0
    totals["conflicts"] += conflicts or 0
    # The bucket's seam: `kept` holds its resolved loads (user_key, segment, rank; n and
    # conflict are spent), one per user and segment, and `users` its users (user_key, agency,
    # mobile, user_id), one per key. Whatever these two tables hold becomes the bucket's
    # lines (a snapshot diff replaces `kept` and adds the users it removes from `users`).
    _user_lines(con)
    _count_lines(con, "user_lines", totals, by_file)
    pattern = bucket.name.replace("=", "_")
    _copy_lines(con, "user_lines", merged_dir, pattern)
    con.execute("DROP TABLE user_lines")
    long_lines = con.sql("SELECT * FROM long_lines").to_arrow_table()
    con.execute("DROP TABLE long_lines")
    if long_lines.num_rows:
        continued = _continue_long_lines(long_lines)
        totals["continued"] += sum(1 for n in continued.column("lines").to_pylist() if n > 1)
        con.register("continued_lines", continued)
        # The continued users count in their file's figures like every other user.
        _count_lines(con, "continued_lines", totals, by_file)
        _copy_lines(con, "continued_lines", merged_dir, pattern + "_long")
        con.unregister("continued_lines")


def _count_lines(con, table: str, totals, by_file) -> None:
    """Add the users, lines, loads and text bytes of `table` to their file's figures."""
    for agency, mobile, users, lines, loads, text_bytes in con.execute(
        "SELECT agency, mobile, count(*), sum(lines), sum(loads), sum(strlen(text)) "
        f"FROM {table} GROUP BY agency, mobile"
    ).fetchall():
        stats = by_file[FileKey(agency, mobile)]
        stats.users += users
        stats.lines += lines
        stats.loads += loads
        stats.text_bytes += text_bytes
        totals["users"] += users


def _resolve(con, files: str) -> None:
    """The conflict rule per user and segment (`kept`), and the bucket's users (`users`).

    Grouping by the 64-bit user key is lossless only while no two users share a key: checked
    on every bucket; in the (astronomically rare) case they do, the bucket is keyed again by
    a number given to each distinct user.
    """
    loads = f"read_parquet({files})"
    if "user_key" not in {
        row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {loads}").fetchall()
    }:
        # Loads read before the reader wrote user keys (a batch read by an older version).
        loads = f"(SELECT *, {user_key_sql()} AS user_key FROM {loads})"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE users AS
        SELECT DISTINCT user_key, agency, mobile, user_id FROM {loads}""")
    source = loads
    if con.execute("SELECT count(*) <> count(DISTINCT user_key) FROM users").fetchone()[0]:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE users AS
            SELECT row_number() OVER () AS user_key, agency, mobile, user_id
            FROM (SELECT DISTINCT agency, mobile, user_id FROM users)""")
        source = (
            f"(SELECT u.user_key, l.segment, l.ts FROM {loads} l "
            f"JOIN users u USING (agency, mobile, user_id))"
        )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT user_key, segment,
               min(CASE ts WHEN -1 THEN {RANK_REMOVE} WHEN 0 THEN {RANK_NOW} ELSE -ts END) AS rank,
               count(*) AS n, min(ts) <> max(ts) AS conflict
        FROM {source} GROUP BY user_key, segment""")


def _snapshot_seam(con, bucket: Path, snapshot: SnapshotDiff) -> None:
    """Snapshot mode: the bucket's resolved loads become their diff against the held state.

    The diff speaks in users' names (the state keeps no keys), so `kept` is named for it and
    keyed again afterwards: its removals bring users the snapshot no longer lists.
    """
    con.execute("""
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT u.agency, u.mobile, u.user_id, k.segment, k.rank, k.n, k.conflict
        FROM kept k JOIN users u USING (user_key)""")
    snapshot.diff_bucket(con, bucket)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE users AS
        SELECT row_number() OVER () AS user_key, agency, mobile, user_id
        FROM (SELECT DISTINCT agency, mobile, user_id FROM kept)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT u.user_key, k.segment, k.rank, k.n, k.conflict
        FROM kept k JOIN users u USING (agency, mobile, user_id)""")


def _user_lines(con) -> None:
    """One line per user (`user_lines`); the few users whose line would reach 8,000 characters
    go to `long_lines` instead (S2S-LINE), to be continued in Python."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE lines_by_key AS
        SELECT user_key, count(*) AS loads,
               string_agg(segment || ':' || CASE rank
                   WHEN {RANK_REMOVE} THEN '-1' WHEN {RANK_NOW} THEN '0'
                   ELSE CAST(-rank AS VARCHAR) END, ' ') AS loads_text
        FROM kept GROUP BY user_key""")
    con.execute("DROP TABLE kept")
    # User IDs and loads are ASCII (the reader's rule), so bytes are characters.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE user_lines AS
        SELECT agency, mobile, user_id, loads, 1 AS lines,
               user_id || ' ' || loads_text || chr(10) AS text
        FROM lines_by_key JOIN users USING (user_key)""")
    con.execute("DROP TABLE lines_by_key")
    con.execute("DROP TABLE users")
    long = f"strlen(text) > {MAX_LINE_CHARS + 1}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE long_lines AS SELECT * FROM user_lines WHERE {long}")
    con.execute(f"DELETE FROM user_lines WHERE {long}")


def _copy_lines(con, table: str, merged_dir: Path, pattern: str) -> None:
    # Uncompressed: the lines live minutes, and lz4 cost ~40 % more CPU than the plain write.
    con.execute(f"""
        COPY (SELECT CASE WHEN agency = '' THEN '{GLOBAL_KEY}' ELSE agency END AS taxonomy,
                     CAST(mobile AS INTEGER) AS mobile, user_id, loads, lines, text
              FROM {table})
        TO {sql_string(str(merged_dir))} (FORMAT parquet, PARTITION_BY (taxonomy, mobile),
            COMPRESSION uncompressed, OVERWRITE_OR_IGNORE true,
            FILENAME_PATTERN '{pattern}_{{i}}')""")


def _continue_long_lines(long_lines: pa.Table) -> pa.Table:
    """S2S-LINE: a user whose one line would reach 8,000 characters continues on more lines.

    Rare (a long tail of users with hundreds of loads), so plain Python is fast enough here.
    """
    counts, texts = [], []
    for user_id, text in zip(
        long_lines.column("user_id").to_pylist(), long_lines.column("text").to_pylist(), strict=True
    ):
        lines = list(split_user_line(user_id, text[len(user_id) + 1 : -1].split(" ")))
        counts.append(len(lines))
        texts.append("\n".join(lines) + "\n")
    return long_lines.set_column(
        long_lines.schema.get_field_index("lines"), "lines", pa.array(counts, pa.int32())
    ).set_column(long_lines.schema.get_field_index("text"), "text", pa.array(texts))
