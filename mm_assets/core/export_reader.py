"""Read one export batch (a folder of raw audience files) into normalised segment loads.

The input contract is in the README. Every row that cannot be used goes to the quarantine table
with its file, line (or row) number, reason and raw bytes; a file that cannot be read at all is
reported by name. Nothing is dropped without a count: per file, rows seen = rows accepted + rows
quarantined.

DuckDB does the reading and the row checks (vectorised, spilling to disk past the memory
budget). CSV and JSONL files are read one physical line per row (a line is a row, whatever its
quotes), so a malformed line costs that line only and line numbers are physical. The good rows
come out of DuckDB as Arrow batches and are written as Arrow IPC files, split into hash buckets
of users so the merge can work on a few buckets at a time within the memory budget
(core/bucket_loads.py: the handoff's one definition).
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import stat
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mm_assets.core.batch_work import LOADS, QUARANTINE_TABLE
from mm_assets.core.bucket_loads import (
    BUCKETS_MERGED_AT_ONCE,
    LOAD_BYTES_PER_ROW,
    LOAD_SCHEMA,
    BucketWriter,
    bucket_dirs,
    count_loads,
    read_bucket,
    replace_bucket,
)
from mm_assets.core.build_settings import (
    GLOBAL_TAXONOMY,
    INPUT_COLUMNS,
    MAX_NAME_PART_CHARS,
    REQUIRED_COLUMNS,
    BuildSettings,
)
from mm_assets.core.duckdb_session import open_duckdb, sql_glob, sql_string
from mm_assets.core.s2s_format import MAX_LINE_CHARS, MAX_SEGMENT_CODE
from mm_assets.core.user_buckets import user_bucket_sql, user_key_sql

try:  # isal inflates about 3x faster than the standard library (as in the validator)
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _InflateError
except ImportError:  # pragma: no cover - depends on the environment
    _gzip = gzip
    _InflateError = zlib.error
UNREADABLE_STREAM = (OSError, EOFError, zlib.error, _InflateError)

FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
}
MOBILE_DEVICE_TYPES = ("idfa", "gaid", "ctv", "mobile")  # S2S-MOB: Mobile: 1
COOKIE_DEVICE_TYPES = ("", "cookie")
# What a user ID and a hashed segment code may contain: printable ASCII without the space and
# ':' that lay out a row (S2S-FMT), so no control character, no Unicode space or format
# character can reach a file (RE2 ranges: ! to 9, ; to ~).
TOKEN_CHARS = "[!-9;-~]+"
SEGMENT_DIGITS = "[0-9]{1,10}"  # S2S-SEG, before its value is compared with the maximum
# S2S-SEG: a code of fewer digits than the maximum has cannot exceed it, so only codes of as
# many digits are cast and compared (the cast was a tenth of the row checks' CPU).
SHORT_SEGMENT_DIGITS = len(str(MAX_SEGMENT_CODE)) - 1
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
# Parquet integer types whose every value is a BIGINT (read as numbers, not as text)
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")
# DuckDB needs roughly this much memory per loaded row to group it (measured on the
# benchmark's export); it sizes the user buckets so each merge fits the memory budget.
MERGE_BYTES_PER_ROW = 240
# DuckDB's max_line_size default: a line of this many bytes or more (its line end not counted)
# is quarantined; DuckDB refuses one of exactly this length too.
MAX_LINE_BYTES = 2_000_000
MAX_OVERLONG_LINES = 10_000  # past this many, a file is no export
# A CSV header is looked for in the first MiB: past it the file is no export (or a gzip bomb).
MAX_HEADER_BYTES = 2**20
# Four bytes that never occur in an export's text: CSV and JSONL lines are read whole.
LINE_DELIMITER = "\x1e\x1f\x1e\x1f"
LINE_END = re.compile(rb"[\r\n]")
# CSV fields of one line (RFC 4180 quoting, `""` inside quotes), in RE2 syntax.
CSV_FIELD = '"(?:[^"]|"")*"|[^,"]*'
CSV_LINE = f"(?:{CSV_FIELD})(?:,(?:{CSV_FIELD}))*"

# Quarantine reasons: fixed texts so their counts add up; the rule name where one applies.
MISSING_USER = "missing user_id"
BAD_USER = "user_id has a character other than printable ASCII, or a space or ':' (S2S-FMT)"
UNKNOWN_DEVICE = "unknown device_type"
MISSING_SEGMENT = "missing segment"
SEGMENT_NOT_32BIT = "segment is not a 32-bit integer and its taxonomy is not hashed (S2S-SEG)"
BAD_HASHED_SEGMENT = (
    "segment has a character other than printable ASCII, or a space or ':' (S2S-FMT)"
)
BAD_TIMESTAMP = "timestamp is not an integer (S2S-TS)"
TIMESTAMP_RANGE = "timestamp is not -1, 0 or Unix seconds (S2S-TS)"
LINE_TOO_LONG = (
    f"user_id and load do not fit on one line of fewer than {MAX_LINE_CHARS + 1:,} "
    f"characters (S2S-LINE)"
)
CLIENT_NOTHING_LEFT = "client name has no letters or digits (S2S-NAME)"
CLIENT_TOO_LONG = f"client name has more than {MAX_NAME_PART_CHARS} letters and digits (S2S-NAME)"
CLIENT_COLLISION = "client name sanitises to the same file name as another client (S2S-NAME)"
INVALID_JSON = "line is not a JSON object"
DUPLICATE_KEY = "JSON object names a column twice (which value holds the data is ambiguous)"
NOT_A_SCALAR = "a JSON value we read is true/false, an array or an object (not a string or number)"
UNDECODABLE = "undecodable bytes (not UTF-8)"
MALFORMED_QUOTES = "malformed CSV row: a quote is not closed, or text follows a closing quote"
FIELD_COUNT = "malformed CSV row: not as many fields as the header has"
OVERLONG_LINE = f"line is {MAX_LINE_BYTES:,} bytes or longer (a corrupt file, or a gzip bomb)"
UNREADABLE_LINE = "line could not be read"
HIDDEN_FOLDER = (
    "not read: a folder whose name starts with '_' or '.' holds no data "
    "(Spark's _temporary attempts, hidden folders)"
)


@dataclass(frozen=True)
class FileIssue:
    """A whole file that could not be used; `blocks_batch` when it may hold data we lost."""

    file: str
    message: str
    blocks_batch: bool = True


@dataclass
class ReadReport:
    batch: str
    # file -> {"rows": seen, "accepted": n, "quarantined": n}; rows = accepted + quarantined
    files: dict[str, dict[str, int]]
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

    @property
    def complete(self) -> bool:
        """Every file's data was read: no file that may hold rows was left out."""
        return not any(issue.blocks_batch for issue in self.file_issues)


