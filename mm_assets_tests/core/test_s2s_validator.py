"""Tests of the independent S2S validator.

Files are built by hand with the standard library's gzip, never with the project's writer, so
that a bug shared by writer and validator cannot hide itself.
"""

from __future__ import annotations

import ast
import gzip
import random
from pathlib import Path

import pytest

from mm_assets.core import s2s_validator as sv
from mm_assets.core import s2s_validator_fast as svf
from mm_assets.core.s2s_validator import FileReport, Violation, main, validate_file

NAME = "Partner_20240101120000.log.gz"


def header(name: str = NAME, **overrides: str | None) -> list[str]:
    """Header lines in the vendor's order; an override of None drops that header."""
    fields = {
        "Version": "3",
        "FileIdentifier": name,
        "DateCreated": "1704110400",
        "UserNamespace": "mm",
        "SegmentNamespace": "ep",
        "Mobile": "0",
    }
    fields.update(overrides)
    return [f"{k}: {v}" for k, v in fields.items() if v is not None]


def write(tmp_path: Path, content: str | bytes, name: str = NAME) -> Path:
    path = tmp_path / name
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data))
    return path


def s2s(rows: list[str], name: str = NAME, **overrides: str | None) -> str:
    return "\n".join([*header(name, **overrides), "", *rows]) + "\n"


def check(tmp_path: Path, rows: list[str], name: str = NAME, **overrides: str | None) -> FileReport:
    return validate_file(write(tmp_path, s2s(rows, name, **overrides), name))


def found(report: FileReport) -> list[tuple[str, int | None]]:
    return [(v.rule, v.line) for v in report.violations]


# Header occupies lines 1-6, the blank line is 7, so the first row is line 8.
FIRST_ROW = 8

VENDOR_EXAMPLE = """\
Version: 3
FileIdentifier: ExamplePartner_201407302300.log.gz
DateCreated: 1406761200
UserNamespace: mm
SegmentNamespace: ep
Mobile: 0

2c3753c5-9a67-4600-f044-a5d7e0c5f6d7 10001:0 10003:0 10005:1406850980
3d3353c3-9a67-4651-a443-a6d7e1c4fde8 10002:-1
4e2754c5-5562-4601-1742-a9d7e2c3fef9 10002:0
"""


# -- valid files -----------------------------------------------------------------------------


def test_vendor_example_with_14_digit_name_passes(tmp_path: Path) -> None:
    name = "ExamplePartner_20140730230000.log.gz"
    text = VENDOR_EXAMPLE.replace("ExamplePartner_201407302300.log.gz", name)
    report = validate_file(write(tmp_path, text, name))
    assert report.violations == []
    assert report.ok
    assert (report.users, report.lines, report.loads) == (3, 3, 5)
    assert report.header["SegmentNamespace"] == "ep"
    assert report.bytes == (tmp_path / name).stat().st_size


def test_vendor_example_as_published_with_12_digit_name_passes(tmp_path: Path) -> None:
    report = validate_file(write(tmp_path, VENDOR_EXAMPLE, "ExamplePartner_201407302300.log.gz"))
    assert report.ok, report.violations


def test_optional_headers_last_line_without_newline_and_hashed_segments(tmp_path: Path) -> None:
    text = "\n".join(
        [
            *header("Agency_Partner_20240101120000.log.gz", UserNamespace="acme"),
            "HashSegments: 1",
            "HashIDs: 0",
            "",
            "u1 seg-a:0 seg-b:-1 segé:1700000000",
            "u2 42:0",
        ]
    )
    report = validate_file(write(tmp_path, text, "Agency_Partner_20240101120000.log.gz"))
    assert report.ok, report.violations
    assert report.loads == 4


def test_same_segment_with_different_timestamps_is_allowed(tmp_path: Path) -> None:
    assert check(tmp_path, ["u1 5:0 5:-1 5:1700000000"]).ok


