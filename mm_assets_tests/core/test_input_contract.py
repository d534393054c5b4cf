"""The input contract on ordinary and hostile exports (issue 8): every defect seen as a test.

Bytes go in, counts and quarantine rows come out: a file either contributes all of its
readable rows (rows seen = accepted + quarantined) or is reported unusable with its reason, and
no row's content can fail a batch (every accepted row passes the independent validator).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mm_assets.core import export_reader as er
from mm_assets.core.build_settings import MAX_NAME_PART_CHARS
from mm_assets.core.export_reader import read_export_batch
from mm_assets.core.s2s_validator import validate_file
from mm_assets_tests.conftest import (
    CSV_HEADER,
    accepted_loads,
    csv_bytes,
    make_settings,
    parse_s2s,
    quarantine_rows,
    run_build,
    s2s_files_in,
    write_batch,
)


def read(tmp_path, files, name="batch_1", **overrides):
    batch = write_batch(tmp_path, files, name=name)
    return read_export_batch(batch, tmp_path / "work", make_settings(**overrides))


def assert_conserved(report) -> None:
    """Per file and in total: rows seen = rows accepted + rows quarantined."""
    for name, counts in report.files.items():
        assert counts["rows"] == counts["accepted"] + counts["quarantined"], name
    assert report.rows_read == report.rows_accepted + report.rows_quarantined
    assert report.rows_accepted == len(accepted_loads(report))
    assert report.rows_quarantined == len(quarantine_rows(report))


def good_rows(n: int, client: str = "") -> list[tuple[str, str, str, str, str]]:
    return [(f"u{i}", str(i % 50 + 1), "0", client, "") for i in range(n)]


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# --- UTF-8 whose bytes fall in 0x80-0x9F (Latin-1 cannot hold them) --------------------------

NAMES_WITH_0X80_0X9F_BYTES = ["McDonald’s", "Acme—Media", "MÜLLER", "€uro", "東京Tower", "Fun😀"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_utf8_client_names_with_bytes_0x80_to_0x9f_keep_every_row(tmp_path, suffix):
    rows = good_rows(1000)
    for i, client in enumerate(NAMES_WITH_0X80_0X9F_BYTES):
        rows[i * 100] = (f"u{i * 100}", "7", "0", client, "")
    data = csv_bytes(rows)
    report = read(tmp_path, {"p" + suffix: gzip.compress(data) if suffix.endswith("gz") else data})
    assert report.file_issues == []
    assert report.files == {"p" + suffix: {"rows": 1000, "accepted": 1000, "quarantined": 0}}
    agencies = {load[0] for load in accepted_loads(report)}
    assert {"McDonalds", "AcmeMedia", "MLLER", "uro", "Tower", "Fun"} <= agencies
    assert_conserved(report)


# --- malformed CSV: the row costs itself, never the file -------------------------------------


def test_one_unterminated_quote_costs_its_line_only(tmp_path):
    lines = csv_bytes(good_rows(1000)).splitlines(keepends=True)
    lines.insert(501, b'"u-bad,1,0,,\n')  # physical line 502
    report = read(tmp_path, {"p.csv": b"".join(lines)})
    assert report.file_issues == []
    assert [(r["line"], r["reason"], r["raw"]) for r in quarantine_rows(report)] == [
        (502, er.MALFORMED_QUOTES, b'"u-bad,1,0,,')
    ]
    assert report.files == {"p.csv": {"rows": 1001, "accepted": 1000, "quarantined": 1}}
    assert_conserved(report)


def test_a_quote_open_to_the_end_of_the_file_swallows_nothing(tmp_path):
    body = csv_bytes(good_rows(3)) + b'u9,"Acme,0,,\n' + b"u10,1,0,,\nu11,2,0,,\n"
    report = read(tmp_path, {"p.csv": body})
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [(5, er.MALFORMED_QUOTES)]
    assert {load[2] for load in accepted_loads(report)} == {"u0", "u1", "u2", "u10", "u11"}
    assert_conserved(report)


def test_quoted_fields_with_commas_and_doubled_quotes_are_read(tmp_path):
    body = CSV_HEADER.encode() + b'u1,"7",0,"Acme, ""The"" Media",\nu2,8,0,,"cookie"\n'
    report = read(tmp_path, {"p.csv": body})
    assert report.rows_quarantined == 0
    assert accepted_loads(report) == [
        ("", False, "u2", "8", 0),
        ("AcmeTheMedia", False, "u1", "7", 0),
    ]


def test_a_row_with_too_few_or_too_many_fields_is_quarantined(tmp_path):
    body = CSV_HEADER.encode() + b"u1,1,0,,\nu2,1\nu3,1,0,,,extra\n"
    report = read(tmp_path, {"p.csv": body})
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (3, er.FIELD_COUNT),
        (4, er.FIELD_COUNT),
    ]
    assert_conserved(report)


def test_a_quoted_line_whose_first_field_is_empty_keeps_every_field(tmp_path):
    """Writers that quote every non-empty value start a global row with an empty client:
    each field of such a line is its own (a malformed row is never read with one dropped)."""
    body = b'client,user_id,segment\n,"u1",5\n,SURPLUS,"u2",6\n,,"7"\n"",u3,"8"\n'
    report = read(tmp_path, {"p.csv": body})
    assert accepted_loads(report) == [("", False, "u1", "5", 0), ("", False, "u3", "8", 0)]
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (3, er.FIELD_COUNT),
        (4, er.MISSING_USER),
    ]
    assert_conserved(report)


def test_values_are_trimmed_of_unicode_spaces_around_them_not_of_tabs(tmp_path):
    """The README's rule, pinned (DuckDB's trim decides it): U+00A0, U+2003 and U+3000 around
    a value go; a tab stays, and a user ID holding one is quarantined."""
    body = (
        "user_id,segment,timestamp,device_type\n"
        "\u00a0u1\u00a0,\u30007,\u2003 5,idfa\u00a0\n"
        "\tu2,8,0,cookie\n"
    ).encode()
    report = read(tmp_path, {"p.csv": body})
    assert accepted_loads(report) == [("", True, "u1", "7", 5)]
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [(3, er.BAD_USER)]
    assert_conserved(report)


def test_json_values_that_are_not_strings_or_numbers_are_quarantined(tmp_path):
    """`true`, arrays and objects are no user ID, segment or client: read as their JSON text
    they would be written (`true 1:0`) or routed to a client (`["Acme"]` -> Acme)."""
    body = (
        b'{"user_id":true,"segment":1}\n'
        b'{"user_id":"u1","segment":["a","b"]}\n'
        b'{"user_id":"u2","segment":1,"client":["Acme"]}\n'
        b'{"user_id":"u3","segment":2,"timestamp":{"t":1}}\n'
        b'{"user_id":"u4","segment":3,"timestamp":5,"client":null}\n'
    )
    report = read(tmp_path, {"p.jsonl": body})
    assert accepted_loads(report) == [("", False, "u4", "3", 5)]
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (n, er.NOT_A_SCALAR) for n in (1, 2, 3, 4)
    ]
    assert_conserved(report)


def test_lone_cr_line_ends_are_lines(tmp_path):
    """A CSV from an old Mac writer ends its lines with CR alone: read as lines, header too."""
    report = read(tmp_path, {"p.csv": b"user_id,segment\ru1,5\ru2,6\r"})
    assert report.file_issues == []
    assert accepted_loads(report) == [("", False, "u1", "5", 0), ("", False, "u2", "6", 0)]
    assert_conserved(report)


def test_folders_named_like_markers_are_named_and_never_read(tmp_path):
    """A Spark job's leftover `_temporary/` attempt (or a hidden folder) holds copies or
    fragments of the batch's files: read, they would load rows twice."""
    row = b"user_id,segment\nu1,1\n"
    report = read(
        tmp_path,
        {
            "part-0.csv": row,
            "_temporary/0/part-0.csv": row,
            ".hidden/part-0.csv": b"user_id,segment\nu2,2\n",
        },
    )
    assert accepted_loads(report) == [("", False, "u1", "1", 0)]
    assert list(report.files) == ["part-0.csv"]
    assert [(i.file, i.message, i.blocks_batch) for i in report.file_issues] == [
        (".hidden/", er.HIDDEN_FOLDER, False),
        ("_temporary/", er.HIDDEN_FOLDER, False),
    ]
    assert report.complete
    assert_conserved(report)