def _is_data_name(name: str) -> bool:
    return not name.startswith(("_", "."))


def batch_files(batch_dir: Path) -> tuple[list[Path], list[FileIssue]]:
    """The data files of a batch, and the entries refused by name.

    Markers and hidden files (`_SUCCESS`, `.x`) are not data, nor is anything in a folder so
    named (Spark's `_temporary/` attempts, hidden folders): such a folder is named, as a notice
    that blocks nothing, and never read. Links are never followed (they
    could lead out of the batch, to files the export never held), nor is anything that is not
    a regular file or a folder opened.
    """
    files: list[Path] = []
    refused: list[FileIssue] = []
    for root, dirs, names in os.walk(batch_dir, followlinks=False):
        folder = Path(root)
        for name in sorted(dirs):
            rel = _escaped((folder / name).relative_to(batch_dir).as_posix())
            if (folder / name).is_symlink():
                refused.append(
                    FileIssue(rel, "refused: a link to a folder (links are not followed)")
                )
            elif not _is_data_name(name):
                refused.append(FileIssue(rel + "/", HIDDEN_FOLDER, blocks_batch=False))
        dirs[:] = sorted(d for d in dirs if not (folder / d).is_symlink() and _is_data_name(d))
        for name in names:
            path = folder / name
            if not _is_data_name(name):
                continue
            mode = path.lstat().st_mode
            rel = path.relative_to(batch_dir).as_posix()
            if not _is_utf8(rel):
                # Named by its bytes escaped: the name travels on through UTF-8 only.
                refused.append(FileIssue(_escaped(rel), "refused: the file name is not UTF-8"))
            elif stat.S_ISLNK(mode):
                target = os.readlink(path)
                refused.append(
                    FileIssue(rel, f"refused: a link to {target} (links are not followed)")
                )
            elif not stat.S_ISREG(mode):
                refused.append(FileIssue(rel, "refused: not a regular file"))
            else:
                files.append(path)
    return sorted(files), sorted(refused, key=lambda i: i.file)


def _is_utf8(name: str) -> bool:
    """Whether a name from the file system was valid UTF-8 (undecodable bytes come back as
    surrogates, which no UTF-8 text, DuckDB's included, can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(name: str) -> str:
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), None)


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


@contextmanager
def _opened(path: Path) -> Iterator[str]:
    """A name DuckDB can open the file by: its descriptor, opened here without following a
    link (so a link swapped in after listing is refused too), and free of glob characters
    (DuckDB expands `*`, `?` and `[` in a path)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unusable("refused: not a regular file")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def read_export_batch(
    batch_dir: Path, out_dir: Path, settings: BuildSettings, *, buckets: int | None = None
) -> ReadReport:
    """Read every file of `batch_dir`; write loads (by user bucket) and quarantine to `out_dir`.

    One streaming pass per file: each row is checked and written straight to its user bucket,
    or to the quarantine, so memory does not grow with the batch. Files are read side by side
    (one per thread, each its own DuckDB cursor): a Parquet file of one row group, or a CSV's
    numbered line scan, keeps only one core busy. `buckets` forces the number of user buckets
    (`user_bucket_sql`); by default it follows the batch's size and the memory budget.
    """
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"export batch folder {batch_dir} does not exist")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    loads_dir, parts_dir = out_dir / LOADS, out_dir / "quarantine_parts"
    loads_dir.mkdir(parents=True)
    parts_dir.mkdir()
    files, issues = batch_files(batch_dir)
    # Half the budget for the buckets being merged, shared by those merged at once.
    budget = max(settings.memory_budget_bytes // (2 * BUCKETS_MERGED_AT_ONCE), 64 * 2**20)
    if buckets is None:
        per_row = MERGE_BYTES_PER_ROW + LOAD_BYTES_PER_ROW
        buckets = max(1, -(-sum(map(_estimated_rows, files)) * per_row // budget))
    con = open_duckdb(":memory:", settings, out_dir / "spill")
    # Files side by side, and each query's own threads for what is left of the cores: with as
    # many files in flight as cores, one thread per query (measured at 20 M rows, 4 files on
    # 2 cores: read 4.1-4.3 s wall, CPU 7.7-7.9 s, against 4.4-4.8 s and 8.1-8.9 s when each
    # query had 2 threads and they contended for the cores).
    files_at_once = max(1, min(settings.threads, len(files)))
    con.execute(f"SET threads = {max(1, settings.threads // files_at_once)}")
    try:
        con.execute(REJECTED_TABLE)
        cr_files: dict[str, Path] = {}
        client_names: set[tuple[str, str]] = set()  # (agency, raw client name) of good rows

        def read_one(item: tuple[int, Path]) -> tuple[FileIssue | None, tuple[int, int]]:
            index, path = item
            rel = path.relative_to(batch_dir).as_posix()
            with con.cursor() as cursor:
                return _read_file(
                    cursor, path, rel, index, settings, buckets, out_dir, cr_files, client_names
                )

        with ThreadPoolExecutor(max_workers=files_at_once) as pool:
            results = list(pool.map(read_one, enumerate(files)))
        con.execute(f"SET threads = {max(1, settings.threads)}")  # the rest is one query at a time
        seen: dict[str, tuple[int, int]] = {}  # file -> (rows seen, rows accepted)
        for path, (issue, counts) in zip(files, results, strict=True):
            seen[path.relative_to(batch_dir).as_posix()] = counts
            if issue:
                issues.append(issue)
        collisions = _client_collisions(client_names)
        if collisions:
            usable = {rel: batch_dir / rel for rel, (rows, _) in seen.items() if rows}
            moved = _quarantine_collisions(con, usable, settings, loads_dir, parts_dir, collisions)
            seen = {rel: (rows, ok - moved.get(rel, 0)) for rel, (rows, ok) in seen.items()}
        report = _write_outputs(
            con,
            batch_dir.name,
            out_dir,
            sorted(issues, key=lambda i: i.file),
            collisions,
            buckets,
            seen,
            cr_files,
        )
    finally:
        con.close()
    shutil.rmtree(out_dir / "spill", ignore_errors=True)
    return report


# Lines DuckDB's line reader rejected (undecodable bytes, overlong), per file, with their bytes.
REJECTED_TABLE = """
CREATE TABLE rejected (source_file VARCHAR, line BIGINT, reason VARCHAR, raw BLOB)"""
# Rows per Arrow batch out of DuckDB: large enough that sorting a batch into its buckets costs
# little per row, small enough that the batches in flight stay a few MB per thread.
BATCH_ROWS = 2**17
QUARANTINE_PART = "quarantine.parquet"  # a file's quarantined rows, in its scratch folder
QUARANTINE_JSON = (
    '{"file": "VARCHAR", "line": "BIGINT", "reason": "VARCHAR", '
    '"user_id": "VARCHAR", "segment": "VARCHAR", "timestamp": "VARCHAR", '
    '"client": "VARCHAR", "device_type": "VARCHAR", "raw": "VARCHAR"}'
)


def _estimated_rows(path: Path) -> int:
    """Rows to expect from a file, to size the user buckets before reading."""
    if file_format(path) == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException):
            return 0
    size = path.stat().st_size
    return size * (5 if _is_gzip(path) else 1) // 40


def _source_columns(con: duckdb.DuckDBPyConnection, scan: str) -> dict[str, str]:
    """Column name -> DuckDB type."""
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}


class _Unusable(Exception):
    """A file that cannot be used at all; the message says why."""

    def __init__(self, message: str, blocks_batch: bool = True) -> None:
        super().__init__(message)
        self.blocks_batch = blocks_batch


def _open_text_stream(name: str, gz: bool):
    return _gzip.open(name, "rb") if gz else open(name, "rb")


def _measure_lines(name: str, gz: bool) -> tuple[list[int], bool]:
    """The lines of MAX_LINE_BYTES or more, and whether the file holds a CR at all.

    Lines are counted as DuckDB's line reader counts them: every CR and every LF ends one (so
    CR LF is a line and an empty line). DuckDB rejects a long line up to some tens of MB but
    drops a longer one without a word (measured: 64 MiB, with or without gzip), so every CSV
    and JSONL file is streamed here, in chunks smaller than the limit.
    """
    found: list[int] = []
    line, run, has_cr = 1, 0, False  # the current line and its bytes so far
    with _open_text_stream(name, gz) as stream:
        while chunk := stream.read(2**20):
            has_cr = has_cr or b"\r" in chunk
            ends = [i for i in (chunk.find(b"\n"), chunk.find(b"\r") if has_cr else -1) if i >= 0]
            if not ends:
                run += len(chunk)
                continue
            if run + min(ends) >= MAX_LINE_BYTES:
                found.append(line)
            # Lines wholly inside the chunk are shorter than the chunk, so within the limit.
            line += chunk.count(b"\n") + (chunk.count(b"\r") if has_cr else 0)
            run = len(chunk) - max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) - 1
            if len(found) > MAX_OVERLONG_LINES:
                raise _Unusable(
                    f"cannot be read: more than {MAX_OVERLONG_LINES:,} lines are "
                    f"{MAX_LINE_BYTES:,} bytes or longer (not an export, or a gzip bomb)"
                )
    if run >= MAX_LINE_BYTES:
        found.append(line)
    return found, has_cr