# -- S2S-NAME --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Partner_2024010112000.log.gz",  # 13 digits
        "Partner-x_20240101120000.log.gz",  # '-' not allowed
        "A_B_C_20240101120000.log.gz",  # too many parts
        "Partner_20240101120000.log",
        "20240101120000.log.gz",
        "Partner_20241301120000.log.gz",  # month 13
        "Partner_20240230120000.log.gz",  # 30 February
        "Partner_20240101246000.log.gz",  # hour 24
        "Partner_202402301200.log.gz",  # 12-digit form, 30 February
    ],
)
def test_bad_file_name(tmp_path: Path, name: str) -> None:
    report = check(tmp_path, ["u1 1:0"], name=name)
    assert found(report) == [("S2S-NAME", None)]


# -- gzip, S2S-QUOTA --------------------------------------------------------------------------


def test_not_gzip_is_a_violation_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_text(s2s(["u1 1:0"]))
    report = validate_file(path)
    assert [(v.rule, v.line, v.message) for v in report.violations] == [
        ("S2S-FMT", None, "File is not in GZIP format")
    ]


def test_zero_byte_file_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(b"")
    assert found(validate_file(path)) == [("S2S-FMT", None)]


def test_truncated_gzip_is_a_violation(tmp_path: Path) -> None:
    rows = [f"user{i} {i}:0 {i + 1}:-1" for i in range(20000)]
    data = gzip.compress(s2s(rows).encode())
    path = tmp_path / NAME
    path.write_bytes(data[: len(data) // 2])
    report = validate_file(path)
    assert found(report) == [("S2S-FMT", None)]
    assert "truncated" in report.violations[0].message


def test_corrupt_gzip_is_a_violation(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(s2s(["u1 1:0", "u2 2:0"]).encode()))
    data[12:40] = bytes(b ^ 0x5A for b in data[12:40])
    path = tmp_path / NAME
    path.write_bytes(bytes(data))
    report = validate_file(path)
    assert [v.rule for v in report.violations] == ["S2S-FMT"]
    assert "corrupt" in report.violations[0].message


def test_garbage_after_gzip_member_is_a_violation(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(s2s(["u1 1:0"]).encode()) + b"trailing junk")
    assert found(validate_file(path)) == [("S2S-FMT", None)]


def test_quota(tmp_path: Path) -> None:
    path = write(tmp_path, s2s(["u1 1:0"]))
    assert validate_file(path).ok
    report = validate_file(path, max_file_bytes=10)
    assert found(report) == [("S2S-QUOTA", None)]


def test_default_quota_is_4_gb_decimal(tmp_path: Path) -> None:
    """S2S-QUOTA's "4 GB" read as 4 * 10**9 bytes, the smaller meaning (as core/quota.py does):
    a file one byte past it is refused, though it is under 4 GiB. The file is sparse, so it
    takes no disk space; it is not gzip either, which is reported beside the quota."""
    path = tmp_path / NAME
    with path.open("wb") as sparse:
        sparse.truncate(4 * 10**9 + 1)
    report = validate_file(path)
    assert ("S2S-QUOTA", None) in found(report)
    assert "at most 4,000,000,000 are allowed" in " ".join(v.message for v in report.violations)


# -- S2S-FMT ---------------------------------------------------------------------------------


def test_carriage_return_is_reported_once_per_line(tmp_path: Path) -> None:
    report = check(tmp_path, ["u1 1:0\r", "u2 2:0"])
    assert found(report) == [("S2S-FMT", FIRST_ROW)]
    assert "\\r" in report.violations[0].message


def test_crlf_file_gives_only_carriage_return_violations(tmp_path: Path) -> None:
    text = s2s(["u1 1:0", "u2 2:0"]).replace("\n", "\r\n")
    report = validate_file(write(tmp_path, text))
    assert found(report) == [("S2S-FMT", n) for n in range(1, 10)]


@pytest.mark.parametrize(
    "row",
    [
        "u1\t1:0",
        "u1  1:0",
        " u1 1:0",
        "u1 1:0 ",
        "u1",  # no load
        "u1 1",  # not Segment:Timestamp
        "1:0 2:0",  # no user ID
        "u1\x001 1:0",  # control character
        "u1\u00a01:0",  # no-break space
        "   ",
    ],
)
def test_malformed_row(tmp_path: Path, row: str) -> None:
    report = check(tmp_path, ["u0 1:0", row, "u2 1:0"])
    assert {v.rule for v in report.violations} == {"S2S-FMT"}
    assert {v.line for v in report.violations} == {FIRST_ROW + 1}


def test_invalid_utf8(tmp_path: Path) -> None:
    text = s2s(["u1 1:0", "u2 2:0"]).encode().replace(b"u2", b"u\xff2")
    report = validate_file(write(tmp_path, text))
    assert found(report) == [("S2S-FMT", FIRST_ROW + 1)]
    assert "UTF-8" in report.violations[0].message


def test_blank_line_among_rows(tmp_path: Path) -> None:
    assert found(check(tmp_path, ["u1 1:0", "", "u2 1:0"])) == [("S2S-FMT", FIRST_ROW + 1)]


def test_two_blank_lines_after_header(tmp_path: Path) -> None:
    assert found(check(tmp_path, ["", "u1 1:0"])) == [("S2S-FMT", FIRST_ROW)]


def test_file_may_not_end_with_two_newlines(tmp_path: Path) -> None:
    report = validate_file(write(tmp_path, s2s(["u1 1:0"]) + "\n"))
    assert found(report) == [("S2S-FMT", FIRST_ROW + 1)]


def test_missing_blank_line_after_header(tmp_path: Path) -> None:
    text = "\n".join([*header(), "u1 1:0", "u2 2:0"]) + "\n"
    report = validate_file(write(tmp_path, text))
    assert found(report) == [("S2S-FMT", 7)]
    assert report.lines == 2


def test_no_header_at_all(tmp_path: Path) -> None:
    report = validate_file(write(tmp_path, "u1 1:0\n"))
    assert ("S2S-FMT", 1) in found(report)
    assert {m.split("'")[1] for m in (v.message for v in report.violations if v.line is None)} == {
        "Version",
        "FileIdentifier",
        "DateCreated",
        "UserNamespace",
        "SegmentNamespace",
        "Mobile",
    }


def test_file_with_header_but_no_rows_is_empty(tmp_path: Path) -> None:
    report = check(tmp_path, [])
    assert [(v.rule, v.line, v.message) for v in report.violations] == [
        ("S2S-FMT", None, "File is empty")
    ]


def test_empty_gzip_is_empty(tmp_path: Path) -> None:
    report = validate_file(write(tmp_path, b""))
    assert ("S2S-FMT", None, "File is empty") in [
        (v.rule, v.line, v.message) for v in report.violations
    ]


# -- S2S-HDR ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"Version": "2"}, 1),
        ({"FileIdentifier": "Other_20240101120000.log.gz"}, 2),
        ({"DateCreated": "0"}, 3),
        ({"DateCreated": "-5"}, 3),
        ({"DateCreated": "2024-01-01"}, 3),
        ({"UserNamespace": ""}, 4),
        ({"SegmentNamespace": ""}, 5),
        ({"Mobile": "2"}, 6),
        ({"Version": None}, None),
        ({"Mobile": None}, None),
    ],
)
def test_bad_header_value(tmp_path: Path, overrides: dict[str, str | None], line: int) -> None:
    report = check(tmp_path, ["u1 1:0"], **overrides)
    assert ("S2S-HDR", line) in found(report)
    assert {v.rule for v in report.violations} == {"S2S-HDR"}


