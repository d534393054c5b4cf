"""Merge (conflict rule, folding, continuation lines) and writer (families, splits, names,
manifest), asserted on the bytes of the gzipped S2S files read back with the standard library
and on the independent validator."""

from __future__ import annotations

import hashlib
import random
import uuid
from datetime import UTC, datetime

import pytest

from mm_assets.core.s2s_validator import validate_file
from mm_assets.core.s2s_writer import NAME_REGISTER, read_manifest, write_s2s_files
from mm_assets_tests.conftest import (
    NOW,
    PARTNER,
    csv_bytes,
    make_settings,
    parse_s2s,
    run_build,
    s2s_files_in,
    write_batch,
)


def build(tmp_path, rows, name="batch_1", **overrides):
    batch = write_batch(tmp_path, {"part.csv": csv_bytes(rows)}, name=name)
    return run_build(
        batch, tmp_path / "work" / name, make_settings(**overrides), outbox_root=tmp_path / "outbox"
    )


def assert_all_valid(paths, **kw):
    for path in paths:
        report = validate_file(path, **kw)
        assert report.ok, (path.name, report.violations[:5])


# --- merge: the conflict rule --------------------------------------------------------------

CONFLICT_ROWS = [
    # seg 1: removal wins over add-now and a dated add
    ("u1", "1", "0", "", ""),
    ("u1", "1", "1765000000", "", ""),
    ("u1", "1", "-1", "", ""),
    # seg 2: add-now wins over dated adds (even a later one)
    ("u1", "2", "1765000000", "", ""),
    ("u1", "2", "0", "", ""),
    ("u1", "2", "1999999999", "", ""),
    # seg 3: otherwise the latest timestamp wins
    ("u1", "3", "1700000000", "", ""),
    ("u1", "3", "1765000000", "", ""),
    ("u1", "3", "1760000000", "", ""),
    # seg 4: identical repeats fold silently (no conflict)
    ("u1", "4", "5", "", ""),
    ("u1", "4", "5", "", ""),
    # the same user+segment in another file (agency) is not in conflict with the global one
    ("u1", "1", "0", "Acme", ""),
]


def test_conflict_rule_removal_then_now_then_latest(tmp_path):
    result = build(tmp_path, CONFLICT_ROWS)
    files = {f.agency: f for f in map(parse_s2s, s2s_files_in(result.outbox))}
    assert files[""].loads() == {
        ("u1", "1", "-1"),
        ("u1", "2", "0"),
        ("u1", "3", "1765000000"),
        ("u1", "4", "5"),
    }
    assert files["Acme"].loads() == {("u1", "1", "0")}
    assert len(files[""].rows) == 1  # one line for the user (S2S-EFF)


def test_conflict_rule_does_not_depend_on_row_order(tmp_path):
    outputs = set()
    for i in range(3):
        rows = list(CONFLICT_ROWS)
        random.Random(i).shuffle(rows)
        result = build(tmp_path, rows, name=f"batch_{i}")
        outputs.add(
            frozenset(
                (f.agency, *load)
                for f in map(parse_s2s, s2s_files_in(result.outbox))
                for load in f.loads()
            )
        )
    assert len(outputs) == 1


def test_merge_counts_repeats_folded_and_conflicts(tmp_path):
    merge = build(tmp_path, CONFLICT_ROWS).merge
    assert merge.rows_in == 12
    assert merge.loads_out == 5
    assert merge.repeats_folded == 7
    assert merge.conflicts == 3  # segments 1, 2 and 3 of the global file
    assert merge.users == 2  # u1 in the global file and in Acme's
    assert merge.continued_users == 0


# --- merge: continuation lines -------------------------------------------------------------


def test_user_with_1500_loads_continues_on_consecutive_lines_that_pass_the_validator(tmp_path):
    big = "0e6f9b1c-0000-4000-8000-000000000001"
    rows = [(big, str(100000 + i), "1765000000", "", "") for i in range(1500)]
    rows += [("small-1", "7", "0", "", ""), ("small-2", "8", "-1", "", "")]
    result = build(tmp_path, rows)
    [path] = s2s_files_in(result.outbox)
    parsed = parse_s2s(path)
    big_lines = [i for i, (user, _) in enumerate(parsed.rows) if user == big]
    assert len(big_lines) == 4  # 1,500 loads of 17 characters need 4 lines < 8,000
    assert big_lines == list(range(big_lines[0], big_lines[0] + 4))  # consecutive
    assert parsed.loads() == {(u, s, t) for u, s, t, _, _ in rows}
    assert result.merge.continued_users == 1
    assert result.built[0].lines == 6 and result.built[0].users == 3
    assert result.built[0].loads == 1502
    assert_all_valid([path])