def _first_bytes(name: str, gz: bool) -> bytes:
    """The file's first MAX_HEADER_BYTES (decompressed), to name what is wrong in its terms."""
    try:
        with _open_text_stream(name, gz) as stream:
            return stream.read(MAX_HEADER_BYTES)
    except UNREADABLE_STREAM as exc:
        raise _Unusable(f"cannot be read: corrupt or truncated gzip ({_first_line(exc)})") from exc


def _csv_header(name: str, gz: bool) -> list[str]:
    """The CSV header's column names, read here so that a bad header is named as such."""
    head = _first_bytes(name, gz)
    if not head:
        raise _Unusable("file is empty (the gzip holds no data)", blocks_batch=False)
    # The header ends where DuckDB's line reader ends the first line: at a CR or an LF.
    end = LINE_END.search(head)
    line = head[: end.start()] if end else head
    if end is None and len(head) == MAX_HEADER_BYTES:
        raise _Unusable(
            f"cannot be read: no line end in the first {MAX_HEADER_BYTES:,} bytes, so no CSV "
            f"header (a corrupt file, or a gzip bomb)"
        )
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unusable("cannot be read: the header line is not UTF-8") from exc
    try:
        return [c.strip() for c in next(csv.reader([text]))] if text.strip() else []
    except csv.Error as exc:
        raise _Unusable(f"cannot be read: malformed header line ({exc})") from exc


def _line_scan(name: str, gz: bool, rejects: str) -> str:
    """Every physical line as one text column; rejected lines (not UTF-8) go to `rejects`.

    The read buffer is a few lines' worth, not DuckDB's default: on a gzip bomb (one endless
    line) the default's buffers made peak memory swing from 250 to 550 MB with the scheduling;
    at this size it stays near 230 MB (and ordinary files read as fast).
    """
    return (
        f"read_csv({sql_string(name)}, columns={{'line': 'VARCHAR'}}, header=false, "
        f"auto_detect=false, delim={sql_string(LINE_DELIMITER)}, quote='', escape='', "
        f"new_line='\\n', strict_mode=false, max_line_size={MAX_LINE_BYTES}, "
        f"buffer_size={4 * MAX_LINE_BYTES}, "
        f"compression='{'gzip' if gz else 'none'}', store_rejects=true, "
        f"rejects_table='{rejects}', rejects_scan='{rejects}_scan')"
    )


def _check_columns(available: list[str], settings: BuildSettings) -> None:
    missing = [c for c in REQUIRED_COLUMNS if settings.source_column(c) not in available]
    if missing:
        raise _Unusable(_missing_columns_message(missing, settings, available))
    for c in INPUT_COLUMNS:
        if available.count(settings.source_column(c)) > 1:
            raise _Unusable(
                f"the file names column {settings.source_column(c)!r} more than once: which "
                f"one holds the data is ambiguous"
            )


