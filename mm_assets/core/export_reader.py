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

from mm_assets.core.build_settings import (
    GLOBAL_TAXONOMY,
    INPUT_COLUMNS,
    REQUIRED_COLUMNS,
    BuildSettings,
)
from mm_assets.core.duckdb_session import open_duckdb, sql_string
from mm_assets.core.s2s_format import MAX_SEGMENT_CODE

FORMATS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet",
           ".jsonl": "jsonl", ".jsonl.gz": "jsonl"}
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
        p for p in batch_dir.rglob("*")
        if p.is_file() and not p.name.startswith(("_", "."))
    )


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), None)


def read_export_batch(batch_dir: Path, out_dir: Path, settings: BuildSettings) -> ReadReport:
    """Read every file of `batch_dir`; write loads (by user bucket) and quarantine to `out_dir`."""
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"export batch folder {batch_dir} does not exist")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    con = open_duckdb(":memory:", settings, out_dir / "spill")
    try:
        con.execute(STAGED_TABLE)
        issues: list[FileIssue] = []
        for path in batch_files(batch_dir):
            rel = path.relative_to(batch_dir).as_posix()
            issue = _stage_file(con, path, rel, settings)
            if issue:
                issues.append(FileIssue(rel, issue))
        collisions = _client_collisions(con)
        if collisions:
            con.execute("UPDATE staged SET reason = ? WHERE reason IS NULL AND list_contains(?, "
                        "lower(agency))", [CLIENT_COLLISION, list(collisions)])
        report = _write_outputs(con, batch_dir.name, out_dir, settings, issues, collisions)
    finally:
        con.close()
    (out_dir / "staging.duckdb").unlink(missing_ok=True)
    shutil.rmtree(out_dir / "spill", ignore_errors=True)
    return report


STAGED_TABLE = """
CREATE TABLE staged (
    source_file VARCHAR, line BIGINT, reason VARCHAR,
    agency VARCHAR, client VARCHAR, mobile BOOLEAN, user_id VARCHAR, segment VARCHAR, ts BIGINT,
    raw_user_id VARCHAR, raw_segment VARCHAR, raw_timestamp VARCHAR, raw_client VARCHAR,
    raw_device_type VARCHAR
)"""


def _source_columns(con: duckdb.DuckDBPyConnection, scan: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]


def _stage_file(
    con: duckdb.DuckDBPyConnection, path: Path, rel: str, settings: BuildSettings
) -> str | None:
    """Stage one file's rows (good and quarantined); return a message when the file is unusable."""
    fmt = file_format(path)
    if fmt is None:
        return f"unsupported file type (expected one of: {', '.join(FORMATS)})"
    if path.stat().st_size == 0:
        return "file is empty (0 bytes)"
    quoted = sql_string(str(path))
    rejects = "rejects_" + str(abs(hash(rel)))
    try:
        if fmt == "csv":
            scan = (f"read_csv({quoted}, all_varchar=true, header=true, delim=',', quote='\"', "
                    f"escape='\"', store_rejects=true, rejects_table='{rejects}', "
                    f"rejects_scan='{rejects}_scan')")
            columns = _source_columns(con, scan)
            missing = [c for c in REQUIRED_COLUMNS if settings.source_column(c) not in columns]
            if missing:
                return _missing_columns_message(missing, settings)
            fields = {c: (_ident(settings.source_column(c))
                          if settings.source_column(c) in columns else "NULL")
                      for c in INPUT_COLUMNS}
            select = ", ".join(f"{expr} AS {name}" for name, expr in fields.items())
            source = f"SELECT ordinality + 1 AS line, {select} FROM {scan} WITH ORDINALITY"
        elif fmt == "jsonl":
            scan = (f"read_csv({quoted}, columns={{'line': 'VARCHAR'}}, header=false, "
                    f"delim='\\x1e', quote='', escape='', store_rejects=true, "
                    f"rejects_table='{rejects}', rejects_scan='{rejects}_scan')")
            # A line that is not JSON shows up whole (cut) in the quarantine's user_id column.
            extract = ", ".join(
                f"CASE WHEN json_valid(j) THEN json_extract_string(j, "
                f"{sql_string('$.' + _json_key(settings.source_column(c)))}) "
                f"{'ELSE left(j, 200) ' if c == 'user_id' else ''}END AS {c}"
                for c in INPUT_COLUMNS)
            source = (f"SELECT ordinality AS line, {extract}, "
                      f"CASE WHEN json_valid(j) THEN json_type(j) <> 'OBJECT' ELSE true END "
                      f"AS bad_json "
                      f"FROM (SELECT ordinality, line AS j FROM {scan} WITH ORDINALITY) "
                      f"WHERE j IS NOT NULL AND trim(j) <> ''")
        else:
            scan = f"read_parquet({quoted}, file_row_number=true)"
            columns = _source_columns(con, scan)
            missing = [c for c in REQUIRED_COLUMNS if settings.source_column(c) not in columns]
            if missing:
                return _missing_columns_message(missing, settings)
            select = ", ".join(
                (f"CAST({_ident(settings.source_column(c))} AS VARCHAR) AS {c}"
                 if settings.source_column(c) in columns else f"NULL AS {c}")
                for c in INPUT_COLUMNS)
            source = f"SELECT file_row_number + 1 AS line, {select} FROM {scan}"
        if fmt != "jsonl":
            source = f"SELECT *, false AS bad_json FROM ({source})"
        before = con.execute("SELECT count(*) FROM staged").fetchone()[0]
        con.execute(_normalise_sql(source),
                    [rel, sorted(t.lower() for t in settings.hashed_taxonomies)])
        if fmt != "parquet":
            _stage_rejects(con, rejects, rel)
        rows = con.execute("SELECT count(*) FROM staged").fetchone()[0] - before
    except duckdb.Error as exc:
        con.execute("DELETE FROM staged WHERE source_file = ?", [rel])
        return f"cannot be read: {_first_line(exc)}"
    if rows == 0:
        return "file is empty (no data rows)"
    return None


