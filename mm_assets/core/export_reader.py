"""Read one export batch (a folder of raw audience files) into normalised segment loads.

The input contract is in the README. Every row that cannot be used goes to the quarantine table
with its file, line (or row) number and reason; a file that cannot be read at all is reported by
name. Nothing is dropped without a count.

DuckDB does the reading and the row checks (vectorised, spilling to disk past the memory
budget). The good rows are written as Parquet, split into hash buckets of users so the merge can
work on one bucket at a time within the memory budget.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mm_assets.core.build_settings import (
    GLOBAL_TAXONOMY,
    INPUT_COLUMNS,
    REQUIRED_COLUMNS,
    BuildSettings,
)
from mm_assets.core.duckdb_session import open_duckdb, sql_string
from mm_assets.core.s2s_format import MAX_SEGMENT_CODE

FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
}
MOBILE_DEVICE_TYPES = ("idfa", "gaid", "ctv", "mobile")  # S2S-MOB: Mobile: 1
COOKIE_DEVICE_TYPES = ("", "cookie")
WHITESPACE_OR_COLON = " \t\n\r\v\f:"  # what would break a row's layout (S2S-FMT)
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
# DuckDB needs roughly this much memory per loaded row to group it (measured on the
# benchmark's export); it sizes the user buckets so each merge fits the memory budget.
MERGE_BYTES_PER_ROW = 240

# Quarantine reasons: fixed texts so their counts add up; the rule name where one applies.
MISSING_USER = "missing user_id"
BAD_USER = "user_id contains whitespace or ':' (S2S-FMT)"
UNKNOWN_DEVICE = "unknown device_type"
MISSING_SEGMENT = "missing segment"
SEGMENT_NOT_32BIT = "segment is not a 32-bit integer and its taxonomy is not hashed (S2S-SEG)"
BAD_HASHED_SEGMENT = "segment contains whitespace or ':' (S2S-FMT)"
BAD_TIMESTAMP = "timestamp is not an integer (S2S-TS)"
TIMESTAMP_RANGE = "timestamp is not -1, 0 or Unix seconds (S2S-TS)"
CLIENT_NOTHING_LEFT = "client name has no letters or digits (S2S-NAME)"
CLIENT_COLLISION = "client name sanitises to the same file name as another client (S2S-NAME)"
INVALID_JSON = "line is not a JSON object"
UNDECODABLE = "undecodable bytes (not UTF-8)"
MALFORMED_CSV = "malformed CSV row"


@dataclass(frozen=True)
class FileIssue:
    """A whole file that could not be used."""

    file: str
    message: str


@dataclass
class ReadReport:
    batch: str
    files: dict[str, dict[str, int]]  # file -> {"rows": n, "quarantined": n}
    file_issues: list[FileIssue]
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    client_collisions: dict[str, list[str]]  # sanitised name -> the raw names that collide
    buckets: int
    loads_dir: Path
    quarantine_path: Path
    quarantine_preview: list[dict[str, object]] = field(default_factory=list)


def batch_files(batch_dir: Path) -> list[Path]:
    """The data files of a batch; markers and hidden files (`_SUCCESS`, `.x`) are not data."""
    return sorted(
        p for p in batch_dir.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))
    )


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), None)


def read_export_batch(batch_dir: Path, out_dir: Path, settings: BuildSettings) -> ReadReport:
    """Read every file of `batch_dir`; write loads (by user bucket) and quarantine to `out_dir`.

    One streaming pass per file: each row is checked and written straight to its user bucket,
    or to the quarantine, so memory does not grow with the batch.
    """
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"export batch folder {batch_dir} does not exist")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    loads_dir, parts_dir = out_dir / "loads", out_dir / "quarantine_parts"
    loads_dir.mkdir(parents=True)
    parts_dir.mkdir()
    files = batch_files(batch_dir)
    budget = max(settings.memory_budget_bytes // 2, 64 * 2**20)
    buckets = max(1, -(-sum(map(_estimated_rows, files)) * MERGE_BYTES_PER_ROW // budget))
    con = open_duckdb(":memory:", settings, out_dir / "spill")
    try:
        con.execute(REJECTED_TABLE)
        issues: list[FileIssue] = []
        rows_by_file: dict[str, int] = {}
        for index, path in enumerate(files):
            rel = path.relative_to(batch_dir).as_posix()
            issue, rows_by_file[rel] = _read_file(con, path, rel, index, settings, buckets, out_dir)
            if issue:
                issues.append(FileIssue(rel, issue))
        collisions = _client_collisions(con, loads_dir)
        if collisions:
            usable = {rel: batch_dir / rel for rel, rows in rows_by_file.items() if rows}
            _quarantine_collisions(con, usable, settings, loads_dir, parts_dir, collisions)
        report = _write_outputs(
            con, batch_dir.name, out_dir, issues, collisions, buckets, rows_by_file
        )
    finally:
        con.close()
    shutil.rmtree(out_dir / "spill", ignore_errors=True)
    return report


# Rows DuckDB's readers rejected (undecodable bytes, malformed CSV), per file.
REJECTED_TABLE = """
CREATE TABLE rejected (source_file VARCHAR, line BIGINT, reason VARCHAR, raw_user_id VARCHAR);
CREATE TABLE skipped_lines (source_file VARCHAR, line BIGINT)"""
QUARANTINE = "quarantine"  # the partition value of rows that cannot be used
QUARANTINE_JSON = (
    '{"file": "VARCHAR", "line": "BIGINT", "reason": "VARCHAR", '
    '"user_id": "VARCHAR", "segment": "VARCHAR", "timestamp": "VARCHAR", '
    '"client": "VARCHAR", "device_type": "VARCHAR"}'
)


def _estimated_rows(path: Path) -> int:
    """Rows to expect from a file, to size the user buckets before reading."""
    if file_format(path) == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException):
            return 0
    size = path.stat().st_size
    return size * (5 if path.name.lower().endswith(".gz") else 1) // 40


def _source_columns(con: duckdb.DuckDBPyConnection, scan: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]


class _Unusable(Exception):
    """A file that cannot be used at all; the message says why."""


def _file_source(
    con: duckdb.DuckDBPyConnection, path: Path, settings: BuildSettings, rejects: str
) -> str:
    """SQL yielding the file's rows as text columns (INPUT_COLUMNS), its line, and bad_json.

    Lines DuckDB's CSV reader rejects (undecodable bytes, malformed rows) go to `rejects`.
    """
    fmt = file_format(path)
    if fmt is None:
        raise _Unusable(f"unsupported file type (expected one of: {', '.join(FORMATS)})")
    if path.stat().st_size == 0:
        raise _Unusable("file is empty (0 bytes)")
    quoted = sql_string(str(path))
    if fmt == "jsonl":
        scan = (
            f"read_csv({quoted}, columns={{'line': 'VARCHAR'}}, header=false, "
            f"delim='\\x1e', quote='', escape='', store_rejects=true, "
            f"rejects_table='{rejects}', rejects_scan='{rejects}_scan')"
        )
        # A line that is not JSON shows up whole (cut) in the quarantine's user_id column.
        extract = ", ".join(
            f"CASE WHEN json_valid(j) THEN json_extract_string(j, "
            f"{sql_string('$.' + _json_key(settings.source_column(c)))}) "
            f"{'ELSE left(j, 200) ' if c == 'user_id' else ''}END AS {c}"
            for c in INPUT_COLUMNS
        )
        return (
            f"SELECT ordinality AS line, {extract}, "
            f"CASE WHEN json_valid(j) THEN json_type(j) <> 'OBJECT' ELSE true END "
            f"AS bad_json "
            f"FROM (SELECT ordinality, line AS j FROM {scan} WITH ORDINALITY) "
            f"WHERE j IS NOT NULL AND trim(j) <> ''"
        )
    if fmt == "csv":
        scan = (
            f"read_csv({quoted}, all_varchar=true, header=true, delim=',', quote='\"', "
            f"escape='\"', store_rejects=true, rejects_table='{rejects}', "
            f"rejects_scan='{rejects}_scan')"
        )
        line, order = "ordinality + 1", " WITH ORDINALITY"
    else:
        scan = f"read_parquet({quoted}, file_row_number=true)"
        line, order = "file_row_number + 1", ""
    columns = _source_columns(con, scan)
    missing = [c for c in REQUIRED_COLUMNS if settings.source_column(c) not in columns]
    if missing:
        raise _Unusable(_missing_columns_message(missing, settings))
    select = ", ".join(
        (
            f"CAST({_ident(settings.source_column(c))} AS VARCHAR) AS {c}"
            if settings.source_column(c) in columns
            else f"NULL AS {c}"
        )
        for c in INPUT_COLUMNS
    )
    return f"SELECT {line} AS line, {select}, false AS bad_json FROM {scan}{order}"


def _read_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    rel: str,
    index: int,
    settings: BuildSettings,
    buckets: int,
    out_dir: Path,
) -> tuple[str | None, int]:
    """Check one file's rows into the user buckets and the quarantine, in one streaming pass.

    Returns a message when the file cannot be used at all (then nothing of it is kept), and
    the rows read.
    """
    rejects = f"rejects_{index}"
    scratch = out_dir / f"reading_{index}"
    fmt = file_format(path)
    try:
        source = _file_source(con, path, settings, rejects)
        # Written aside first: a file that fails half-way (corrupt gzip) leaves nothing behind.
        # Uncompressed: these files live minutes, and compressing them cost 20 % of the read.
        rows = con.execute(
            f"COPY ({_normalise_sql(source, buckets)}) TO {sql_string(str(scratch))} "
            f"(FORMAT parquet, PARTITION_BY (bucket), COMPRESSION uncompressed, "
            f"WRITE_PARTITION_COLUMNS false, FILENAME_PATTERN 'file{index}_{{i}}')",
            [rel, _hashed(settings), []],
        ).fetchone()[0]
        if fmt != "parquet":
            rows += _record_rejects(con, rejects, rel)
        if fmt == "csv":
            _record_blank_lines(con, sql_string(str(path)), rel)
    except _Unusable as unusable:
        return str(unusable), 0
    except duckdb.Error as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        con.execute("DELETE FROM rejected WHERE source_file = ?", [rel])
        return f"cannot be read: {_first_line(exc)}", 0
    for part in scratch.glob("bucket=*/*.parquet"):
        target = out_dir / (
            "quarantine_parts"
            if part.parent.name == f"bucket={QUARANTINE}"
            else f"loads/{part.parent.name}"
        )
        target.mkdir(exist_ok=True)
        part.rename(target / part.name)
    shutil.rmtree(scratch)
    if rows == 0:
        return "file is empty (no data rows)", 0
    return None, rows


def _hashed(settings: BuildSettings) -> list[str]:
    return sorted(t.lower() for t in settings.hashed_taxonomies)


def _missing_columns_message(missing: list[str], settings: BuildSettings) -> str:
    names = ", ".join(
        c if settings.source_column(c) == c else f"{c} (mapped to {settings.source_column(c)!r})"
        for c in missing
    )
    return f"missing required column(s): {names}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]


def _normalise_sql(source: str, buckets: int) -> str:
    """Check and normalise the rows of `source` (INPUT_COLUMNS, all text) into bucketed rows.

    A good row goes to its user's bucket (a hash, so one user's loads meet in one bucket); a
    bad row goes to the quarantine partition with its reason and raw values.
    Parameters: $1 the file's name in the batch, $2 the hashed taxonomies, $3 the sanitised
    client names that collide (all lower case).
    """
    return f"""