def test_a_file_name_that_is_not_utf8_costs_that_file_only(tmp_path):
    batch = write_batch(tmp_path, {"ok.csv": b"user_id,segment\nu1,1\n"})
    (batch / os.fsdecode(b"\xff.csv")).write_bytes(b"user_id,segment\nu2,2\n")
    report = read_export_batch(batch, tmp_path / "work", make_settings())
    assert accepted_loads(report) == [("", False, "u1", "1", 0)]
    assert [(i.file, i.blocks_batch) for i in report.file_issues] == [("\\xff.csv", True)]
    assert "not UTF-8" in report.file_issues[0].message
    assert_conserved(report)


def test_crlf_line_ends_are_read_and_quarantine_lines_are_the_files_own(tmp_path):
    body = b"user_id,segment,device_type\r\nU1,1,idfa\r\nbad\xff,1,\r\nu2,2,cookie\r\nu3,x,\r\n"
    report = read(tmp_path, {"p.csv": body})
    assert accepted_loads(report) == [("", False, "u2", "2", 0), ("", True, "u1", "1", 0)]
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (3, er.UNDECODABLE),
        (5, er.SEGMENT_NOT_32BIT),
    ]
    assert_conserved(report)


# --- user IDs and segments: characters that would break or spoil a file ---------------------

