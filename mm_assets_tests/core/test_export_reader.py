"""The export reader against the input contract: bad rows quarantined with file, line and
reason while the good rows of the same file go through; unusable files reported by name while
the other files of the batch are read."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mm_assets.core import export_reader as er
from mm_assets.core.export_reader import read_export_batch
from mm_assets_tests.conftest import (
    CSV_HEADER,
    accepted_loads,
    csv_bytes,
    make_settings,
    quarantine_rows,
    write_batch,
)

GOOD_1 = ("good-1", "101", "0", "", "cookie")
GOOD_2 = ("good-2", "102", "1765000000", "", "")


def read(tmp_path, files, **overrides):
    batch = write_batch(tmp_path, files)
    return read_export_batch(batch, tmp_path / "work", make_settings(**overrides))


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def users_accepted(report) -> set[str]:
    return {load[2] for load in accepted_loads(report)}


# --- row-level problems: one quarantined row, the rest of the file goes through --------------

ROW_CASES = {
    "missing_user_id": (("", "101", "0", "", ""), er.MISSING_USER),
    "blank_user_id": (("   ", "101", "0", "", ""), er.MISSING_USER),
    "user_id_with_space": (("has space", "101", "0", "", ""), er.BAD_USER),
    "user_id_with_tab": (("has\ttab", "101", "0", "", ""), er.BAD_USER),
    "user_id_with_colon": (("a:b", "101", "0", "", ""), er.BAD_USER),
    "segment_not_integer": (("u9", "not_a_number", "0", "Acme", ""), er.SEGMENT_NOT_32BIT),
    "segment_above_2147483647": (("u9", "2147483648", "0", "", ""), er.SEGMENT_NOT_32BIT),
    "segment_negative": (("u9", "-5", "0", "", ""), er.SEGMENT_NOT_32BIT),
    "segment_missing": (("u9", "", "0", "", ""), er.MISSING_SEGMENT),
    "timestamp_unparseable": (("u9", "101", "yesterday", "", ""), er.BAD_TIMESTAMP),
    "timestamp_fraction": (("u9", "101", "1765000000.5", "", ""), er.BAD_TIMESTAMP),
    "timestamp_below_minus_1": (("u9", "101", "-2", "", ""), er.TIMESTAMP_RANGE),
    "device_type_unknown": (("u9", "101", "0", "", "fridge"), er.UNKNOWN_DEVICE),
    "client_sanitises_to_nothing": (("u9", "101", "0", "!!!", "cookie"), er.CLIENT_NOTHING_LEFT),
}


@pytest.mark.parametrize("case", list(ROW_CASES), ids=list(ROW_CASES))
def test_bad_row_is_quarantined_with_file_line_reason_and_good_rows_pass(tmp_path, case):
    bad, reason = ROW_CASES[case]
    report = read(tmp_path, {"part.csv": csv_bytes([GOOD_1, bad, GOOD_2])})
    assert quarantine_rows(report) == [
        {
            "file": "part.csv",
            "line": 3,
            "reason": reason,
            "user_id": bad[0] or None,
            "segment": bad[1] or None,
            "timestamp": bad[2] or None,
            "client": bad[3] or None,
            "device_type": bad[4] or None,
            "raw": csv_bytes([bad]).splitlines()[1],
        }
    ]
    assert users_accepted(report) == {"good-1", "good-2"}
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (3, 2, 1)
    assert report.quarantine_reasons == {reason: 1}
    assert report.files == {"part.csv": {"rows": 3, "accepted": 2, "quarantined": 1}}
    assert report.file_issues == []


def test_segment_not_32bit_reason_names_rule_s2s_seg(tmp_path):
    report = read(tmp_path, {"p.csv": csv_bytes([GOOD_1, ("u9", "sports_fan", "0", "", "")])})
    [row] = quarantine_rows(report)
    assert "S2S-SEG" in row["reason"]


def test_largest_32bit_segment_and_special_timestamps_are_accepted(tmp_path):
    report = read(
        tmp_path,
        {
            "p.csv": csv_bytes(
                [
                    ("u1", "2147483647", "-1", "", ""),
                    ("u2", "0", "", "", ""),
                    ("u3", " 7 ", " 1765000000 ", "", ""),
                ]
            )
        },
    )
    assert quarantine_rows(report) == []
    assert accepted_loads(report) == [
        ("", False, "u1", "2147483647", -1),
        ("", False, "u2", "0", 0),
        ("", False, "u3", "7", 1765000000),
    ]


def test_segment_codes_around_the_digits_of_the_maximum(tmp_path):
    # Codes shorter than the maximum's 10 digits are accepted without a cast; 10-digit codes
    # are compared by value (leading zeros included), longer ones never fit (S2S-SEG).
    report = read(
        tmp_path,
        {
            "p.csv": csv_bytes(
                [
                    ("u1", "999999999", "0", "", ""),
                    ("u2", "0000000001", "0", "", ""),
                    ("u3", "9999999999", "0", "", ""),
                    ("u4", "00000000001", "0", "", ""),
                ]
            )
        },
    )
    assert accepted_loads(report) == [
        ("", False, "u1", "999999999", 0),
        ("", False, "u2", "1", 0),
    ]
    assert [row["user_id"] for row in quarantine_rows(report)] == ["u3", "u4"]
    assert report.quarantine_reasons == {er.SEGMENT_NOT_32BIT: 2}


def test_hashed_taxonomy_accepts_string_segments(tmp_path):
    report = read(
        tmp_path,
        {
            "p.csv": csv_bytes(
                [
                    ("u1", "sports_fan", "0", "SportsDaily", ""),
                    ("u2", "golf", "0", "", ""),  # global is not hashed
                    ("u3", "101", "0", "", ""),
                ]
            )
        },
        hashed_taxonomies=frozenset({"SportsDaily"}),
    )
    assert accepted_loads(report) == [
        ("", False, "u3", "101", 0),
        ("SportsDaily", False, "u1", "sports_fan", 0),
    ]
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (3, er.SEGMENT_NOT_32BIT)
    ]


def test_global_hashed_taxonomy_accepts_string_segments(tmp_path):
    report = read(
        tmp_path,
        {"p.csv": csv_bytes([("u1", "golf", "0", "", "")])},
        hashed_taxonomies=frozenset({"@global"}),
    )
    assert accepted_loads(report) == [("", False, "u1", "golf", 0)]


def test_hashed_segment_with_colon_is_quarantined(tmp_path):
    report = read(
        tmp_path,
        {
            "p.csv": csv_bytes(
                [("u1", "a:b", "0", "SportsDaily", ""), ("u2", "ok", "0", "SportsDaily", "")]
            )
        },
        hashed_taxonomies=frozenset({"SportsDaily"}),
    )
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (2, er.BAD_HASHED_SEGMENT)
    ]
    assert users_accepted(report) == {"u2"}


def test_clients_that_sanitise_to_one_name_are_all_quarantined_and_reported(tmp_path):
    report = read(
        tmp_path,
        {
            "a.csv": csv_bytes(
                [
                    ("u1", "1", "0", "Acme Retail", ""),
                    ("u2", "2", "0", "Other", ""),
                    ("u3", "3", "0", "Acme Retail", ""),
                ]
            ),
            "b.jsonl": jsonl_bytes([{"user_id": "u4", "segment": "4", "client": "Acme-Retail"}]),
        },
    )
    assert report.client_collisions == {"acmeretail": ["Acme Retail", "Acme-Retail"]}
    got = [(r["file"], r["line"], r["reason"]) for r in quarantine_rows(report)]
    assert got == [
        ("a.csv", 2, er.CLIENT_COLLISION),
        ("a.csv", 4, er.CLIENT_COLLISION),
        ("b.jsonl", 1, er.CLIENT_COLLISION),
    ]
    assert report.quarantine_reasons == {er.CLIENT_COLLISION: 3}
    assert accepted_loads(report) == [("Other", False, "u2", "2", 0)]


def test_collision_quarantine_rows_keep_the_row_values(tmp_path):
    report = read(
        tmp_path,
        {
            "a.csv": csv_bytes(
                [("u1", "1", "0", "Acme Retail", ""), ("U2", "2", "5", "Acme-Retail", "cookie")]
            )
        },
    )
    rows = quarantine_rows(report)
    assert [(r["line"], r["user_id"], r["segment"], r["timestamp"], r["client"]) for r in rows] == [
        (2, "u1", "1", "0", "Acme Retail"),
        (3, "U2", "2", "5", "Acme-Retail"),
    ]


def test_collision_quarantine_rows_keep_the_device_type(tmp_path):
    report = read(
        tmp_path,
        {
            "a.csv": csv_bytes(
                [("u1", "1", "0", "Acme Retail", "idfa"), ("u2", "2", "5", "Acme-Retail", "cookie")]
            )
        },
    )
    assert [r["device_type"] for r in quarantine_rows(report)] == ["idfa", "cookie"]


def test_undecodable_bytes_quarantined_at_their_physical_line_later_lines_keep_theirs(tmp_path):
    body = (
        CSV_HEADER.encode()  # line 1
        + b"good-1,101,0,,\n"  # 2
        + b"bad-1,102,0,Caf\xe9,cookie\n"  # 3: Latin-1, not UTF-8
        + b"good-2,103,0,,\n"  # 4
        + b"seg-1,oops,0,,\n"  # 5: a bad row after the undecodable one
        + b"bad-2,\xff\xfe,0,,\n"  # 6
        + b"good-3,104,0,,\n"  # 7
        + b"seg-2,oops,0,,\n"
    )  # 8
    report = read(tmp_path, {"p.csv": body})
    got = [(r["file"], r["line"], r["reason"]) for r in quarantine_rows(report)]
    assert got == [
        ("p.csv", 3, er.UNDECODABLE),
        ("p.csv", 5, er.SEGMENT_NOT_32BIT),
        ("p.csv", 6, er.UNDECODABLE),
        ("p.csv", 8, er.SEGMENT_NOT_32BIT),
    ]
    assert users_accepted(report) == {"good-1", "good-2", "good-3"}
    assert report.files == {"p.csv": {"rows": 7, "accepted": 3, "quarantined": 4}}


def test_undecodable_bytes_in_csv_gz_are_quarantined_too(tmp_path):
    body = CSV_HEADER.encode() + b"g1,1,0,,\nb\xff,2,0,,\ng2,x,0,,\ng3,3,0,,\n"
    report = read(tmp_path, {"p.csv.gz": gzip.compress(body)})
    assert [(r["line"], r["reason"]) for r in quarantine_rows(report)] == [
        (3, er.UNDECODABLE),
        (4, er.SEGMENT_NOT_32BIT),
    ]
    assert users_accepted(report) == {"g1", "g3"}


def test_blank_lines_in_csv_do_not_shift_quarantine_line_numbers(tmp_path):
    body = CSV_HEADER.encode() + b"g1,1,0,,\n\nb1,x,0,,\n"  # b1 is on physical line 4
    report = read(tmp_path, {"p.csv": body})
    assert [(r["line"], r["user_id"]) for r in quarantine_rows(report)] == [(4, "b1")]


def test_invalid_json_lines_are_quarantined_and_the_other_lines_pass(tmp_path):
    body = (
        b'{"user_id": "j1", "segment": "1"}\n'  # 1
        b"{not json\n"  # 2
        b"\n"  # 3: blank lines are not rows
        b"[1, 2]\n"  # 4: valid JSON, not an object
        b'{"user_id": "j2", "segment": 2, "timestamp": 1765000000}\n'  # 5
        b'{"user_id": "j3", "segment": "x"}\n'
    )  # 6
    report = read(tmp_path, {"p.jsonl": body})
    got = [(r["line"], r["reason"]) for r in quarantine_rows(report)]
    assert got == [(2, er.INVALID_JSON), (4, er.INVALID_JSON), (6, er.SEGMENT_NOT_32BIT)]
    assert accepted_loads(report) == [("", False, "j1", "1", 0), ("", False, "j2", "2", 1765000000)]


def test_a_json_object_naming_a_column_twice_is_quarantined_not_read_as_one_of_its_values(
    tmp_path,
):
    body = (
        b'{"user_id": "j1", "segment": "1", "segment": "2"}\n'  # 1: which segment?
        b'{"user_id": "j2", "segment": "3", "note": 1, "note": 2}\n'  # 2: a key we do not read
        b'{"user_id": "j3", "user_id": "j3", "segment": "4"}\n'  # 3: even the same value twice
    )
    report = read(tmp_path, {"p.jsonl": body})
    got = [(r["line"], r["reason"], r["raw"]) for r in quarantine_rows(report)]
    assert got == [
        (1, er.DUPLICATE_KEY, body.splitlines()[0]),
        (3, er.DUPLICATE_KEY, body.splitlines()[2]),
    ]
    assert accepted_loads(report) == [("", False, "j2", "3", 0)]
    assert report.files["p.jsonl"] == {"rows": 3, "accepted": 1, "quarantined": 2}


# --- file-level problems: reported by name, the other files still read ---------------------

TRUNCATED_GZ = gzip.compress(csv_bytes([(f"t{i}", str(i), "0", "", "") for i in range(500)]))
FILE_CASES = {
    "unsupported_extension": ("notes.txt", b"user_id,segment\nx,1\n", "unsupported file type"),
    "zero_byte_csv": ("empty.csv", b"", "empty"),
    "zero_byte_parquet": ("empty.parquet", b"", "empty"),
    "header_only_csv": ("header.csv", CSV_HEADER.encode(), "no data rows"),
    "zero_row_parquet": (
        "zero.parquet",
        parquet_bytes(
            pa.table({"user_id": pa.array([], pa.string()), "segment": pa.array([], pa.string())})
        ),
        "no data rows",
    ),
    "not_gzip": ("corrupt.csv.gz", b"this is not gzip", "cannot be read"),
    "truncated_csv_gz": (
        "truncated.csv.gz",
        TRUNCATED_GZ[: len(TRUNCATED_GZ) // 2],
        "cannot be read",
    ),
    "truncated_jsonl_gz": (
        "truncated.jsonl.gz",
        gzip.compress(jsonl_bytes([{"user_id": f"t{i}", "segment": i} for i in range(500)]))[:40],
        "cannot be read",
    ),
    "corrupt_parquet": ("corrupt.parquet", b"PAR1 not really parquet PAR1", "cannot be read"),
    "csv_missing_segment_column": (
        "nosegment.csv",
        b"user_id,timestamp\nx,0\n",
        "missing required column(s): segment",
    ),
    "parquet_missing_user_column": (
        "nouser.parquet",
        parquet_bytes(pa.table({"segment": [1, 2]})),
        "missing required column(s): user_id",
    ),
}


@pytest.mark.parametrize("case", list(FILE_CASES), ids=list(FILE_CASES))
def test_unusable_file_is_reported_by_name_and_other_files_are_read(tmp_path, case):
    name, data, message = FILE_CASES[case]
    report = read(tmp_path, {name: data, "good.csv": csv_bytes([GOOD_1, GOOD_2])})
    assert [issue.file for issue in report.file_issues] == [name]
    assert message in report.file_issues[0].message
    assert users_accepted(report) == {"good-1", "good-2"}
    assert report.files == {"good.csv": {"rows": 2, "accepted": 2, "quarantined": 0}}
    assert (report.rows_read, report.rows_accepted, report.rows_quarantined) == (2, 2, 0)


def test_column_map_renames_source_columns_in_every_format(tmp_path):
    mapped = ("uid", "seg", "ts", "agency_name", "kind")
    report = read(
        tmp_path,
        {
            "m.csv": csv_bytes([("C1", "1", "5", "Acme", "idfa")], fields=mapped),
            "m.jsonl": jsonl_bytes([{"uid": "J1", "seg": 2, "ts": -1}]),
            "m.parquet": parquet_bytes(pa.table({"uid": ["P1"], "seg": [3]})),
        },
        column_map={
            "user_id": "uid",
            "segment": "seg",
            "timestamp": "ts",
            "client": "agency_name",
            "device_type": "kind",
        },
    )
    assert report.file_issues == []
    assert accepted_loads(report) == [
        ("", False, "J1", "2", -1),
        ("", False, "P1", "3", 0),
        ("Acme", True, "c1", "1", 5),
    ]


def test_column_map_missing_mapped_column_names_both_columns(tmp_path):
    report = read(
        tmp_path,
        {"m.csv": b"user_id,segment\nu1,1\n", "ok.csv": b"uid,seg\nu2,2\n"},
        column_map={"user_id": "uid", "segment": "seg"},
    )
    [issue] = report.file_issues
    assert issue.file == "m.csv"
    assert "user_id (mapped to 'uid')" in issue.message
    assert "segment (mapped to 'seg')" in issue.message
    assert users_accepted(report) == {"u2"}


# --- formats, defaults, device IDs, markers ------------------------------------------------


def test_every_supported_format_is_read(tmp_path):
    rows = {
        "csv": ("csv-user", "1", "0", "", ""),
        "csv.gz": ("csvgz-user", "2", "-1", "Acme", "cookie"),
        "jsonl": ("jsonl-user", "3", "1765000000", "", "gaid"),
        "jsonl.gz": ("jsonlgz-user", "4", "0", "Acme", "ctv"),
    }
    files = {
        "a.csv": csv_bytes([rows["csv"]]),
        "b.csv.gz": gzip.compress(csv_bytes([rows["csv.gz"]])),
        "c.jsonl": jsonl_bytes(
            [
                dict(
                    zip(
                        ["user_id", "segment", "timestamp", "client", "device_type"],
                        rows["jsonl"],
                        strict=True,
                    )
                )
            ]
        ),
        "d.jsonl.gz": gzip.compress(
            jsonl_bytes(
                [
                    {
                        "user_id": "jsonlgz-user",
                        "segment": 4,
                        "timestamp": 0,
                        "client": "Acme",
                        "device_type": "ctv",
                    }
                ]
            )
        ),
        # Typed Parquet columns (integers, nulls) are read as their text.
        "e.parquet": parquet_bytes(
            pa.table(
                {
                    "user_id": ["pq-user", "pq-user2"],
                    "segment": pa.array([5, 6], pa.int64()),
                    "timestamp": pa.array([1765000001, None], pa.int64()),
                    "client": [None, "Acme"],
                    "device_type": ["mobile", None],
                }
            )
        ),
    }
    report = read(tmp_path, files)
    assert report.file_issues == []
    assert set(report.files) == set(files)
    assert accepted_loads(report) == [
        ("", False, "csv-user", "1", 0),
        ("", True, "jsonl-user", "3", 1765000000),
        ("", True, "pq-user", "5", 1765000001),
        ("Acme", False, "csvgz-user", "2", -1),
        ("Acme", False, "pq-user2", "6", 0),
        ("Acme", True, "jsonlgz-user", "4", 0),
    ]


def test_optional_columns_default_to_now_global_cookie(tmp_path):
    report = read(tmp_path, {"p.csv": b"segment,user_id\n7,u1\n"})
    assert accepted_loads(report) == [("", False, "u1", "7", 0)]


@pytest.mark.parametrize(
    ("device_type", "mobile"),
    [
        ("idfa", True),
        ("IDFA", True),
        ("gaid", True),
        ("ctv", True),
        ("Mobile", True),
        ("cookie", False),
        ("COOKIE", False),
        ("", False),
    ],
)
def test_device_type_decides_mobile(tmp_path, device_type, mobile):
    report = read(tmp_path, {"p.csv": csv_bytes([("ID", "1", "0", "", device_type)])})
    assert [load[1] for load in accepted_loads(report)] == [mobile]


def test_device_ids_are_case_folded_cookie_ids_are_not(tmp_path):
    report = read(
        tmp_path,
        {
            "p.csv": csv_bytes(
                [
                    ("AB12-CD34", "1", "0", "", "idfa"),
                    ("ab12-cd34", "2", "0", "", "IDFA"),
                    ("Cookie-XY", "3", "0", "", "cookie"),
                ]
            )
        },
    )
    assert accepted_loads(report) == [
        ("", False, "Cookie-XY", "3", 0),
        ("", True, "ab12-cd34", "1", 0),
        ("", True, "ab12-cd34", "2", 0),
    ]


def test_markers_and_hidden_files_are_skipped(tmp_path):
    report = read(
        tmp_path,
        {
            "_SUCCESS": b"",
            "_manifest.json": b"{not data}",
            ".part.csv.crc": b"\x00\x01",
            ".hidden.csv": csv_bytes([("hidden", "1", "0", "", "")]),
            "data.csv": csv_bytes([GOOD_1]),
        },
    )
    assert report.file_issues == []
    assert set(report.files) == {"data.csv"}
    assert users_accepted(report) == {"good-1"}


def test_files_in_sub_folders_are_read_and_named_relative_to_the_batch(tmp_path):
    report = read(tmp_path, {"day=1/p.csv": csv_bytes([("u1", "x", "0", "", ""), GOOD_1])})
    assert [(r["file"], r["line"]) for r in quarantine_rows(report)] == [("day=1/p.csv", 2)]


def test_missing_batch_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_export_batch(tmp_path / "nope", tmp_path / "work", make_settings())