def _missing_columns_message(missing: list[str], settings: BuildSettings) -> str:
    names = ", ".join(
        c if settings.source_column(c) == c else f"{c} (mapped to {settings.source_column(c)!r})"
        for c in missing)
    return f"missing required column(s): {names}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300]


def _normalise_sql(source: str) -> str:
    """Check and normalise rows of `source` (columns as in INPUT_COLUMNS, all text) into staged.

    Parameters: $1 the file's name in the batch, $2 the hashed taxonomies (lower case).
    """
    return f"""
INSERT INTO staged
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
        WHEN {_contains_any('u', WHITESPACE_OR_COLON)} THEN '{_sq(BAD_USER)}'
        WHEN d NOT IN {MOBILE_DEVICE_TYPES + COOKIE_DEVICE_TYPES} THEN '{UNKNOWN_DEVICE}'
        WHEN s IS NULL OR s = '' THEN '{MISSING_SEGMENT}'
        WHEN NOT hashed AND NOT (regexp_full_match(s, '[0-9]{{1,10}}')
             AND TRY_CAST(s AS BIGINT) <= {MAX_SEGMENT_CODE}) THEN '{SEGMENT_NOT_32BIT}'
        WHEN hashed AND {_contains_any('s', WHITESPACE_OR_COLON)}
             THEN '{_sq(BAD_HASHED_SEGMENT)}'
        WHEN ts IS NULL OR NOT regexp_full_match(tr, '-?[0-9]+') THEN '{BAD_TIMESTAMP}'
        WHEN ts < -1 OR ts > {MAX_TIMESTAMP} THEN '{TIMESTAMP_RANGE}'
        WHEN c <> '' AND agency = '' THEN '{CLIENT_NOTHING_LEFT}'
    END AS reason
    FROM r
)
SELECT $1, line, reason, agency, c, mobile,
       -- S2S-MOB: device IDs are case-insensitive, so one device is one spelling.
       CASE WHEN mobile THEN lower(u) ELSE u END,
       CASE WHEN hashed THEN s ELSE CAST(TRY_CAST(s AS BIGINT) AS VARCHAR) END,
       ts,
       CASE WHEN reason IS NOT NULL THEN r_u END, CASE WHEN reason IS NOT NULL THEN r_s END,
       CASE WHEN reason IS NOT NULL THEN r_t END, CASE WHEN reason IS NOT NULL THEN r_c END,
       CASE WHEN reason IS NOT NULL THEN r_d END
FROM checked"""


def _contains_any(column: str, chars: str) -> str:
    """SQL true when `column` holds any of `chars` (4x faster than a regex class in DuckDB)."""
    return "(" + " OR ".join(f"contains({column}, chr({ord(c)}))" for c in chars) + ")"


def _sq(text: str) -> str:
    return text.replace("'", "''")