def _file_source(
    con: duckdb.DuckDBPyConnection, name: str, path: Path, settings: BuildSettings, rejects: str
) -> tuple[str, bool]:
    """SQL yielding the file's rows as text columns (INPUT_COLUMNS), its line, bad_row (a
    reason when the row cannot even be split into columns) and raw (its line, base64); and
    whether its timestamp column is an integer column instead (Parquet: no text round trip).

    `name` is what DuckDB opens (see _opened); lines DuckDB rejects go to `rejects`.
    """
    fmt = file_format(path)
    if fmt is None:
        raise _Unusable(f"unsupported file type (expected one of: {', '.join(FORMATS)})")
    if os.stat(name).st_size == 0:  # the opened file, not whatever the path names now
        raise _Unusable("file is empty (0 bytes)", blocks_batch=False)
    gz = _is_gzip(path)
    if fmt == "jsonl":
        if gz and not _first_bytes(name, gz):
            raise _Unusable("file is empty (the gzip holds no data)", blocks_batch=False)
        path = {c: sql_string("$." + _json_key(settings.source_column(c))) for c in INPUT_COLUMNS}
        extract = ", ".join(
            f"CASE WHEN json_valid(j) THEN json_extract_string(j, {path[c]}) END AS {c}"
            for c in INPUT_COLUMNS
        )
        # A key we read that the object names twice: which value holds the data is ambiguous.
        ours = "[" + ", ".join(sql_string(settings.source_column(c)) for c in INPUT_COLUMNS) + "]"
        named = f"list_filter(json_keys(j), lambda k: list_contains({ours}, k))"
        # A value is a string, a number or null: `true`, `[...]` or `{...}` would otherwise be
        # read as its JSON text (a user ID `true`, a client `["Acme"]` routed to Acme).
        paths = "[" + ", ".join(path.values()) + "]"
        structured = f"list_has_any(json_type(j, {paths}), ['BOOLEAN', 'ARRAY', 'OBJECT'])"
        return (
            f"SELECT line, {extract}, "
            f"CASE WHEN NOT json_valid(j) OR json_type(j) <> 'OBJECT' THEN '{INVALID_JSON}' "
            f"WHEN len({named}) <> len(list_distinct({named})) THEN '{_sq(DUPLICATE_KEY)}' "
            f"WHEN {structured} THEN '{_sq(NOT_A_SCALAR)}' END "
            f"AS bad_row, to_base64(encode(raw)) AS raw "
            f"FROM (SELECT ordinality AS line, line AS raw, line AS j "
            f"      FROM {_line_scan(name, gz, rejects)} WITH ORDINALITY) "
            f"WHERE j IS NOT NULL AND trim(j, ' ' || chr(9)) <> ''"
        ), False
    if fmt == "csv":
        header = _csv_header(name, gz)
        _check_columns(header, settings)
        field_of = {
            c: header.index(settings.source_column(c)) + 1
            for c in INPUT_COLUMNS
            if settings.source_column(c) in header
        }
        select = ", ".join(
            f"nullif(f[{field_of[c]}], '') AS {c}" if c in field_of else f"NULL AS {c}"
            for c in INPUT_COLUMNS
        )
        # A line without quotes is split on commas (the common case, fast), as is one whose only
        # quoted fields are empty (`""`, what many writers put for an empty string) once they
        # are emptied; any other is split by the RFC 4180 pattern (50x slower) and unquoted.
        # The simple split is computed for each column that uses it (DuckDB inlines it), so
        # it stays scalar.
        return (
            f"""
SELECT line, {select},
       CASE WHEN f IS NULL THEN '{_sq(MALFORMED_QUOTES)}'
            WHEN len(f) <> {len(header)} THEN '{_sq(FIELD_COUNT)}' END AS bad_row,
       to_base64(encode(raw)) AS raw
FROM (SELECT line, raw,
             CASE WHEN plain IS NOT NULL THEN string_split(plain, ',')
                  WHEN regexp_full_match(j, {sql_string(CSV_LINE)}) THEN list_transform(
                      -- Every field after a comma: `(?:^|,)` would match an empty first
                      -- field as an empty match, after which the scan skips the next field.
                      regexp_extract_all(',' || j, {sql_string(f",({CSV_FIELD})")}, 1),
                      lambda x: CASE WHEN starts_with(x, '"')
                                     THEN replace(x[2:-2], '""', '"') ELSE x END)
             END AS f
      FROM (SELECT line, raw, j,
                   CASE WHEN NOT contains(j, '"') THEN j
                        WHEN NOT contains(e, '"') THEN e[2:-2] END AS plain
            FROM (SELECT line, raw, j,
                         replace(replace(',' || j || ',', ',"",', ',,'), ',"",', ',,') AS e
                  FROM (SELECT ordinality AS line, line AS raw, line AS j
                        FROM {_line_scan(name, gz, rejects)} WITH ORDINALITY)))
      WHERE line > 1 AND j IS NOT NULL AND trim(j, ' ' || chr(9)) <> '')""",
            False,
        )
    scan = f"read_parquet({sql_string(name)}, file_row_number=true)"
    columns = _source_columns(con, scan)
    # Names are case-sensitive (the contract), DuckDB's are not: it renames the second of
    # `User_Id` and `user_id` to `user_id_1`, and the second of two `user_id` too. The file's
    # own names are checked, and each is bound by the name DuckDB gave its column.
    try:
        names = pq.read_schema(name).names
    except (OSError, pa.ArrowException):
        names = list(columns)[:-1]  # DuckDB reads what Arrow cannot: its names, then
    _check_columns(names, settings)
    duck_name = dict(zip(names, columns, strict=False))
    present = [c for c in INPUT_COLUMNS if settings.source_column(c) in duck_name]

    def column(c: str) -> str:
        return _ident(duck_name[settings.source_column(c)])

    blobs = [c for c in present if columns[duck_name[settings.source_column(c)]] == "BLOB"]
    # BINARY columns hold bytes: decoded as UTF-8, or the row is quarantined with its bytes
    # (never the escaped text DuckDB would cast them to).
    timestamp_type = (
        columns[duck_name[settings.source_column("timestamp")]] if "timestamp" in present else None
    )
    integer_timestamps = timestamp_type in INTEGER_TYPES
    select = ", ".join(
        (
            f"CAST({column(c)} AS BIGINT) AS {c}"
            if c == "timestamp" and integer_timestamps
            else f"try(decode({column(c)})) AS {c}"
            if c in blobs
            else f"CAST({column(c)} AS VARCHAR) AS {c}"
            if c in present
            else f"NULL AS {c}"
        )
        for c in INPUT_COLUMNS
    )
    undecodable = [
        f"WHEN {column(c)} IS NOT NULL AND try(decode({column(c)})) IS NULL "
        f"THEN to_base64({column(c)})"
        for c in blobs
    ]
    raw = f"CASE {' '.join(undecodable)} END" if blobs else "NULL"
    return (
        # Our own columns are named apart from any the file may have (`line`, `raw`).
        f"SELECT mm__line AS line, {select}, CASE WHEN mm__raw IS NOT NULL THEN "
        f"'{_sq(UNDECODABLE)}' END AS bad_row, mm__raw AS raw "
        f"FROM (SELECT file_row_number + 1 AS mm__line, *, {raw} AS mm__raw FROM {scan})"
    ), integer_timestamps


