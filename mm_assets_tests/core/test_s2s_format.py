"""S2S-HDR headers, S2S-NAME file names and S2S-LINE line layout (mm_assets.core.s2s_format)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm_assets.core.s2s_format import (
    MAX_LINE_CHARS,
    FileHeader,
    FileNameAllocator,
    FormatError,
    file_name,
    require_name_part,
    sanitise_name_part,
    split_user_line,
)
from mm_assets.core.s2s_validator import validate_file

STAMP = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def header(**kw: object) -> FileHeader:
    values: dict[str, object] = {
        "file_identifier": "ExamplePartner_20261120120000.log.gz",
        "date_created": 1795176000,
        "segment_namespace": "ep",
        "mobile": False,
    }
    values.update(kw)
    return FileHeader(**values)  # type: ignore[arg-type]


# --- S2S-HDR -------------------------------------------------------------------------------


def test_header_default_is_the_documented_order_and_ends_with_one_blank_line():
    assert header().render() == (
        b"Version: 3\n"
        b"FileIdentifier: ExamplePartner_20261120120000.log.gz\n"
        b"DateCreated: 1795176000\n"
        b"UserNamespace: mm\n"
        b"SegmentNamespace: ep\n"
        b"Mobile: 0\n"
        b"\n"
    )


def test_header_mobile_is_1_for_device_ids():
    assert b"\nMobile: 1\n\n" in header(mobile=True).render()


def test_header_user_table_id_only_outside_the_mm_namespace():
    rendered = header(user_namespace="acme1p", user_table_id="42").render().decode()
    assert rendered.split("\n")[3:6] == [
        "UserNamespace: acme1p",
        "UserTableId: 42",
        "SegmentNamespace: ep",
    ]
    # In the mm namespace UserTableId is left out even when configured.
    assert b"UserTableId" not in header(user_namespace="mm", user_table_id="42").render()
    # Outside mm but with no table id: nothing to write.
    assert b"UserTableId" not in header(user_namespace="acme1p").render()


@pytest.mark.parametrize(
    ("hash_segments", "hash_ids", "tail"),
    [
        (False, False, ["Mobile: 0"]),
        (True, False, ["Mobile: 0", "HashSegments: 1"]),
        (False, True, ["Mobile: 0", "HashIDs: 1"]),
        (True, True, ["Mobile: 0", "HashSegments: 1", "HashIDs: 1"]),
    ],
)
def test_header_hash_flags_only_when_set_and_after_mobile(hash_segments, hash_ids, tail):
    text = header(hash_segments=hash_segments, hash_ids=hash_ids).render().decode()
    assert text.endswith("\n\n") and not text.endswith("\n\n\n")
    lines = text[:-2].split("\n")
    assert lines[-len(tail) :] == tail
    assert ("HashSegments: 0" not in text) and ("HashIDs: 0" not in text)


def test_every_header_variant_passes_the_independent_validator(tmp_path):
    name = "Acme_ExamplePartner_20261120120000.log.gz"
    for i, kw in enumerate(
        [
            {},
            {"mobile": True},
            {"hash_segments": True},
            {"hash_ids": True},
            {"user_namespace": "acme1p", "user_table_id": "7"},
        ]
    ):
        folder = tmp_path / str(i)
        folder.mkdir()
        path = folder / name
        hashed = kw.get("hash_segments", False)
        row = b"user1 " + (b"sports_fan:0" if hashed else b"123:0") + b"\n"
        path.write_bytes(gzip.compress(header(file_identifier=name, **kw).render() + row))
        report = validate_file(path)
        assert report.ok, (kw, report.violations)


# --- S2S-NAME ------------------------------------------------------------------------------


def test_file_name_global_data_has_no_agency_part():
    assert file_name("ExamplePartner", STAMP) == "ExamplePartner_20261120120000.log.gz"


def test_file_name_private_client_data_starts_with_the_agency():
    assert file_name("ExamplePartner", STAMP, "AcmeRetail") == (
        "AcmeRetail_ExamplePartner_20261120120000.log.gz"
    )


def test_file_name_stamp_is_utc_whatever_the_input_zone():
    local = STAMP.astimezone(timezone(timedelta(hours=-5)))
    assert file_name("P", local) == "P_20261120120000.log.gz"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Acme Retail", "AcmeRetail"),
        ("Globex-Media", "GlobexMedia"),
        ("a_b.c/d", "abcd"),
        ("Café 9", "Caf9"),
        ("!!!", ""),
        ("", ""),
        ("Plain42", "Plain42"),
    ],
)
def test_sanitise_name_part_keeps_only_ascii_letters_and_digits(raw, clean):
    assert sanitise_name_part(raw) == clean


@pytest.mark.parametrize("bad", ["", "has_underscore", "has space", "Café", "a-b"])
def test_require_name_part_refuses_characters_outside_the_name_alphabet(bad):
    with pytest.raises(FormatError, match="S2S-NAME"):
        require_name_part(bad, "partner name")


def test_allocator_gives_the_stamp_itself_when_free_and_drops_microseconds():
    alloc = FileNameAllocator("P", [], STAMP.replace(microsecond=999_999))
    assert alloc.allocate(None) == "P_20261120120000.log.gz"


def test_allocator_takes_the_next_free_second_when_the_name_is_taken():
    taken = ["P_20261120120000.log.gz", "P_20261120120001.log.gz"]
    alloc = FileNameAllocator("P", taken, STAMP)
    assert alloc.allocate(None) == "P_20261120120002.log.gz"


def test_allocator_never_issues_a_name_twice_and_rolls_over_the_minute():
    alloc = FileNameAllocator("P", [], datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC))
    names = [alloc.allocate("Acme") for _ in range(3)]
    assert names == [
        "Acme_P_20261231235958.log.gz",
        "Acme_P_20261231235959.log.gz",
        "Acme_P_20270101000000.log.gz",
    ]


def test_allocator_names_of_different_agencies_share_a_second():
    alloc = FileNameAllocator("P", ["P_20261120120000.log.gz"], STAMP)
    assert alloc.allocate("Acme") == "Acme_P_20261120120000.log.gz"
    assert alloc.allocate(None) == "P_20261120120001.log.gz"


def test_allocator_refuses_an_invalid_partner_name():
    with pytest.raises(FormatError):
        FileNameAllocator("Example_Partner", [], STAMP)


# --- S2S-SEG -------------------------------------------------------------------------------


# --- S2S-LINE / S2S-EFF --------------------------------------------------------------------


def test_split_keeps_a_short_user_on_one_line():
    assert list(split_user_line("u1", ["1:0", "2:-1", "3:1765000000"])) == [
        "u1 1:0 2:-1 3:1765000000"
    ]


def test_split_line_of_exactly_7999_characters_stays_one_line():
    # "u" + " " + 3998 + " " + 3998 = 7,999 characters: the longest line allowed.
    a, b = "1:" + "0" * 3996, "2:" + "0" * 3996
    lines = list(split_user_line("u", [a, b]))
    assert lines == [f"u {a} {b}"]
    assert len(lines[0]) == MAX_LINE_CHARS == 7999


def test_split_line_that_would_reach_8000_characters_continues():
    a, b = "1:" + "0" * 3996, "2:" + "0" * 3997  # one character more: 8,000
    assert list(split_user_line("u", [a, b])) == [f"u {a}", f"u {b}"]


def test_split_refuses_a_single_load_that_cannot_fit_any_line():
    with pytest.raises(FormatError):
        list(split_user_line("u", ["1:" + "0" * 7996]))  # "u " + 7,998 = 8,000 characters


def test_split_1500_loads_uses_few_full_lines_in_order():
    loads = [f"{100000 + i}:1765000000" for i in range(1500)]  # 17 characters each
    lines = list(split_user_line("0e6f9b1c-0000-4000-8000-000000000001", loads))
    assert len(lines) == 4  # 1,500 * 18 characters need at least 4 lines of < 8,000
    assert all(len(line) < 8000 for line in lines)
    assert [load for line in lines for load in line.split(" ")[1:]] == loads


@settings(max_examples=60, deadline=None)
@given(
    user=st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40),
    loads=st.lists(
        st.builds(
            lambda s, t: f"{s}:{t}",
            st.integers(0, 2_147_483_647),
            st.sampled_from([-1, 0, 1765000000, 1]),
        )
        | st.text(alphabet="abcxyz_0123", min_size=1, max_size=300).map(lambda s: s + ":0"),
        min_size=1,
        max_size=700,
    ),
)
def test_split_property_lines_short_continuations_only_when_needed_loads_in_order(user, loads):
    lines = list(split_user_line(user, loads))
    assert all(len(line) < 8000 for line in lines)
    assert all(line.startswith(user + " ") for line in lines)
    assert [load for line in lines for load in line[len(user) + 1 :].split(" ")] == loads
    for previous, nxt in pairwise(lines):
        first_load = nxt[len(user) + 1 :].split(" ")[0]
        # A continuation exists only because the previous line could not take its first load.
        assert len(previous) + 1 + len(first_load) >= 8000


def test_line_length_counts_characters_as_the_validator_does():
    """S2S-LINE counts characters: a non-ASCII user ID must not end its lines early."""
    user = "é" * 30  # 30 characters, 60 bytes
    lines = list(split_user_line(user, ["12345:0"] * 3000))
    assert all(len(line) <= MAX_LINE_CHARS for line in lines)
    for line in lines[:-1]:
        assert len(line) + len(" 12345:0") > MAX_LINE_CHARS