def _header_case(tmp_path: Path, lines: list[str]) -> FileReport:
    return validate_file(write(tmp_path, "\n".join([*lines, "", "u1 1:0"]) + "\n"))


def test_header_out_of_order(tmp_path: Path) -> None:
    lines = header()
    lines[0], lines[1] = lines[1], lines[0]
    assert found(_header_case(tmp_path, lines)) == [("S2S-HDR", 2)]


def test_header_repeated_and_unknown(tmp_path: Path) -> None:
    lines = [*header(), "Mobile: 0", "Colour: blue"]
    assert found(_header_case(tmp_path, lines)) == [("S2S-HDR", 7), ("S2S-HDR", 8)]


def test_header_separator_must_be_colon_space(tmp_path: Path) -> None:
    lines = header()
    lines[0] = "Version:3"
    report = _header_case(tmp_path, lines)
    assert found(report) == [("S2S-HDR", 1)]
    assert report.header["Version"] == "3"


def test_user_table_id_only_outside_mm(tmp_path: Path) -> None:
    lines = header()
    lines.insert(4, "UserTableId: 123")
    assert found(_header_case(tmp_path, lines)) == [("S2S-HDR", 5)]
    other = header(UserNamespace="acme")
    other.insert(4, "UserTableId: 123")
    assert _header_case(tmp_path, other).ok