WITH t AS (
    SELECT line, bad_json,
           trim(user_id) AS u, trim(segment) AS s,
           coalesce(nullif(trim(timestamp), ''), '0') AS tr,
           coalesce(trim(client), '') AS c, lower(coalesce(trim(device_type), '')) AS d,
           user_id AS r_u, segment AS r_s, timestamp AS r_t, client AS r_c, device_type AS r_d
    FROM ({source})
), v AS (
    SELECT *, regexp_replace(c, '[^A-Za-z0-9]', '', 'g') AS agency,
           d IN {MOBILE_DEVICE_TYPES} AS mobile,
           TRY_CAST(tr AS BIGINT) AS ts
    FROM t
), r AS (
    SELECT *, list_contains($2, CASE WHEN agency = '' THEN '{GLOBAL_TAXONOMY}'
                                     ELSE lower(agency) END) AS hashed
    FROM v
), checked AS (
    SELECT *, CASE
        WHEN bad_json THEN '{INVALID_JSON}'
        WHEN u IS NULL OR u = '' THEN '{MISSING_USER}'
        WHEN {_contains_any("u", WHITESPACE_OR_COLON)} THEN '{_sq(BAD_USER)}'
        WHEN d NOT IN {MOBILE_DEVICE_TYPES + COOKIE_DEVICE_TYPES} THEN '{UNKNOWN_DEVICE}'
        WHEN s IS NULL OR s = '' THEN '{MISSING_SEGMENT}'
        WHEN NOT hashed AND NOT (regexp_full_match(s, '[0-9]{{1,10}}')
             AND TRY_CAST(s AS BIGINT) <= {MAX_SEGMENT_CODE}) THEN '{SEGMENT_NOT_32BIT}'
        WHEN hashed AND {_contains_any("s", WHITESPACE_OR_COLON)}
             THEN '{_sq(BAD_HASHED_SEGMENT)}'
        WHEN ts IS NULL OR NOT regexp_full_match(tr, '-?[0-9]+') THEN '{BAD_TIMESTAMP}'
        WHEN ts < -1 OR ts > {MAX_TIMESTAMP} THEN '{TIMESTAMP_RANGE}'
        WHEN c <> '' AND agency = '' THEN '{CLIENT_NOTHING_LEFT}'
        WHEN list_contains($3, lower(agency)) THEN '{_sq(CLIENT_COLLISION)}'
    END AS reason
    FROM r
)
, normalised AS (
    SELECT *,
           -- S2S-MOB: device IDs are case-insensitive, so one device is one spelling.
           CASE WHEN mobile THEN lower(u) ELSE u END AS user_id
    FROM checked
)
SELECT CASE WHEN reason IS NULL THEN CAST(hash(agency, mobile, user_id) % {buckets} AS VARCHAR)
            ELSE '{QUARANTINE}' END AS bucket,
       agency, c AS client, d AS device_type, mobile, user_id,
       CASE WHEN hashed THEN s ELSE CAST(TRY_CAST(s AS BIGINT) AS VARCHAR) END AS segment,
       ts,
       -- One column, NULL on good rows: six mostly-NULL columns cost 25 % of the write.
       CASE WHEN reason IS NOT NULL THEN json_object(
           'file', $1, 'line', line, 'reason', reason, 'user_id', r_u, 'segment', r_s,
           'timestamp', r_t, 'client', r_c, 'device_type', r_d) END AS quarantine