BAD_USER_IDS = {
    "nul": "a\x00b",
    "bel": "a\x07b",
    "rs": "a\x1eb",
    "nbsp": "a\u00a0b",
    "zero_width_space": "a\u200bb",
    "line_separator": "a\u2028b",
    "ideographic_space": "a\u3000b",
    "del": "a\x7fb",
    "accented": "café",
}


@pytest.mark.parametrize("case", list(BAD_USER_IDS), ids=list(BAD_USER_IDS))
def test_user_id_with_control_or_non_ascii_characters_is_quarantined_and_the_batch_passes(
    tmp_path, case
):
    uid = BAD_USER_IDS[case]
    batch = write_batch(
        tmp_path, {"p.csv": csv_bytes([("good", "1", "0", "", ""), (uid, "2", "0", "", "")])}
    )
    built = run_build(batch, tmp_path / "work", make_settings())
    assert [(r["line"], r["reason"], r["user_id"]) for r in quarantine_rows(built.read)] == [
        (3, er.BAD_USER, uid)
    ]
    for path in s2s_files_in(built.outbox):
        assert validate_file(path).ok, path
    assert_conserved(built.read)


def test_hashed_segment_with_control_characters_is_quarantined(tmp_path):
    report = read(
        tmp_path,
        {
            "p.jsonl": b"".join(
                json.dumps({"user_id": "u", "segment": seg, "client": "SportsDaily"}).encode()
                + b"\n"
                for seg in ["ok", "a\u00a0b", "a\x00b", "a\u2028b"]
            )
        },
        hashed_taxonomies=frozenset({"SportsDaily"}),
    )
    assert [r["reason"] for r in quarantine_rows(report)] == [er.BAD_HASHED_SEGMENT] * 3
    assert [load[3] for load in accepted_loads(report)] == ["ok"]


# --- long values: a row that can never be written is quarantined -----------------------------


def test_values_too_long_for_a_line_or_a_file_name_are_quarantined_and_the_build_passes(
    tmp_path,
):
    longest_user = "u" * 7995  # `USER 1:0` is 7,999 characters: the longest line S2S-LINE allows
    rows = [
        ("good", "1", "0", "", ""),
        (longest_user, "1", "0", "", ""),
        ("v" * 7996, "1", "0", "", ""),  # 8,000 with its load
        ("u2", "h" * 8000, "0", "SportsDaily", ""),
        ("u3", "1", "0", "A" * (MAX_NAME_PART_CHARS + 1), ""),
        ("u4", "1", "0", "B" * MAX_NAME_PART_CHARS, ""),
        ("u5", "2", "0", "x" * 250 + "!", ""),  # punctuation does not count
    ]
    batch = write_batch(tmp_path, {"p.csv": csv_bytes(rows)})
    settings = make_settings(hashed_taxonomies=frozenset({"SportsDaily"}))
    built = run_build(batch, tmp_path / "work", settings)
    assert [(r["line"], r["reason"]) for r in quarantine_rows(built.read)] == [
        (4, er.LINE_TOO_LONG),
        (5, er.LINE_TOO_LONG),
        (6, er.CLIENT_TOO_LONG),
        (8, er.CLIENT_TOO_LONG),
    ]
    users = {load[2] for load in accepted_loads(built.read)}
    assert users == {"good", longest_user, "u4"}
    files = s2s_files_in(built.outbox)
    assert all(len(p.name.encode()) < 255 - len(".partial.") for p in files)
    for path in files:
        assert validate_file(path).ok, path