@pytest.mark.parametrize("name", ["HashSegments", "HashIDs"])
def test_optional_flags_must_be_0_or_1(tmp_path: Path, name: str) -> None:
    assert found(_header_case(tmp_path, [*header(), f"{name}: yes"])) == [("S2S-HDR", 7)]


# -- S2S-SEG, S2S-TS ----------------------------------------------------------------------------


@pytest.mark.parametrize("seg", ["2147483648", "9999999999", "01", "-1", "+1", "1a", "abc", ""])
def test_bad_integer_segment(tmp_path: Path, seg: str) -> None:
    report = check(tmp_path, ["u0 1:0", f"u1 1:0 {seg}:0"])
    assert found(report) == [("S2S-SEG", FIRST_ROW + 1)]


@pytest.mark.parametrize("seg", ["0", "7", "2147483647", "1999999999", "2147483639"])
def test_good_integer_segment(tmp_path: Path, seg: str) -> None:
    assert check(tmp_path, [f"u1 {seg}:0"]).ok


def test_hashed_segment_rules(tmp_path: Path) -> None:
    ok = check(tmp_path, ["u1 abc:0 01:0 2147483648:0"], HashSegments="1")
    assert ok.ok, ok.violations
    bad = check(tmp_path, ["u1 a:b:0"], HashSegments="1")
    assert found(bad) == [("S2S-SEG", FIRST_ROW + 1)]  # one more header line


def test_integer_segment_pattern_matches_int_compare() -> None:
    rnd = random.Random(7)
    candidates = [str(2**31 - 1 + d) for d in range(-50, 50)]
    candidates += [str(rnd.randrange(10**9, 10**10)) for _ in range(5000)]
    candidates += [str(rnd.randrange(0, 10**9)) for _ in range(1000)]
    for seg in candidates:
        row = f"u {seg}:0".encode()
        assert bool(sv._ROW_INT_RE.fullmatch(row)) == (int(seg) <= 2_147_483_647), seg


@pytest.mark.parametrize("ts", ["00", "+5", "-2", "-0", "1.5", "abc", "", "01"])
def test_bad_timestamp(tmp_path: Path, ts: str) -> None:
    report = check(tmp_path, ["u0 1:0", f"u1 1:{ts}"])
    assert found(report) == [("S2S-TS", FIRST_ROW + 1)]


# -- S2S-LINE --------------------------------------------------------------------------------


def _row_of_length(uid: str, length: int, start: int = 100000) -> str:
    """A row of exactly ``length`` characters with distinct loads (last one padded)."""
    row = uid
    seg = start
    while len(row) + len(f" {seg}:0") + 12 <= length:
        row += f" {seg}:0"
        seg += 1
    pad = length - len(row) - len(f" {seg}:")
    return row + f" {seg}:1" + "0" * (pad - 1)