def _read_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    rel: str,
    index: int,
    settings: BuildSettings,
    buckets: int,
    out_dir: Path,
    cr_files: dict[str, Path],
    client_names: set[tuple[str, str]],
) -> tuple[FileIssue | None, tuple[int, int]]:
    """Check one file's rows into the user buckets and the quarantine, in one streaming pass.

    Returns the problem when the file cannot be used at all (then nothing of it is kept), and
    (rows seen, rows accepted). A file holding a CR is noted in `cr_files`; the (agency, raw
    client name) pairs of its good rows are added to `client_names`.
    """
    rejects = f"rejects_{index}"
    scratch = out_dir / f"reading_{index}"
    fmt = file_format(path)
    try:
        with _opened(path) as name:
            source, integer_timestamps = _file_source(con, name, path, settings, rejects)
            # Written aside first: a file that fails half-way (corrupt gzip) leaves nothing.
            rows, accepted, names = _write_checked_rows(
                con.sql(
                    _normalise_sql(source, buckets, integer_timestamps),
                    params=[rel, _hashed(settings), []],
                ),
                scratch,
                f"file{index}",
            )
            if fmt != "parquet":
                rejected, has_cr = _record_rejects(con, rejects, rel, name, _is_gzip(path))
                rows += rejected
                if has_cr:
                    cr_files[rel] = path
    except _Unusable as unusable:
        shutil.rmtree(scratch, ignore_errors=True)
        return FileIssue(rel, str(unusable), unusable.blocks_batch), (0, 0)
    except (duckdb.Error, pa.ArrowException, *UNREADABLE_STREAM) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        con.execute("DELETE FROM rejected WHERE source_file = ?", [rel])
        return FileIssue(rel, f"cannot be read: {_explain(exc, path)}"), (0, 0)
    for part in scratch.glob("bucket=*/*"):
        target = out_dir / LOADS / part.parent.name
        target.mkdir(exist_ok=True)
        part.rename(target / part.name)
    if (scratch / QUARANTINE_PART).exists():
        (scratch / QUARANTINE_PART).rename(out_dir / f"quarantine_parts/file{index}.parquet")
    shutil.rmtree(scratch, ignore_errors=True)
    client_names.update(names)
    if rows == 0:
        return FileIssue(rel, "file is empty (no data rows)", blocks_batch=False), (0, 0)
    return None, (rows, accepted)


def _write_checked_rows(
    checked: duckdb.DuckDBPyRelation, scratch: Path, file_name: str
) -> tuple[int, int, set[tuple[str, str]]]:
    """Stream the checked rows (`_normalise_sql`) into `scratch`: good rows into their user
    buckets (bucket_loads.BucketWriter), the others into QUARANTINE_PART. Returns rows seen,
    rows accepted and the good rows' (agency, raw client name) pairs."""
    scratch.mkdir(parents=True, exist_ok=True)
    loads = BucketWriter(scratch, file_name)
    quarantine: pq.ParquetWriter | None = None
    rows, names = 0, set()
    try:
        for batch in checked.to_arrow_reader(BATCH_ROWS):
            rows += batch.num_rows
            bucket = batch.column("bucket")
            if bucket.null_count:  # rows that cannot be used (rare)
                bad = batch.filter(pc.is_null(bucket)).select(["quarantine"])
                if quarantine is None:
                    quarantine = pq.ParquetWriter(scratch / QUARANTINE_PART, bad.schema)
                quarantine.write_batch(bad)
                batch = batch.filter(pc.is_valid(bucket))
                bucket = batch.column("bucket")
            names |= _client_names(batch)
            loads.write(_load_columns(batch), bucket)
    finally:
        loads.close()
        if quarantine is not None:
            quarantine.close()
    return rows, loads.rows, names


def _client_names(batch: pa.RecordBatch) -> set[tuple[str, str]]:
    """The distinct (agency, raw client name) pairs of a batch of good rows (`client` is NULL
    where the raw name is its file name part, the common case)."""
    agency, client = batch.column("agency"), batch.column("client")
    if client.null_count == len(client):
        return {(name, name) for name in pc.unique(agency).to_pylist()}
    # An agency is letters and digits only, so the first line end separates the two.
    pairs = pc.binary_join_element_wise(agency, pc.coalesce(client, agency), "\n")
    return {tuple(pair.split("\n", 1)) for pair in pc.unique(pairs).to_pylist()}


def _load_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A checked batch's load columns, typed as the handoff's schema."""
    loads = batch.select(LOAD_SCHEMA.names)
    return loads if loads.schema.equals(LOAD_SCHEMA) else loads.cast(LOAD_SCHEMA)


def _explain(exc: Exception, path: Path) -> str:
    """DuckDB's or zlib's error in the user's terms."""
    text = _first_line(exc)
    lower = str(exc).lower()
    if _is_gzip(path) and any(w in lower for w in ("gzip", "zlib", "inflate", "compressed")):
        return f"corrupt or truncated gzip ({text})"
    if file_format(path) == "parquet":
        return f"not a readable Parquet file ({text})"
    return text


def _hashed(settings: BuildSettings) -> list[str]:
    return sorted(t.lower() for t in settings.hashed_taxonomies)