def test_a_client_name_of_the_maximum_length_names_a_file(tmp_path):
    batch = write_batch(
        tmp_path, {"p.csv": csv_bytes([("u1", "1", "0", "C" * MAX_NAME_PART_CHARS, "")])}
    )
    built = run_build(
        batch, tmp_path / "work", make_settings(partner_name="P" * MAX_NAME_PART_CHARS)
    )
    [path] = s2s_files_in(built.outbox)
    assert path.name.startswith("C" * MAX_NAME_PART_CHARS + "_")
    assert validate_file(path).ok


def test_partner_name_longer_than_the_maximum_is_refused():
    with pytest.raises(ValueError, match="partner name"):
        make_settings(partner_name="P" * (MAX_NAME_PART_CHARS + 1))


# --- links: never followed out of the batch ----------------------------------------------------


def test_links_are_refused_and_reported_by_name_never_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_bytes(csv_bytes([("outsider", "1", "0", "", "")]))
    (outside / "folder").mkdir()
    (outside / "folder" / "x.csv").write_bytes(csv_bytes([("in-linked-folder", "1", "0", "", "")]))
    batch = write_batch(tmp_path, {"ok.csv": csv_bytes([("inside", "1", "0", "", "")])})
    os.symlink(outside / "secret.csv", batch / "linked.csv")
    os.symlink("/etc/passwd", batch / "passwd.csv")
    os.symlink(outside / "folder", batch / "linked_folder")
    os.symlink(tmp_path / "nowhere.csv", batch / "dangling.csv")
    os.mkfifo(batch / "pipe.csv")
    report = read_export_batch(batch, tmp_path / "work", make_settings())
    assert {load[2] for load in accepted_loads(report)} == {"inside"}
    issues = {i.file: i.message for i in report.file_issues}
    assert set(issues) == {"linked.csv", "passwd.csv", "linked_folder", "dangling.csv", "pipe.csv"}
    assert all(m.startswith("refused:") for m in issues.values())
    assert "/etc/passwd" in issues["passwd.csv"]
    assert not report.complete
    assert_conserved(report)


# --- Parquet bytes that are not text -----------------------------------------------------------


def test_parquet_binary_that_is_not_utf8_is_quarantined_with_its_bytes(tmp_path):
    table = pa.table(
        {
            "user_id": pa.array([b"ok", b"\xff\xfe", b"caf\xc3\xa9x"], pa.binary()),
            "segment": pa.array([1, 2, 3]),
        }
    )
    report = read(tmp_path, {"p.parquet": parquet_bytes(table)})
    assert [(r["line"], r["reason"], r["user_id"], r["raw"]) for r in quarantine_rows(report)] == [
        (2, er.UNDECODABLE, None, b"\xff\xfe"),
        (3, er.BAD_USER, "caféx", None),
    ]
    assert [load[2] for load in accepted_loads(report)] == ["ok"]
    assert_conserved(report)


def test_parquet_columns_named_like_the_readers_own_are_fine(tmp_path):
    table = pa.table({"user_id": ["u1"], "segment": [1], "line": ["x"], "raw": ["y"]})
    report = read(tmp_path, {"p.parquet": parquet_bytes(table)})
    assert report.file_issues == []
    assert accepted_loads(report) == [("", False, "u1", "1", 0)]


def test_parquet_column_names_are_case_sensitive_and_a_repeated_one_is_refused(tmp_path):
    """`User_Id` beside `user_id` is another column (DuckDB alone would rename the second);
    a file naming `user_id` twice is refused, as a CSV header doing so is."""
    cased = pa.table([["X1"], ["u1"], ["5"]], names=["User_Id", "user_id", "segment"])
    twice = pa.table([["u2"], ["6"], ["u3"]], names=["user_id", "segment", "user_id"])
    report = read(
        tmp_path, {"cased.parquet": parquet_bytes(cased), "twice.parquet": parquet_bytes(twice)}
    )
    assert accepted_loads(report) == [("", False, "u1", "5", 0)]
    assert [(i.file, i.blocks_batch) for i in report.file_issues] == [("twice.parquet", True)]
    assert "more than once" in report.file_issues[0].message
    assert_conserved(report)