# --- writer: one file per family -----------------------------------------------------------


def test_one_file_per_agency_and_global_cookie_and_mobile_never_mixed(tmp_path):
    rows = [
        ("cookie-g", "1", "0", "", "cookie"),
        ("DEV-G", "2", "0", "", "idfa"),
        ("cookie-a", "3", "0", "Acme Retail", ""),
        ("DEV-A", "4", "0", "Acme Retail", "gaid"),
        ("cookie-b", "5", "0", "Globex-Media", "cookie"),
        ("dev-g", "6", "0", "", "IDFA"),  # the same device as DEV-G (S2S-MOB)
    ]
    result = build(tmp_path, rows)
    paths = s2s_files_in(result.outbox)
    got = {}
    for path in paths:
        parsed = parse_s2s(path)
        assert parsed.header["FileIdentifier"] == path.name
        got[(parsed.agency, parsed.mobile)] = parsed.loads()
    assert got == {
        ("", False): {("cookie-g", "1", "0")},
        ("", True): {("dev-g", "2", "0"), ("dev-g", "6", "0")},
        ("AcmeRetail", False): {("cookie-a", "3", "0")},
        ("AcmeRetail", True): {("dev-a", "4", "0")},
        ("GlobexMedia", False): {("cookie-b", "5", "0")},
    }
    assert sorted(p.name for p in paths) == sorted(
        [
            "AcmeRetail_ExamplePartner_20261120120000.log.gz",
            "AcmeRetail_ExamplePartner_20261120120001.log.gz",
            "GlobexMedia_ExamplePartner_20261120120000.log.gz",
            "ExamplePartner_20261120120000.log.gz",
            "ExamplePartner_20261120120001.log.gz",
        ]
    )
    assert_all_valid(paths)


def test_header_carries_settings_and_build_time(tmp_path):
    result = build(
        tmp_path,
        [("u1", "1", "0", "", "")],
        user_namespace="acme1p",
        user_table_id="42",
        segment_namespace="ns9",
    )
    [path] = s2s_files_in(result.outbox)
    assert parse_s2s(path).header_lines == [
        "Version: 3",
        f"FileIdentifier: {path.name}",
        f"DateCreated: {int(NOW.timestamp())}",
        "UserNamespace: acme1p",
        "UserTableId: 42",
        "SegmentNamespace: ns9",
        "Mobile: 0",
    ]
    assert_all_valid([path])


def test_hashed_taxonomy_file_declares_hash_segments(tmp_path):
    rows = [
        ("u1", "sports_fan", "0", "SportsDaily", ""),
        ("u2", "101", "0", "", ""),
        ("u3", "102", "0", "Acme", ""),
        ("DEV", "golf", "-1", "SportsDaily", "idfa"),
    ]
    result = build(tmp_path, rows, hashed_taxonomies=frozenset({"SportsDaily"}))
    parsed = {(f.agency, f.mobile): f for f in map(parse_s2s, s2s_files_in(result.outbox))}
    assert parsed[("SportsDaily", False)].header.get("HashSegments") == "1"
    assert parsed[("SportsDaily", True)].header.get("HashSegments") == "1"
    assert "HashSegments" not in parsed[("", False)].header
    assert "HashSegments" not in parsed[("Acme", False)].header
    assert parsed[("SportsDaily", False)].loads() == {("u1", "sports_fan", "0")}
    assert {f.name: f.hash_segments for f in result.built} == {
        name: f.header.get("HashSegments") == "1"
        for name, f in ((f.name, f) for f in parsed.values())
    }
    assert_all_valid(s2s_files_in(result.outbox))


def test_hashed_taxonomy_matching_is_case_insensitive_end_to_end(tmp_path):
    result = build(
        tmp_path,
        [("u1", "sports_fan", "0", "SportsDaily", "")],
        hashed_taxonomies=frozenset({"sportsdaily"}),
    )
    assert_all_valid(s2s_files_in(result.outbox))


# --- writer: splitting under the size limit ------------------------------------------------


def split_rows(users=2500, big_user_loads=0):
    rng = random.Random(7)
    rows = []
    for _ in range(users):
        user = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        for _ in range(rng.randint(1, 4)):
            rows.append(
                (
                    user,
                    str(rng.randint(0, 2_000_000_000)),
                    rng.choice(["0", "-1", str(rng.randint(1_700_000_000, 1_800_000_000))]),
                    "",
                    "",
                )
            )
    # a user with continuation lines must stay whole inside one file
    rows += [("big-user", str(500000 + i), "1765000000", "", "") for i in range(big_user_loads)]
    return rows