def _missing_columns_message(
    missing: list[str], settings: BuildSettings, available: list[str]
) -> str:
    by_lower = {a.lower(): a for a in available}
    parts = []
    for c in missing:
        source = settings.source_column(c)
        text = c if source == c else f"{c} (mapped to {source!r})"
        if source.lower() in by_lower:
            text += f" (the file has {by_lower[source.lower()]!r}: names are case-sensitive)"
        parts.append(text)
    found = ", ".join(repr(a) for a in available[:20]) or "none"
    return f"missing required column(s): {', '.join(parts)}; columns found: {found}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_key(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _normalise_sql(
    source: str, buckets: int, integer_timestamps: bool = False, *, fast_path: bool = True
) -> str:
    """Check and normalise the rows of `source` (INPUT_COLUMNS, all text but the timestamp
    when `integer_timestamps`: a Parquet integer column, used as it is) into bucketed rows.

    A good row goes to its user's bucket (a hash, so one user's loads meet in one bucket); a
    bad row goes to the quarantine partition with its reason and raw values.
    Parameters: $1 the file's name in the batch, $2 the hashed taxonomies, $3 the sanitised
    client names that collide (all lower case). `fast_path=False` leaves out the proof of
    plain rows (see `checked`): the same outcome for every row, slower (its tests compare).
    """
    # The timestamp as text, its value, "it is no integer" and "it is an integer's own digits"
    # (the fast path's cheap proof of the third's negation).
    if integer_timestamps:
        timestamp_text, timestamp_value = "timestamp", "coalesce(tr, 0)"
        timestamp_invalid, timestamp_plain = "false", "true"
    else:
        timestamp_text = "coalesce(nullif(trim(timestamp), ''), '0')"
        timestamp_value = "TRY_CAST(tr AS BIGINT)"
        timestamp_invalid = "ts IS NULL OR NOT regexp_full_match(tr, '-?[0-9]+')"
        timestamp_plain = "CAST(ts AS VARCHAR) = tr"
    fast = (
        f"""
        -- A row every check passes as read (nearly all): proved by cheap tests at once, so
        -- the checks below, each a pass over the rows left, see only the others.
        WHEN bad_row IS NULL AND u_ok AND s_ok AND d_ok IS NOT false AND c_ok IS NOT false
             AND NOT hashed AND strlen(s) <= {SHORT_SEGMENT_DIGITS} AND {timestamp_plain}
             AND ts BETWEEN -1 AND {MAX_TIMESTAMP}
             AND strlen(u) + strlen(s) + 14 <= {MAX_LINE_CHARS}
             AND strlen(c) <= {MAX_NAME_PART_CHARS} AND len($3) = 0 THEN NULL"""
        if fast_path
        else ""
    )
    return f"""
WITH plain AS (
    -- The common value needs no trimming and passes its check as read: each is tested once
    -- (trim, replace and casts cost more than the test) and worked on only when it fails.
    SELECT *, {_token_test("user_id")} AS u_ok, {_segment_digits_test("segment")} AS s_ok,
           {_letters_and_digits_test("client")} AS c_ok,
           {_is_device_type("device_type")} AS d_ok
    FROM ({source})
), t AS (
    SELECT line, bad_row, raw, u_ok, s_ok, d_ok,
           CASE WHEN u_ok THEN user_id ELSE trim(user_id) END AS u,
           CASE WHEN s_ok THEN segment ELSE trim(segment) END AS s,
           {timestamp_text} AS tr,
           CASE WHEN c_ok THEN client ELSE coalesce(trim(client), '') END AS c, c_ok,
           CASE WHEN d_ok THEN device_type
                ELSE lower(coalesce(trim(device_type), '')) END AS d,
           user_id AS r_u, segment AS r_s, timestamp AS r_t, client AS r_c,
           device_type AS r_d
    FROM plain
), v AS (
    SELECT *, CASE WHEN c_ok THEN c ELSE regexp_replace(c, '[^A-Za-z0-9]', '', 'g') END
              AS agency,
           d IN {MOBILE_DEVICE_TYPES} AS mobile,
           {timestamp_value} AS ts
    FROM t
), r AS (
    SELECT *, list_contains($2, CASE WHEN agency = '' THEN '{GLOBAL_TAXONOMY}'
                                     ELSE lower(agency) END) AS hashed
    FROM v
), checked AS (
    SELECT *, CASE{fast}
        WHEN bad_row IS NOT NULL THEN bad_row
        WHEN u IS NULL OR u = '' THEN '{MISSING_USER}'
        WHEN NOT u_ok AND NOT regexp_full_match(u, '{TOKEN_CHARS}') THEN '{_sq(BAD_USER)}'
        WHEN NOT {_is_device_type("d")} THEN '{UNKNOWN_DEVICE}'
        WHEN s IS NULL OR s = '' THEN '{MISSING_SEGMENT}'
        WHEN NOT hashed AND NOT ((s_ok OR regexp_full_match(s, '{SEGMENT_DIGITS}'))
             AND (strlen(s) <= {SHORT_SEGMENT_DIGITS}
                  OR TRY_CAST(s AS BIGINT) <= {MAX_SEGMENT_CODE})) THEN '{SEGMENT_NOT_32BIT}'
        WHEN hashed AND NOT regexp_full_match(s, '{TOKEN_CHARS}')
             THEN '{_sq(BAD_HASHED_SEGMENT)}'
        WHEN {timestamp_invalid} THEN '{BAD_TIMESTAMP}'
        WHEN ts < -1 OR ts > {MAX_TIMESTAMP} THEN '{TIMESTAMP_RANGE}'
        -- S2S-LINE: `USER SEGMENT:TS` must fit on one line, or it can never be written. A
        -- timestamp has at most 12 characters, so only long values need the exact sum; the
        -- bytes bound the characters, and strlen reads the byte length without counting.
        WHEN strlen(u) + strlen(s) + 14 > {MAX_LINE_CHARS}
             AND length(u) + length(CASE WHEN hashed THEN s ELSE ltrim(s, '0') END)
             + length(CAST(ts AS VARCHAR)) + 2 > {MAX_LINE_CHARS} THEN '{_sq(LINE_TOO_LONG)}'
        WHEN c <> '' AND agency = '' THEN '{CLIENT_NOTHING_LEFT}'
        -- An agency is ASCII letters and digits: its bytes are its characters.
        WHEN strlen(agency) > {MAX_NAME_PART_CHARS} THEN '{_sq(CLIENT_TOO_LONG)}'
        WHEN len($3) > 0 AND list_contains($3, lower(agency)) THEN '{_sq(CLIENT_COLLISION)}'
    END AS reason
    FROM r
)
, normalised AS (
    SELECT *,
           -- S2S-MOB: device IDs are case-insensitive, so one device is one spelling.
           CASE WHEN mobile THEN lower(u) ELSE u END AS user_id
    FROM checked
)
SELECT CASE WHEN reason IS NULL THEN {user_bucket_sql(buckets)} END AS bucket,
       {user_key_sql()} AS user_key, agency,
       -- The raw client name only where it differs from its file name part (rare; the
       -- collision check needs it): a column of mostly NULLs costs next to nothing to write.
       CASE WHEN c <> agency THEN c END AS client, mobile, user_id,
       -- A code is written without leading zeros: only those that have them are re-cast.
       CASE WHEN hashed OR NOT starts_with(s, '0') OR s = '0' THEN s
            ELSE CAST(TRY_CAST(s AS BIGINT) AS VARCHAR) END AS segment,
       ts,
       -- One column, NULL on good rows: six mostly-NULL columns cost 25 % of the write.
       CASE WHEN reason IS NOT NULL THEN json_object(
           'file', $1, 'line', line, 'reason', reason, 'user_id', r_u, 'segment', r_s,
           'timestamp', CAST(r_t AS VARCHAR), 'client', r_c, 'device_type', r_d,
           'raw', raw) END AS quarantine
FROM normalised"""