FROM normalised"""


def _contains_any(column: str, chars: str) -> str:
    """SQL true when `column` holds any of `chars` (4x faster than a regex class in DuckDB)."""
    return "(" + " OR ".join(f"contains({column}, chr({ord(c)}))" for c in chars) + ")"


def _sq(text: str) -> str:
    return text.replace("'", "''")


def _record_rejects(con: duckdb.DuckDBPyConnection, rejects: str, rel: str) -> int:
    """Keep the lines DuckDB's reader rejected (undecodable bytes, malformed CSV) for quarantine.

    Returns how many lines were rejected.
    """
    count = con.execute(
        f"""
        INSERT INTO rejected
        SELECT ?, line,
               CASE any_value(error_type) WHEN 'INVALID ENCODING' THEN '{_sq(UNDECODABLE)}'
                    ELSE '{MALFORMED_CSV}: ' || lower(any_value(error_type)) END,
               left(any_value(csv_line), 200)
        FROM {rejects} GROUP BY line""",
        [rel],
    ).fetchone()[0]
    con.execute(f"DROP TABLE {rejects}")
    return count


def _record_blank_lines(con: duckdb.DuckDBPyConnection, quoted_path: str, rel: str) -> None:
    """DuckDB's CSV reader skips blank lines: note them so line numbers stay physical.

    Read as Latin-1, where every byte is a character, so undecodable lines count too.
    """
    con.execute(
        f"""
        INSERT INTO skipped_lines
        SELECT ?, ordinality FROM read_csv({quoted_path}, columns={{'line': 'VARCHAR'}},
                                          header=false, delim='\\x1e', quote='', escape='',
                                          encoding='latin-1') WITH ORDINALITY
        WHERE line IS NULL OR trim(line) = ''""",
        [rel],
    )


def _parquet_glob(folder: Path) -> str | None:
    """A read_parquet pattern for a folder's files, or None when it holds none."""
    return sql_string(str(folder / "**" / "*.parquet")) if any(folder.rglob("*.parquet")) else None


