"""Property (issue 8): row-level content never fails a batch, in any of the five formats.

Generated rows (arbitrary unicode, control characters, quotes, delimiters, line ends, huge and
empty values) and raw lines of arbitrary bytes are written as CSV, CSV.gz, JSONL, JSONL.gz and
Parquet (text and BINARY columns), then read. For every file: no file is refused, and rows seen
(counted here from the bytes, independently of the reader) = rows accepted + rows quarantined.
Every accepted row is then written and passes the independent validator.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_assets.core.s2s_validator import validate_file
from mm_assets_tests.conftest import (
    FIELDS,
    accepted_loads,
    make_settings,
    quarantine_rows,
    run_build,
    s2s_files_in,
    write_batch,
)

SPECIAL = [
    "",
    " ",
    '"',
    ",",
    "\n",
    "\r",
    "\r\n",
    'a"b',
    "x,y",
    '"quoted"',
    "\t",
    "\x00",
    "\u00a0",
    "\u200b",
    "\u2028",
    "0",
    "-1",
    "1765000000",
    "2147483647",
    "007",
    "SportsDaily",
    "Acme",
    "acme",
    "idfa",
    "cookie",
    "u-1",
    "U-1",
    "McDonald’s",
    "東京",
]
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=12),
    st.text(alphabet="abAB0:", min_size=7990, max_size=8010),
    st.text(alphabet="Cc", min_size=95, max_size=110),
)
ROWS = st.lists(st.tuples(*[VALUES] * len(FIELDS)), min_size=1, max_size=12)
RAW_LINES = st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=3)


def csv_file(rows, raw_lines: list[bytes]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows(rows)
    return buf.getvalue().encode() + b"".join(line + b"\n" for line in raw_lines)


def jsonl_file(rows, raw_lines: list[bytes], ascii_only: bool) -> bytes:
    records = [
        json.dumps(
            {k: v for k, v in zip(FIELDS, row, strict=True) if v != ""}, ensure_ascii=ascii_only
        )
        for row in rows
    ]
    return "".join(r + "\n" for r in records).encode() + b"".join(
        line + b"\n" for line in raw_lines
    )


def parquet_file(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def lines_seen(data: bytes, header: bool) -> int:
    """Data rows of a line file: its lines (a CR or an LF ends one) that are not blank (spaces
    and tabs only), without the header."""
    lines = re.split(rb"[\r\n]", data)
    lines = lines[1:] if header else lines
    return sum(1 for line in lines if line.strip(b" \t"))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    rows=ROWS,
    raw_lines=RAW_LINES,
    ascii_only=st.booleans(),
    binary_ids=st.lists(st.binary(max_size=12), min_size=1, max_size=6),
)
def test_every_row_of_every_format_is_accepted_or_quarantined_and_accepted_rows_are_valid(
    rows, raw_lines, ascii_only, binary_ids
):
    csv_data = csv_file(rows, raw_lines)
    jsonl_data = jsonl_file(rows, raw_lines, ascii_only)
    text_table = pa.table({f: [row[i] or None for row in rows] for i, f in enumerate(FIELDS)})
    binary_table = pa.table(
        {
            "user_id": pa.array(binary_ids, pa.binary()),
            "segment": [str(i) for i in range(len(binary_ids))],
        }
    )
    files = {
        "a.csv": csv_data,
        "b.csv.gz": gzip.compress(csv_data),
        "c.jsonl": jsonl_data,
        "d.jsonl.gz": gzip.compress(jsonl_data),
        "e.parquet": parquet_file(text_table),
        "f.parquet": parquet_file(binary_table),
    }
    expected_rows = {
        "a.csv": lines_seen(csv_data, header=True),
        "b.csv.gz": lines_seen(csv_data, header=True),
        "c.jsonl": lines_seen(jsonl_data, header=False),
        "d.jsonl.gz": lines_seen(jsonl_data, header=False),
        "e.parquet": len(rows),
        "f.parquet": len(binary_ids),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        batch = write_batch(root, files)
        build = run_build(
            batch, root / "work", make_settings(hashed_taxonomies=frozenset({"SportsDaily"}))
        )
        report = build.read
        assert report.file_issues == []
        seen = {name: counts["rows"] for name, counts in report.files.items()}
        assert seen == expected_rows
        for name, counts in report.files.items():
            assert counts["rows"] == counts["accepted"] + counts["quarantined"], name
        assert report.rows_accepted == len(accepted_loads(report))
        assert report.rows_quarantined == len(quarantine_rows(report))
        assert report.rows_read == report.rows_accepted + report.rows_quarantined
        assert all(row["reason"] for row in quarantine_rows(report))
        written = sum(f.loads for f in build.built)
        assert written == build.merge.loads_out
        for path in s2s_files_in(build.outbox):
            result = validate_file(path)
            assert result.ok, (path.name, result.violations[:3])