def _token_test(value: str) -> str:
    """SQL: `value` matches TOKEN_CHARS (S2S-FMT: printable ASCII, no space or ':').

    RE2 costs ~130 ns on a 36-character ID, a third of the row checks' time; these built-ins
    prove the common ID a token for a fraction of it (all ASCII, none of ' ', ':' or DEL, and
    nothing JSON must escape: no control character, quote or backslash), and only what they
    cannot prove is matched by the regex. They only ever prove, never refute: the value is
    the regex's (tested on every character, test_row_checks_fast_path.py).
    """
    return (
        f"CASE WHEN strlen({value}) > 0 AND strlen({value}) = length({value}) "
        f"AND NOT contains({value}, ' ') AND NOT contains({value}, ':') "
        f"AND NOT contains({value}, chr(127)) "
        f"AND strlen(to_json({value})) = strlen({value}) + 2 THEN true "
        f"ELSE regexp_full_match({value}, '{TOKEN_CHARS}') END"
    )


def _segment_digits_test(value: str) -> str:
    """SQL: `value` matches SEGMENT_DIGITS. A code written as a 32-bit number's own digits
    (the common case) is proved by casts, which DuckDB computes once per distinct value of a
    dictionary-encoded column (a Parquet export's segments); the regex sees the rest."""
    return (
        f"CASE WHEN CAST(TRY_CAST({value} AS UINTEGER) AS VARCHAR) = {value} THEN true "
        f"ELSE regexp_full_match({value}, '{SEGMENT_DIGITS}') END"
    )


def _letters_and_digits_test(value: str) -> str:
    """SQL: `value` is ASCII letters and digits only (or empty), as `[A-Za-z0-9]*` would
    match. A GLOB is computed once per distinct value of a dictionary-encoded column (a
    client column has a few dozen), a regex once per row (measured 0.03 s vs 0.20 s at 5 M)."""
    return f"NOT ({value} GLOB '*[!A-Za-z0-9]*')"


def _is_device_type(value: str) -> str:
    """SQL: `value` is a known device type. Two short IN lists: DuckDB plans one list of all
    six as a join against a constant table, which cost more than the comparisons (measured)."""
    return f"({value} IN {MOBILE_DEVICE_TYPES} OR {value} IN {COOKIE_DEVICE_TYPES})"


def _sq(text: str) -> str:
    return text.replace("'", "''")


REJECT_REASONS = {"INVALID ENCODING": UNDECODABLE, "LINE SIZE OVER MAXIMUM": OVERLONG_LINE}
RAW_BATCH_ROWS = 10_000  # rejected lines are copied into DuckDB this many at a time


def _record_rejects(
    con: duckdb.DuckDBPyConnection, rejects: str, rel: str, name: str, gz: bool
) -> tuple[int, bool]:
    """Quarantine the lines DuckDB's line reader rejected (undecodable bytes, overlong lines),
    each with its exact bytes, read again from the file here (DuckDB's copy of a rejected line
    replaces what it cannot decode). Returns how many lines were rejected."""
    reasons = dict(
        con.execute(f"SELECT line, any_value(error_type) FROM {rejects} GROUP BY line").fetchall()
    )
    con.execute(f"DROP TABLE {rejects}")
    overlong, has_cr = _measure_lines(name, gz)
    for line in overlong:
        reasons.setdefault(line, "LINE SIZE OVER MAXIMUM")
    batch: list[tuple[int, bytes]] = []

    def flush() -> None:
        lines = pa.table(
            {
                "line": pa.array([n for n, _ in batch], pa.int64()),
                "reason": [REJECT_REASONS.get(reasons[n], UNREADABLE_LINE) for n, _ in batch],
                "raw": pa.array([raw for _, raw in batch], pa.binary()),
            }
        )
        con.register("rejected_lines", lines)
        con.execute("INSERT INTO rejected SELECT ?, line, reason, raw FROM rejected_lines", [rel])
        con.unregister("rejected_lines")
        batch.clear()

    for item in _physical_lines(name, gz, sorted(reasons)):
        batch.append(item)
        if len(batch) == RAW_BATCH_ROWS:
            flush()
    if batch:
        flush()
    return len(reasons), has_cr


def _line_pieces(name: str, gz: bool) -> Iterator[tuple[bytes, int, int, bytes]]:
    """(chunk, start, stop, end) of every line piece, in order: `end` is the line end that
    closes the piece (CR or LF), or b"" when the line goes on in the next chunk (or the file
    ends). Lines end at every CR and every LF, as DuckDB's line reader ends them."""
    with _open_text_stream(name, gz) as stream:
        while chunk := stream.read(4 * 2**20):
            pos = 0
            for match in LINE_END.finditer(chunk):
                yield chunk, pos, match.start(), match.group()
                pos = match.end()
            yield chunk, pos, len(chunk), b""


def _physical_lines(name: str, gz: bool, wanted: list[int]) -> Iterator[tuple[int, bytes]]:
    """The bytes of the wanted (1-based, sorted) lines, streamed: at most MAX_LINE_BYTES of a
    line are kept."""
    i, line, partial = 0, 1, bytearray()
    for chunk, start, stop, end in _line_pieces(name, gz):
        if i == len(wanted):
            return
        if line == wanted[i]:
            partial += chunk[start:stop][: MAX_LINE_BYTES - len(partial)]
        if end:
            if line == wanted[i]:
                yield line, bytes(partial)
                partial.clear()
                i += 1
            line += 1
    if i < len(wanted) and wanted[i] == line:
        yield line, bytes(partial)


def _user_line_numbers(name: str, gz: bool, wanted: list[int]) -> dict[int, int]:
    """DuckDB's line numbers (CR and LF each end a line) -> the file's lines (LF ends one)."""
    found: dict[int, int] = {}
    i, line, user_line = 0, 1, 1
    for _, _, _, end in _line_pieces(name, gz):
        if i == len(wanted):
            break
        if end:
            if line == wanted[i]:
                found[line] = user_line
                i += 1
            line += 1
            user_line += end == b"\n"
    if i < len(wanted) and wanted[i] == line:
        found[line] = user_line
    return found