# --- any legal folder name ---------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["b[1]", "b*", "b?x", "it's", "b{1,2}"])
def test_batch_folder_names_with_glob_characters_are_built(tmp_path, folder):
    """The work folders are named after the batch too (as in the Dagster assets)."""
    files = {
        "p.csv": csv_bytes([("u1", "1", "0", "", "")]),
        "q.parquet": parquet_bytes(pa.table({"user_id": ["u2"], "segment": [2]})),
    }
    batch = write_batch(tmp_path, files, name=folder)
    built = run_build(batch, tmp_path / "work" / folder, make_settings())
    assert built.read.file_issues == []
    assert built.read.rows_accepted == 2
    assert {u for path in s2s_files_in(built.outbox) for u in parse_s2s(path).users()} == {
        "u1",
        "u2",
    }


# --- the quarantine keeps the raw line exactly ---------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl", ".jsonl.gz"])
def test_quarantine_keeps_undecodable_lines_byte_for_byte_not_in_user_id(tmp_path, suffix):
    if ".csv" in suffix:
        body = CSV_HEADER.encode() + b"g1,1,0,,\nbad-1,102,0,Caf\xe9,cookie\r\ng2,2,0,,\n"
        raw, line = b"bad-1,102,0,Caf\xe9,cookie", 3  # the CR LF ends the line
    else:
        body = b'{"user_id": "g1", "segment": 1}\n{"user_id": "Caf\xe9", "segment": 1}\n'
        body += b'{"user_id": "g2", "segment": 2}\n'
        raw, line = b'{"user_id": "Caf\xe9", "segment": 1}', 2
    report = read(tmp_path, {"p" + suffix: gzip.compress(body) if suffix.endswith(".gz") else body})
    [row] = quarantine_rows(report)
    assert (row["line"], row["reason"], row["raw"], row["user_id"]) == (
        line,
        er.UNDECODABLE,
        raw,
        None,
    )
    assert {load[2] for load in accepted_loads(report)} == {"g1", "g2"}
    assert_conserved(report)


def test_quarantine_raw_is_the_line_of_a_row_that_failed_a_rule(tmp_path):
    body = CSV_HEADER.encode() + b'u1,"1",0,,\n"u 2",2,0,"Acme, Inc",\n'
    report = read(tmp_path, {"p.csv": body})
    [row] = quarantine_rows(report)
    assert (row["user_id"], row["client"], row["raw"]) == (
        "u 2",
        "Acme, Inc",
        b'"u 2",2,0,"Acme, Inc",',
    )


# --- messages in the user's terms ---------------------------------------------------------------


def _bomb(prefix: bytes, mebibytes: int) -> bytes:
    """A small gzip that inflates to `prefix` + `mebibytes` MiB of zero bytes, no line end."""
    comp = zlib_compressobj()
    zeros = b"\0" * 2**20
    out = [comp.compress(prefix)] + [comp.compress(zeros) for _ in range(mebibytes)]
    return b"".join(out) + comp.flush()


def zlib_compressobj():
    import zlib

    return zlib.compressobj(9, zlib.DEFLATED, 31)


