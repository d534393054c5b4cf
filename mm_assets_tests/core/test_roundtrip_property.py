"""Property: any small export batch, pushed through read -> merge -> write, comes back out of
the gzipped S2S files as exactly the loads the conflict rule predicts, and every file is valid.

The expectation is computed here in plain Python, independently of the DuckDB code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_assets.core.s2s_validator import validate_file
from mm_assets_tests.conftest import (
    csv_bytes,
    make_settings,
    parse_s2s,
    run_build,
    s2s_files_in,
    write_batch,
)

USERS = ["cookie-a", "Cookie-A", "c0ffee-b", "DEV-1", "dev-1", "Dev-2", "x9"]
SEGMENTS = ["1", "42", "2147483647", "100000", "7"]
TIMESTAMPS = ["-1", "0", "", "1", "1700000000", "1765000000", "1999999999"]
# "Acme Retail" and "Acme-Retail" sanitise to one file name: when both occur, their rows are
# quarantined (S2S-NAME).
CLIENTS = ["", "", "Acme Retail", "Acme-Retail", "Globex", "Initech"]
DEVICE_TYPES = ["", "cookie", "idfa", "IDFA", "gaid", "ctv", "mobile", "Cookie"]
MOBILE_TYPES = {"idfa", "gaid", "ctv", "mobile"}


@st.composite
def export_rows(draw) -> list[tuple[str, str, str, str, str]]:
    """Rows where one user+segment+file often has several loads (to exercise the conflicts)."""
    rows = []
    for _ in range(draw(st.integers(1, 25))):
        user, segment = draw(st.sampled_from(USERS)), draw(st.sampled_from(SEGMENTS))
        client, device = draw(st.sampled_from(CLIENTS)), draw(st.sampled_from(DEVICE_TYPES))
        for ts in draw(st.lists(st.sampled_from(TIMESTAMPS), min_size=1, max_size=4)):
            rows.append((user, segment, ts, client, device))
    return draw(st.permutations(rows))


def sanitise(client: str) -> str:
    return "".join(ch for ch in client if ch.isascii() and ch.isalnum())


def colliding_rows(rows) -> list[tuple[str, ...]]:
    spellings: dict[str, set[str]] = {}
    for row in rows:
        if row[3]:
            spellings.setdefault(sanitise(row[3]).lower(), set()).add(row[3])
    return [row for row in rows if row[3] and len(spellings[sanitise(row[3]).lower()]) > 1]


def expected_output(rows) -> set[tuple[str, bool, str, str, str]]:
    """(agency, mobile, user, segment, timestamp) after the conflict rule, in plain Python."""
    best: dict[tuple[str, bool, str, str], int] = {}
    dropped = colliding_rows(rows)
    rows = [row for row in rows if row not in dropped]

    def rank(ts: int) -> tuple[int, int]:  # smaller wins: removal, then now, then latest
        return (0, 0) if ts == -1 else (1, 0) if ts == 0 else (2, -ts)

    for user, segment, ts, client, device in rows:
        agency = sanitise(client)
        mobile = device.lower() in MOBILE_TYPES
        key = (agency, mobile, user.lower() if mobile else user, segment)
        t = int(ts or "0")
        if key not in best or rank(t) < rank(best[key]):
            best[key] = t
    return {(*key, str(t)) for key, t in best.items()}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    rows=export_rows(),
    # Filler users make files big enough to be split under a small limit.
    filler=st.integers(0, 400),
    max_file_bytes=st.sampled_from([4096, 6000, 4 * 10**9]),
)
def test_roundtrip_output_equals_the_conflict_rule_and_files_are_valid(
    rows, filler, max_file_bytes
):
    rows = rows + [
        (f"filler-{i:05d}-{i * 7919 % 10007}", str(i * 31 % 1000), "0", "", "")
        for i in range(filler)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        batch = write_batch(root, {"part.csv": csv_bytes(rows)})
        result = run_build(batch, root / "work", make_settings(max_file_bytes=max_file_bytes))
        assert result.read.rows_quarantined == len(colliding_rows(rows))
        got: set[tuple[str, bool, str, str, str]] = set()
        users_per_family: dict[tuple[str, bool], set[str]] = {}
        paths = s2s_files_in(result.outbox)
        assert {p.name for p in paths} == {f.name for f in result.built}
        for path in paths:
            report = validate_file(path, max_file_bytes=max_file_bytes)
            assert report.ok, (path.name, report.violations[:5])
            assert path.stat().st_size <= max_file_bytes
            parsed = parse_s2s(path)
            family = (parsed.agency, parsed.mobile)
            seen = users_per_family.setdefault(family, set())
            assert not (seen & parsed.users()), "a user appears in two files of one family"
            seen |= parsed.users()
            for user, segment, ts in parsed.loads():
                got.add((parsed.agency, parsed.mobile, user, segment, ts))
        assert got == expected_output(rows)