def _parquet_glob(folder: Path) -> str | None:
    """A read_parquet pattern for a folder's files, or None when it holds none."""
    return sql_glob(folder, "**/*.parquet") if any(folder.rglob("*.parquet")) else None


def _client_collisions(client_names: set[tuple[str, str]]) -> dict[str, list[str]]:
    """S2S-NAME: distinct client names that sanitise to one file name (case-insensitively)."""
    by_key: dict[str, set[str]] = {}
    for agency, name in client_names:
        if agency:
            by_key.setdefault(agency.lower(), set()).add(name)
    return {key: sorted(names) for key, names in sorted(by_key.items()) if len(names) > 1}


def _quarantine_collisions(
    con: duckdb.DuckDBPyConnection,
    files: dict[str, Path],
    settings: BuildSettings,
    loads_dir: Path,
    parts_dir: Path,
    collisions: dict[str, list[str]],
) -> dict[str, int]:
    """Move the rows of colliding clients from their buckets to the quarantine (rare path).

    The buckets keep no file or line, so the files are read again for the quarantine rows.
    Returns the rows moved, per file.
    """
    keys = list(collisions)
    moved: dict[str, int] = {}
    for index, (rel, path) in enumerate(files.items()):
        rejects = f"rescan_{index}"
        with _opened(path) as name:
            source, integer_timestamps = _file_source(con, name, path, settings, rejects)
            moved[rel] = con.execute(
                f"""
                COPY (SELECT quarantine FROM ({_normalise_sql(source, 1, integer_timestamps)})
                      WHERE quarantine->>'reason' = '{_sq(CLIENT_COLLISION)}')
                TO {sql_string(str(parts_dir / f"collisions_{index}.parquet"))}
                (FORMAT parquet)""",
                [rel, _hashed(settings), keys],
            ).fetchone()[0]
        if file_format(path) != "parquet":
            con.execute(f"DROP TABLE IF EXISTS {rejects}")
    for bucket in bucket_dirs(loads_dir):
        loads = read_bucket(bucket)
        colliding = pc.is_in(pc.utf8_lower(loads.column("agency")), value_set=pa.array(keys))
        replace_bucket(bucket, loads.filter(pc.invert(colliding)))
    return moved


def _number_lines_as_the_file_does(
    con: duckdb.DuckDBPyConnection, cr_files: dict[str, Path]
) -> None:
    """In a file holding CRs, DuckDB's line numbers count CR LF as two line ends: give the
    quarantine the file's own line numbers (LF ends a line; rare path, the file is read again).
    """
    for rel, path in cr_files.items():
        lines = [
            n
            for (n,) in con.execute(
                "SELECT DISTINCT line FROM quarantine WHERE file = ? ORDER BY line", [rel]
            ).fetchall()
        ]
        if not lines:
            continue
        with _opened(path) as name:
            mapping = _user_line_numbers(name, _is_gzip(path), lines)
        con.register(
            "line_numbers", pa.table({"duck": list(mapping), "user": list(mapping.values())})
        )
        con.execute(
            "UPDATE quarantine SET line = n.user FROM line_numbers n "
            "WHERE quarantine.file = ? AND quarantine.line = n.duck",
            [rel],
        )
        con.unregister("line_numbers")


def _write_outputs(
    con: duckdb.DuckDBPyConnection,
    batch: str,
    out_dir: Path,
    issues: list[FileIssue],
    collisions: dict[str, list[str]],
    buckets: int,
    seen: dict[str, tuple[int, int]],
    cr_files: dict[str, Path],
) -> ReadReport:
    loads_dir, parts_dir = out_dir / LOADS, out_dir / "quarantine_parts"
    for bucket in range(buckets):  # every bucket exists, possibly empty: the merge relies on it
        (loads_dir / f"bucket={bucket}").mkdir(exist_ok=True)
    parts = _parquet_glob(parts_dir)
    # A rejected line is left out of the scan, so a row's ordinal undercounts its line
    # by the skipped lines before it: the j-th skipped line r_j (0-based j) shifts every row
    # whose uncorrected line is at least r_j - j.
    from_parts = (
        f"""
        SELECT p.file,
               p.line + (SELECT count(*) FROM shift s
                         WHERE s.source_file = p.file AND s.threshold <= p.line) AS line,
               p.reason, p.user_id, p.segment, p.timestamp, p.client, p.device_type,
               from_base64(p.raw) AS raw
        FROM (SELECT q.file, CAST(q.line AS BIGINT) AS line, q.reason, q.user_id, q.segment,
                     q.timestamp, q.client, q.device_type, q.raw
              FROM (SELECT json_transform(quarantine, '{QUARANTINE_JSON}') AS q
                    FROM read_parquet({parts}))) p
        UNION ALL"""
        if parts
        else ""
    )
    con.execute(f"""
        CREATE TABLE quarantine AS
        WITH skipped AS (SELECT source_file, line FROM rejected),
        shift AS (
            SELECT source_file,
                   line - (row_number() OVER (PARTITION BY source_file ORDER BY line) - 1)
                   AS threshold
            FROM skipped)
        {from_parts}
        SELECT source_file AS file, line, reason, NULL::VARCHAR AS user_id,
               NULL::VARCHAR AS segment, NULL::VARCHAR AS timestamp, NULL::VARCHAR AS client,
               NULL::VARCHAR AS device_type, raw
        FROM rejected""")
    _number_lines_as_the_file_does(con, cr_files)
    quarantine_path = out_dir / QUARANTINE_TABLE
    con.execute(
        f"COPY (SELECT * FROM quarantine ORDER BY file, line) "
        f"TO {sql_string(str(quarantine_path))} (FORMAT parquet)"
    )
    shutil.rmtree(parts_dir)
    accepted = count_loads(loads_dir)
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
            name: {
                "rows": rows,
                "accepted": ok,
                "quarantined": quarantined_by_file.get(name, 0),
            }
            for name, (rows, ok) in seen.items()
            if rows
        },
        file_issues=issues,
        rows_read=sum(rows for rows, _ in seen.values()),
        rows_accepted=accepted,
        rows_quarantined=quarantined,
        quarantine_reasons=dict(reasons.most_common()),
        client_collisions=collisions,
        buckets=buckets,
        loads_dir=loads_dir,
        quarantine_path=quarantine_path,
        quarantine_preview=preview,
    )
