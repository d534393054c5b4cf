"""The reader's cheap proofs (issue 14) never change a row's outcome.

The row checks (`export_reader._normalise_sql`) prove most values good with cheap built-ins
before any regex runs, and prove a whole row good before the chain of checks that names a bad
row's reason. A proof may only ever say "good" where the exact check would: these tests compare
each proof with the exact check, character by character, and every output column of the checks
with and without the row proof, on hostile rows (S2S-FMT, S2S-SEG, S2S-TS, S2S-LINE, S2S-NAME).
"""

from __future__ import annotations

import itertools
import re

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_assets.core import export_reader as er
from mm_assets.core.s2s_format import MAX_LINE_CHARS

# Every ASCII character and a sample of the rest: Latin-1, combining marks, line and
# paragraph separators, surrogates' neighbours, the last code point.
CHARACTERS = [chr(c) for c in range(0x300)] + [
    "\u2028",
    "\u200b",
    "\ufeff",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\U0001f600",
    "\U0010ffff",
]


def _values_around(character: str) -> list[str]:
    return [character, f"a{character}b", f"{character}12", f"12{character}", character * 3]


def _agree(con: duckdb.DuckDBPyConnection, proof: str, exact: str, values: list[str]) -> None:
    """`proof` (SQL of column v) has `exact`'s value on every one of `values` (a proof falls
    back to the exact check where it cannot decide, so the two must always agree)."""
    rows = con.execute(
        f"SELECT v, {proof}, {exact} FROM (SELECT unnest(?::VARCHAR[]) AS v)", [values]
    ).fetchall()
    wrong = [(v, p, e) for v, p, e in rows if p != e]
    assert wrong == []


@pytest.fixture(scope="module")
def con():
    with duckdb.connect() as connection:
        yield connection


def test_token_proof_is_the_s2s_fmt_token_regex_on_every_character(con):
    values = [v for c in CHARACTERS for v in _values_around(c)] + ["", None, "x" * 9000]
    _agree(con, er._token_test("v"), f"regexp_full_match(v, '{er.TOKEN_CHARS}')", values)


def test_segment_proof_is_the_digits_regex_around_every_character_and_the_32_bit_range(con):
    numbers = ["0", "00", "01", "7", "2147483647", "4294967295", "4294967296", "99999999999"]
    signs = ["+1", "-1", " 1", "1 ", "1e2", "1.0", "1_0", "0x1", "１", ""]
    values = [v for c in CHARACTERS for v in _values_around(c)] + numbers + signs + [None]
    _agree(
        con, er._segment_digits_test("v"), f"regexp_full_match(v, '{er.SEGMENT_DIGITS}')", values
    )


def test_client_name_glob_is_the_letters_and_digits_regex_on_every_character(con):
    values = [v for c in CHARACTERS for v in _values_around(c)] + ["", None, "Agency01", "[a]*?"]
    _agree(con, er._letters_and_digits_test("v"), "regexp_full_match(v, '[A-Za-z0-9]*')", values)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=20), max_size=30))
def test_proofs_agree_with_their_regexes_on_arbitrary_text(values):
    with duckdb.connect() as connection:
        _agree(connection, er._token_test("v"), f"regexp_full_match(v, '{er.TOKEN_CHARS}')", values)
        _agree(
            connection,
            er._segment_digits_test("v"),
            f"regexp_full_match(v, '{er.SEGMENT_DIGITS}')",
            values,
        )
        _agree(
            connection,
            er._letters_and_digits_test("v"),
            "regexp_full_match(v, '[A-Za-z0-9]*')",
            values,
        )