def _client_collisions(con: duckdb.DuckDBPyConnection, loads_dir: Path) -> dict[str, list[str]]:
    """S2S-NAME: distinct client names that sanitise to one file name (case-insensitively)."""
    if (loads := _parquet_glob(loads_dir)) is None:
        return {}
    rows = con.execute(f"""
        SELECT lower(agency), list(DISTINCT client ORDER BY client)
        FROM read_parquet({loads}) WHERE agency <> ''
        GROUP BY lower(agency) HAVING count(DISTINCT client) > 1""").fetchall()
    return {key: names for key, names in rows}


def _quarantine_collisions(
    con: duckdb.DuckDBPyConnection,
    files: dict[str, Path],
    settings: BuildSettings,
    loads_dir: Path,
    parts_dir: Path,
    collisions: dict[str, list[str]],
) -> None:
    """Move the rows of colliding clients from their buckets to the quarantine (rare path).

    The buckets keep no file or line, so the files are read again for the quarantine rows.
    """
    keys = list(collisions)
    for index, (rel, path) in enumerate(files.items()):
        rejects = f"rescan_{index}"
        source = _file_source(con, path, settings, rejects)
        con.execute(
            f"""
            COPY (SELECT quarantine FROM ({_normalise_sql(source, 1)})
                  WHERE quarantine->>'reason' = '{_sq(CLIENT_COLLISION)}')
            TO {sql_string(str(parts_dir / f"collisions_{index}.parquet"))} (FORMAT parquet)""",
            [rel, _hashed(settings), keys],
        )
        if file_format(path) != "parquet":
            con.execute(f"DROP TABLE IF EXISTS {rejects}")
    for bucket in sorted(loads_dir.glob("bucket=*")):
        kept = bucket.with_name(bucket.name + ".kept")
        kept.mkdir()
        con.execute(
            f"""
            COPY (SELECT * FROM read_parquet({sql_string(str(bucket / "*.parquet"))})
                  WHERE NOT list_contains(?, lower(agency)))
            TO {sql_string(str(kept / "kept.parquet"))} (FORMAT parquet, COMPRESSION uncompressed)
            """,
            [keys],
        )
        shutil.rmtree(bucket)
        kept.rename(bucket)