@pytest.mark.parametrize(
    ("name", "data", "words", "blocks"),
    [
        ("bomb.csv.gz", _bomb(b"", 8), "gzip bomb", True),
        ("empty.csv.gz", gzip.compress(b""), "the gzip holds no data", False),
        ("empty.jsonl.gz", gzip.compress(b""), "the gzip holds no data", False),
        ("upper.csv", b"USER_ID,SEGMENT\nu1,1\n", "case-sensitive", True),
        ("twice.csv", b"user_id,segment,user_id\nu1,1,u2\n", "more than once", True),
        ("not_gzip.csv.gz", b"plain text, not gzip\n", "corrupt or truncated gzip", True),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else "",
)
def test_unusable_files_are_explained_in_the_users_terms(tmp_path, name, data, words, blocks):
    report = read(tmp_path, {name: data, "good.csv": csv_bytes([("g", "1", "0", "", "")])})
    [issue] = report.file_issues
    assert (issue.file, issue.blocks_batch) == (name, blocks)
    assert words in issue.message
    assert "CSV Error" not in issue.message
    assert report.complete is not blocks
    assert {load[2] for load in accepted_loads(report)} == {"g"}


@pytest.mark.parametrize("suffix", [".csv.gz", ".jsonl.gz"])
def test_a_gzip_bomb_line_is_quarantined_as_overlong_and_counted(tmp_path, suffix):
    first = CSV_HEADER.encode() if suffix == ".csv.gz" else b""
    report = read(tmp_path, {"bomb" + suffix: _bomb(first, 8)})
    [row] = quarantine_rows(report)
    assert row["reason"] == er.OVERLONG_LINE
    assert "gzip bomb" in row["reason"]
    assert len(row["raw"]) == er.MAX_LINE_BYTES
    assert report.files["bomb" + suffix] == {"rows": 1, "accepted": 0, "quarantined": 1}


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_the_line_bound_counts_a_line_of_exactly_max_line_bytes_as_overlong(tmp_path, line_end):
    """DuckDB refuses a line of exactly max_line_size bytes; the reason says so, and one byte
    less is read as a line (here quarantined for its too-long user ID, by its own rule)."""
    tail = b",1,0,,"
    lines = [b"u" * (n - len(tail)) + tail for n in (er.MAX_LINE_BYTES, er.MAX_LINE_BYTES - 1)]
    data = CSV_HEADER.encode() + b"".join(line + line_end for line in lines) + b"g,2,0,,\n"
    report = read(tmp_path, {"long.csv": data})
    reasons = {row["line"]: row["reason"] for row in quarantine_rows(report)}
    assert reasons[2] == er.OVERLONG_LINE
    assert f"{er.MAX_LINE_BYTES:,} bytes or longer" in er.OVERLONG_LINE
    assert reasons[3] != er.OVERLONG_LINE and "fit on one line" in reasons[3]
    assert report.files["long.csv"] == {"rows": 3, "accepted": 1, "quarantined": 2}


def test_a_gzip_bomb_fails_in_bounded_memory(tmp_path):
    """1 GiB lines (DuckDB drops lines past ~64 MiB silently: they must still be counted).

    Memory measured in a child process, no timing asserted: its own peak RSS (VmHWM, the
    high-water mark of the process image after exec). Not `ru_maxrss`: Linux keeps a forked
    child's pre-exec high-water mark in it, and that copy of the parent is the whole pytest
    process (the 520-555 MB once seen in the full suite were pytest's size, not the reader's).
    """
    batch = write_batch(
        tmp_path,
        {
            "bomb.csv.gz": _bomb(CSV_HEADER.encode() + b"u1,1,0,,\n", 1024),
            "bomb.jsonl.gz": _bomb(b'{"user_id": "u1", "segment": 1}\n', 1024),
        },
    )
    script = textwrap.dedent(
        f"""
        import json, re, sys
        from pathlib import Path
        from mm_assets.core.build_settings import BuildSettings
        from mm_assets.core.export_reader import read_export_batch
        settings = BuildSettings(partner_name="P", segment_namespace="ep", threads=2,
                                 memory_budget_bytes=256 * 2**20)
        report = read_export_batch(Path({str(batch)!r}), Path({str(tmp_path / "work")!r}),
                                   settings)
        print(json.dumps({{
            "issues": [[i.file, i.message, i.blocks_batch] for i in report.file_issues],
            "quarantined": report.rows_quarantined, "accepted": report.rows_accepted,
            "rss_mb": int(re.search(r"VmHWM:\\s+(\\d+) kB",
                                    Path("/proc/self/status").read_text()).group(1)) / 1024}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])  # after DuckDB's progress bar
    assert result["rss_mb"] < 450  # issue 8: gzip bombs fail in bounded memory
    # Each bomb is one line too long to be a row: quarantined (and counted), or the file refused.
    lost = {name for name, _, blocks in result["issues"] if blocks}
    assert result["quarantined"] + len(lost) >= 2
    assert result["accepted"] == 2


@pytest.mark.parametrize("case", [c for c in BAD_USER_IDS if c != "accented"])
def test_the_independent_validator_also_refuses_such_user_ids(tmp_path, case):
    """Checked twice, apart: the reader quarantines them, the validator fails a file with one."""
    name = "ExamplePartner_20261120120000.log.gz"
    header = (
        f"Version: 3\nFileIdentifier: {name}\nDateCreated: 1765000000\nUserNamespace: mm\n"
        f"SegmentNamespace: ep\nMobile: 0\n\n"
    )
    path = tmp_path / name
    path.write_bytes(gzip.compress((header + BAD_USER_IDS[case] + " 1:0\n").encode()))
    assert not validate_file(path).ok