# Values that sit on each edge the row proof tests: each column's cheap test, the hashed
# taxonomy, the segment's digit count, the timestamp's range, the line's length, the client
# name's length and the collisions.
EDGE_VALUES = {
    "user_id": [
        "u-1",
        "U-1",
        " u-1",
        "u 1",
        "u:1",
        "u\x7f",
        "ü",
        "",
        None,
        "a" * (MAX_LINE_CHARS - 20),
    ],
    "segment": ["101", "0", "007", "123456789", "1234567890", "2147483648", " 5", "h:x", "", None],
    "timestamp": [
        "0",
        "-1",
        "-2",
        "1765000000",
        "253402300799",
        "253402300800",
        " 7",
        "07",
        "+7",
        "7.5",
        "1e3",
        "1_0",
        "¹",
        "x",
        "",
        None,
    ],
    "client": ["", "Acme", "acme", "Ac me", "!!!", "Ün", "A" * 300, None, "Hashed"],
    "device_type": ["cookie", "idfa", "IDFA", " gaid", "fridge", "", None],
}
ROW = st.fixed_dictionaries(
    {
        column: st.one_of(st.sampled_from(values), st.text(max_size=6))
        for column, values in EDGE_VALUES.items()
    }
)


def _checked_rows(
    con: duckdb.DuckDBPyConnection,
    rows: list[dict],
    integer_timestamps: bool,
    fast_path: bool,
    hashed: list[str],
    collisions: list[str],
) -> list[tuple]:
    timestamps = [r["timestamp"] for r in rows]
    if integer_timestamps:
        # A Parquet integer column holds the text's value where it is an ASCII integer that
        # fits (hypothesis finds '¹', which str.isdigit accepts and int() refuses).
        timestamps = [
            int(t) if t and re.fullmatch(r"-?[0-9]{1,18}", t) else None for t in timestamps
        ]
    table = pa.table(
        {
            "line": pa.array(range(1, len(rows) + 1), pa.int64()),
            "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
            "segment": pa.array([r["segment"] for r in rows], pa.string()),
            "timestamp": pa.array(timestamps, pa.int64() if integer_timestamps else pa.string()),
            "client": pa.array([r["client"] for r in rows], pa.string()),
            "device_type": pa.array([r["device_type"] for r in rows], pa.string()),
            "bad_row": pa.array([None] * len(rows), pa.string()),
            "raw": pa.array([None] * len(rows), pa.string()),
        }
    )
    con.register("hostile_rows", table)
    sql = er._normalise_sql(
        "SELECT * FROM hostile_rows", 7, integer_timestamps, fast_path=fast_path
    )
    result = con.execute(sql, ["rows.csv", hashed, collisions]).fetchall()
    return sorted(result, key=repr)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(ROW, min_size=1, max_size=25),
    integer_timestamps=st.booleans(),
    hashed=st.sampled_from([[], ["hashed"], ["@global"]]),
    collisions=st.sampled_from([[], ["acme"]]),
)
def test_the_row_proof_changes_no_rows_bucket_key_values_or_quarantine_reason(
    rows, integer_timestamps, hashed, collisions
):
    with duckdb.connect() as connection:
        proved = _checked_rows(connection, rows, integer_timestamps, True, hashed, collisions)
        exact = _checked_rows(connection, rows, integer_timestamps, False, hashed, collisions)
    assert proved == exact


@pytest.mark.parametrize("integer_timestamps", [False, True], ids=["text_ts", "integer_ts"])
@pytest.mark.parametrize("hashed", [[], ["hashed"], ["@global"]], ids=["plain", "hashed", "global"])
@pytest.mark.parametrize("collisions", [[], ["acme"]], ids=["unique", "colliding"])
def test_the_row_proof_changes_no_outcome_on_every_combination_of_edge_values(
    integer_timestamps, hashed, collisions
):
    rows = [
        dict(zip(EDGE_VALUES, values, strict=True))
        for values in itertools.product(*EDGE_VALUES.values())
    ]
    with duckdb.connect() as connection:
        proved = _checked_rows(connection, rows, integer_timestamps, True, hashed, collisions)
        exact = _checked_rows(connection, rows, integer_timestamps, False, hashed, collisions)
    assert len(proved) == len(rows)
    assert proved == exact