def expected_loads(rows):
    """The conflict rule in plain Python: (user, segment) -> kept timestamp."""
    kept: dict[tuple[str, str], int] = {}
    rank = {-1: (0, 0), 0: (1, 0)}
    for user, seg, ts, _, _ in rows:
        t = int(ts)
        old = kept.get((user, seg))
        if old is None or rank.get(t, (2, -t)) < rank.get(old, (2, -old)):
            kept[(user, seg)] = t
    return {(u, s, str(t)) for (u, s), t in kept.items()}


def test_forced_split_gives_complete_valid_files_under_the_limit(tmp_path):
    limit = 20_000
    rows = split_rows(big_user_loads=500)  # ~9 KB of text: two lines, one file
    result = build(tmp_path, rows, max_file_bytes=limit)
    paths = s2s_files_in(result.outbox)
    assert len(paths) >= 5
    assert_all_valid(paths, max_file_bytes=limit)
    seen_users: set[str] = set()
    loads: set[tuple[str, str, str]] = set()
    for path in paths:
        assert path.stat().st_size <= limit
        parsed = parse_s2s(path)
        assert parsed.header["FileIdentifier"] == path.name
        assert not (parsed.users() & seen_users), "a user is split across two files"
        seen_users |= parsed.users()
        file_loads = parsed.loads()
        assert not (file_loads & loads)
        loads |= file_loads
    assert loads == expected_loads(rows)
    assert sum(f.loads for f in result.built) == len(loads) == result.merge.loads_out
    assert len({p.name for p in paths}) == len(paths)
    assert result.merge.continued_users == 1
    assert not list(result.outbox.glob("*.partial")) and not list(result.outbox.glob(".*"))


def test_names_are_unique_within_one_second(tmp_path):
    result = build(tmp_path, split_rows(800), max_file_bytes=8_000)
    names = sorted(f.name for f in result.built)
    assert len(names) == len(set(names)) > 3
    stamps = sorted(int(n.removesuffix(".log.gz").rsplit("_", 1)[1]) for n in names)
    assert stamps == list(range(20261120120000, 20261120120000 + len(names)))


def test_manifest_matches_the_files_bytes_and_md5(tmp_path):
    result = build(tmp_path, split_rows(600), max_file_bytes=10_000)
    manifest = read_manifest(result.outbox)
    assert manifest == result.built
    assert {m.name for m in manifest} == {p.name for p in s2s_files_in(result.outbox)}
    for entry in manifest:
        data = (result.outbox / entry.name).read_bytes()
        assert entry.bytes == len(data)
        assert entry.md5 == hashlib.md5(data).hexdigest()
        parsed = parse_s2s(result.outbox / entry.name)
        assert entry.users == len(parsed.users())
        assert entry.lines == len(parsed.rows)
        assert entry.loads == len(parsed.loads())
        assert (entry.agency, entry.mobile) == (parsed.agency, parsed.mobile)


def test_a_single_user_too_big_for_the_limit_is_refused(tmp_path):
    rows = [("huge", str(1_000_000 + i), "1765000000", "", "") for i in range(3000)]
    with pytest.raises(ValueError, match="cannot fit"):
        build(tmp_path, rows, max_file_bytes=4096)


# --- writer: rebuilds ----------------------------------------------------------------------


def test_rebuilding_a_batch_issues_new_names_and_replaces_the_old_files(tmp_path):
    rows = [("u1", "1", "0", "", ""), ("u2", "2", "0", "Acme", "idfa")]
    first = build(tmp_path, rows)
    first_names = {f.name for f in first.built}
    settings = make_settings()
    again = write_s2s_files(
        first.merge.merged_dir, first.outbox, settings, now=NOW, batch="batch_1"
    )
    again_names = {f.name for f in again}
    assert not first_names & again_names
    assert {p.name for p in s2s_files_in(first.outbox)} == again_names
    assert {f.name for f in read_manifest(first.outbox)} == again_names
    register = (tmp_path / "outbox" / NAME_REGISTER).read_text().split()
    assert set(register) == first_names | again_names
    # Another batch in the same outbox at the same second gets names of its own too.
    other = build(tmp_path, rows, name="batch_2")
    assert not {f.name for f in other.built} & (first_names | again_names)


def test_partner_name_is_part_of_every_name(tmp_path):
    result = build(tmp_path, [("u1", "1", "0", "Acme", "")], partner_name="OtherPartner")
    assert [f.name for f in result.built] == ["Acme_OtherPartner_20261120120000.log.gz"]
    assert PARTNER not in result.built[0].name


def test_build_time_is_written_in_utc(tmp_path):
    batch = write_batch(tmp_path, {"p.csv": csv_bytes([("u1", "1", "0", "", "")])})
    result = run_build(
        batch, tmp_path / "work", make_settings(), now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert [f.name for f in result.built] == ["ExamplePartner_20260102030405.log.gz"]