def _write_outputs(
    con: duckdb.DuckDBPyConnection,
    batch: str,
    out_dir: Path,
    issues: list[FileIssue],
    collisions: dict[str, list[str]],
    buckets: int,
    rows_by_file: dict[str, int],
) -> ReadReport:
    loads_dir, parts_dir = out_dir / "loads", out_dir / "quarantine_parts"
    for bucket in range(buckets):  # every bucket exists, possibly empty: the merge relies on it
        (loads_dir / f"bucket={bucket}").mkdir(exist_ok=True)
    parts = _parquet_glob(parts_dir)
    # A rejected or blank line is left out of the scan, so a row's ordinal undercounts its line
    # by the skipped lines before it: the j-th skipped line r_j (0-based j) shifts every row
    # whose uncorrected line is at least r_j - j.
    from_parts = (
        f"""
        SELECT p.file,
               p.line + (SELECT count(*) FROM shift s
                         WHERE s.source_file = p.file AND s.threshold <= p.line) AS line,
               p.reason, p.user_id, p.segment, p.timestamp, p.client, p.device_type
        FROM (SELECT q.file, CAST(q.line AS BIGINT) AS line, q.reason, q.user_id, q.segment,
                     q.timestamp, q.client, q.device_type
              FROM (SELECT json_transform(quarantine, '{QUARANTINE_JSON}') AS q
                    FROM read_parquet({parts}))) p
        UNION ALL"""
        if parts
        else ""
    )
    con.execute(f"""
        CREATE TABLE quarantine AS
        WITH skipped AS (SELECT source_file, line FROM rejected
                         UNION SELECT source_file, line FROM skipped_lines),
        shift AS (
            SELECT source_file,
                   line - (row_number() OVER (PARTITION BY source_file ORDER BY line) - 1)
                   AS threshold
            FROM skipped)
        {from_parts}
        SELECT source_file AS file, line, reason, raw_user_id AS user_id,
               NULL::VARCHAR AS segment, NULL::VARCHAR AS timestamp, NULL::VARCHAR AS client,
               NULL::VARCHAR AS device_type
        FROM rejected""")
    quarantine_path = out_dir / "quarantine.parquet"
    con.execute(
        f"COPY (SELECT * FROM quarantine ORDER BY file, line) "
        f"TO {sql_string(str(quarantine_path))} (FORMAT parquet)"
    )
    shutil.rmtree(parts_dir)
    loads = _parquet_glob(loads_dir)
    accepted = (
        con.execute(f"SELECT count(*) FROM read_parquet({loads})").fetchone()[0] if loads else 0
    )
    reasons = Counter(
        dict(con.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason").fetchall())
    )
    quarantined_by_file = dict(
        con.execute("SELECT file, count(*) FROM quarantine GROUP BY file").fetchall()
    )
    preview_cursor = con.execute("SELECT * FROM quarantine ORDER BY file, line LIMIT 20")
    names = [d[0] for d in preview_cursor.description]
    preview = [dict(zip(names, row, strict=True)) for row in preview_cursor.fetchall()]
    quarantined = sum(reasons.values())
    return ReadReport(
        batch=batch,
        files={
            name: {"rows": rows, "quarantined": quarantined_by_file.get(name, 0)}
            for name, rows in rows_by_file.items()
            if rows
        },
        file_issues=issues,
        rows_read=accepted + quarantined,
        rows_accepted=accepted,
        rows_quarantined=quarantined,
        quarantine_reasons=dict(reasons.most_common()),
        client_collisions=collisions,
        buckets=buckets,
        loads_dir=loads_dir,
        quarantine_path=quarantine_path,
        quarantine_preview=preview,
    )