def test_line_of_8000_characters_is_too_long(tmp_path: Path) -> None:
    row = _row_of_length("u1", 8000)
    assert len(row) == 8000
    report = check(tmp_path, ["u0 1:0", row])
    assert found(report) == [("S2S-LINE", FIRST_ROW + 1)]
    assert "8,000 characters" in report.violations[0].message
    assert check(tmp_path, ["u0 1:0", _row_of_length("u1", 7999)]).ok


def test_line_length_counts_characters_not_bytes(tmp_path: Path) -> None:
    row = "u1 " + "é" * 7994 + ":0"  # 7999 characters, 15997 bytes
    assert check(tmp_path, [row], HashSegments="1").ok
    report = check(tmp_path, [row.replace("é", "éé", 1)], HashSegments="1")
    assert found(report) == [("S2S-LINE", FIRST_ROW + 1)]  # one more header line


def test_long_header_line(tmp_path: Path) -> None:
    report = check(tmp_path, ["u1 1:0"], SegmentNamespace="x" * 8000)
    assert found(report) == [("S2S-LINE", 5)]


def test_line_too_long_to_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sv, "_CHUNK_BYTES", 4096)
    monkeypatch.setattr(sv, "_MAX_PENDING_BYTES", 10000)
    huge = "u1 " + " ".join(f"{i}:0" for i in range(1, 20000))
    report = check(tmp_path, ["u0 1:0", huge, "u2 1:0"])
    assert found(report) == [("S2S-LINE", FIRST_ROW + 1)]
    assert report.lines == 3


# -- S2S-EFF, S2S-MOB --------------------------------------------------------------------------


def test_user_repeated_on_non_consecutive_line(tmp_path: Path) -> None:
    report = check(tmp_path, ["u1 1:0", "u2 1:0", "u1 2:0"])
    assert found(report) == [("S2S-EFF", FIRST_ROW + 2)]
    assert report.users == 2


def test_user_continued_although_line_had_room(tmp_path: Path) -> None:
    report = check(tmp_path, ["u1 1:0", "u1 2:0"])
    assert found(report) == [("S2S-EFF", FIRST_ROW + 1)]


def test_legitimate_two_line_user(tmp_path: Path) -> None:
    first = _row_of_length("u1", 7995)
    # 7995 + 1 + len("5:0") = 7999 < 8000 would still fit; a 5-character load does not.
    fits = check(tmp_path, [first, "u1 5:0"])
    assert found(fits) == [("S2S-EFF", FIRST_ROW + 1)]
    report = check(tmp_path, [first, "u1 12:34", "u2 1:0"])
    assert report.ok, report.violations
    assert (report.users, report.lines, report.loads) == (2, 3, first.count(" ") + 2)


def test_three_line_user_needs_every_line_full(tmp_path: Path) -> None:
    full_a = _row_of_length("u1", 7999, start=100000)
    full_b = _row_of_length("u1", 7999, start=200000)
    assert check(tmp_path, [full_a, full_b, "u1 1:0"]).ok
    report = check(tmp_path, [full_a, "u1 1:0", "u1 2:0"])
    assert found(report) == [("S2S-EFF", FIRST_ROW + 2)]


def test_repeated_pair_on_one_line(tmp_path: Path) -> None:
    report = check(tmp_path, ["u1 1:0 2:0 1:0"])
    assert found(report) == [("S2S-EFF", FIRST_ROW)]
    assert "1:0" in report.violations[0].message


def test_repeated_pair_across_continuation_lines(tmp_path: Path) -> None:
    first = _row_of_length("u1", 7999)
    repeated = first.split(" ")[1]
    report = check(tmp_path, [first, f"u1 {repeated}"])
    assert found(report) == [("S2S-EFF", FIRST_ROW + 1)]


def test_mobile_ids_compare_case_insensitively(tmp_path: Path) -> None:
    rows = ["ABC-DEF 1:0", "other 1:0", "abc-def 2:0"]
    assert check(tmp_path, rows).ok  # cookies: case matters
    report = check(tmp_path, rows, Mobile="1")
    assert found(report) == [("S2S-EFF", FIRST_ROW + 2)]
    assert "case-insensitive" in report.violations[0].message