def _stage_rejects(
    con: duckdb.DuckDBPyConnection, rejects: str, rel: str
) -> None:
    """Quarantine the lines DuckDB's reader rejected and correct the good rows' line numbers.

    A rejected line is left out of the scan, so a row's ordinal undercounts its line by the
    number of rejected lines before it: the j-th rejected line r_j (1-based) shifts every row
    whose uncorrected line is at least r_j - (j - 1).
    """
    rows = con.execute(
        f"SELECT line, any_value(error_type), any_value(csv_line) FROM {rejects} "
        "GROUP BY line ORDER BY line").fetchall()
    con.execute(f"DROP TABLE {rejects}")
    if not rows:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE shift (threshold BIGINT)")
    con.executemany("INSERT INTO shift VALUES (?)",
                    [[line - j] for j, (line, _, _) in enumerate(rows)])
    con.execute("UPDATE staged SET line = line + (SELECT count(*) FROM shift "
                "WHERE threshold <= staged.line) WHERE source_file = ? AND line >= ?",
                [rel, rows[0][0]])
    con.executemany(
        "INSERT INTO staged (source_file, line, reason, raw_user_id) VALUES (?, ?, ?, ?)",
        [[rel, line,
          UNDECODABLE if kind == "INVALID ENCODING" else f"{MALFORMED_CSV}: {kind.lower()}",
          (text or "")[:200]] for line, kind, text in rows])


def _client_collisions(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """S2S-NAME: distinct client names that sanitise to one file name (case-insensitively)."""
    rows = con.execute("""
        SELECT lower(agency), list(DISTINCT client ORDER BY client)
        FROM staged WHERE reason IS NULL AND agency <> ''
        GROUP BY lower(agency) HAVING count(DISTINCT client) > 1""").fetchall()
    return {key: names for key, names in rows}


def _write_outputs(
    con: duckdb.DuckDBPyConnection, batch: str, out_dir: Path, settings: BuildSettings,
    issues: list[FileIssue], collisions: dict[str, list[str]],
) -> ReadReport:
    accepted, total = con.execute(
        "SELECT count(*) FILTER (WHERE reason IS NULL), count(*) FROM staged").fetchone()
    budget = max(settings.memory_budget_bytes // 2, 64 * 2**20)
    buckets = max(1, -(-accepted * MERGE_BYTES_PER_ROW // budget))
    loads_dir = out_dir / "loads"
    loads_dir.mkdir()
    # Every bucket exists (possibly empty) so the merge can rely on the layout.
    con.execute(f"""
        COPY (SELECT agency, mobile, user_id, segment, ts,
                     hash(agency, mobile, user_id) % {buckets} AS bucket
              FROM staged WHERE reason IS NULL)
        TO {sql_string(str(loads_dir))} (FORMAT parquet, PARTITION_BY (bucket),
                                          COMPRESSION lz4_raw, WRITE_PARTITION_COLUMNS false)""")
    quarantine_path = out_dir / "quarantine.parquet"
    con.execute(f"""
        COPY (SELECT source_file AS file, line, reason, raw_user_id AS user_id,
                     raw_segment AS segment, raw_timestamp AS timestamp, raw_client AS client,
                     raw_device_type AS device_type
              FROM staged WHERE reason IS NOT NULL ORDER BY file, line)
        TO {sql_string(str(quarantine_path))} (FORMAT parquet)""")
    reasons = Counter(dict(con.execute(
        "SELECT reason, count(*) FROM staged WHERE reason IS NOT NULL GROUP BY reason"
    ).fetchall()))
    files = {
        name: {"rows": rows, "quarantined": bad}
        for name, rows, bad in con.execute(
            "SELECT source_file, count(*), count(reason) FROM staged GROUP BY source_file "
            "ORDER BY source_file").fetchall()
    }
    preview_cursor = con.execute(
        "SELECT source_file AS file, line, reason, raw_user_id AS user_id, raw_segment AS segment,"
        " raw_timestamp AS timestamp, raw_client AS client, raw_device_type AS device_type "
        "FROM staged WHERE reason IS NOT NULL ORDER BY file, line LIMIT 20")
    names = [d[0] for d in preview_cursor.description]
    preview = [dict(zip(names, row, strict=True)) for row in preview_cursor.fetchall()]
    return ReadReport(
        batch=batch, files=files, file_issues=issues, rows_read=total, rows_accepted=accepted,
        rows_quarantined=total - accepted, quarantine_reasons=dict(reasons.most_common()),
        client_collisions=collisions, buckets=buckets, loads_dir=loads_dir,
        quarantine_path=quarantine_path, quarantine_preview=preview,
    )