def test_mobile_consecutive_case_variant_is_a_continuation(tmp_path: Path) -> None:
    report = check(tmp_path, ["ABC 1:0", "abc 2:0"], Mobile="1")
    assert found(report) == [("S2S-EFF", FIRST_ROW + 1)]


# -- reporting -----------------------------------------------------------------------------------


def test_violations_are_capped_but_counted(tmp_path: Path) -> None:
    rows = [f"u{i} 1:00" for i in range(50)]
    report = validate_file(write(tmp_path, s2s(rows)), max_violations_per_rule=3)
    assert report.violation_counts == {"S2S-TS": 50}
    assert [v.line for v in report.violations] == [8, 9, 10]
    assert not report.ok


def test_small_chunks_give_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [f"user{i} {i}:0 {i + 7}:-1" for i in range(300)]
    rows[100] = "user5 1:0"  # non-consecutive repeat
    rows[200] = "usér200 1:0\r"  # non-ASCII and CR
    path = write(tmp_path, s2s(rows).rstrip("\n"))
    expected = validate_file(path)
    monkeypatch.setattr(sv, "_CHUNK_BYTES", 5)
    small = validate_file(path)
    assert small == expected
    assert found(small) == [("S2S-EFF", FIRST_ROW + 100), ("S2S-FMT", FIRST_ROW + 200)]


def _imports(module: object) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return modules | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_validator_is_independent_of_the_writer() -> None:
    # The validator is two modules, the per-line path and the block path: they import nothing
    # of the project but each other, and the block path none of the writer's libraries.
    ours = {sv.__name__, svf.__name__}
    for module in (sv, svf):
        foreign = {
            m for m in _imports(module) - ours if m.split(".")[0] in ("mm_assets", "dagster")
        }
        assert not foreign
    assert not {m for m in _imports(svf) if m.split(".")[0] in ("duckdb", "zlib_ng")}


def test_violation_is_frozen() -> None:
    v = Violation("S2S-FMT", None, "x")
    with pytest.raises(AttributeError):
        v.rule = "other"  # type: ignore[misc]


# -- main() ----------------------------------------------------------------------------------


def test_main_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "ExamplePartner_20140730230000.log.gz"
    path = write(tmp_path, VENDOR_EXAMPLE.replace("ExamplePartner_201407302300.log.gz", name), name)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out == f"{path}: OK (3 users, 3 lines, 5 loads)\n"


def test_main_reports_violations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, s2s(["u1 1:0"]))
    bad_name = "Bad_20240101120000.log.gz"
    bad = write(tmp_path, s2s(["u1 1:0", "u1 1:0"], name=bad_name), bad_name)
    not_gz = tmp_path / "Plain_20240101120000.log.gz"
    not_gz.write_text("hello\n")
    assert main([str(good), str(bad), str(not_gz)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{good}: OK (1 users, 1 lines, 1 loads)",
        f"{bad}:9: S2S-EFF: " + out[1].split(": S2S-EFF: ")[1],
        f"{bad}:9: S2S-EFF: user ID 'u1' repeats 1 load(s): 1:0",
        f"{bad}: 2 violations",
        f"{not_gz}:-: S2S-FMT: File is not in GZIP format",
        f"{not_gz}: 1 violations",
    ]
    assert "continues from line 8" in out[1]


def test_main_shows_hidden_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, s2s([f"u{i} 1:00" for i in range(5)]))
    assert main(["--max-violations", "2", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[-1] == f"{path}: 5 violations (3 not shown)"


def test_main_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--max-violations", "many", "x"]) == 2
    assert main([str(tmp_path / "missing_20240101120000.log.gz")]) == 2
    err = capsys.readouterr().err
    assert "missing_20240101120000.log.gz: error:" in err
