from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm_assets.core.quota import (
    GB,
    Action,
    QuotaLimits,
    day_window,
    decide,
    hour_window,
    usage,
)

LIMITS = QuotaLimits()


def at(hour: int, minute: int = 0, second: int = 0, day: int = 15) -> datetime:
    return datetime(2025, 3, day, hour, minute, second, tzinfo=UTC)


def test_defaults_are_the_decimal_reading_of_the_vendor_limits() -> None:
    assert LIMITS.files_per_hour == 20
    assert LIMITS.bytes_per_day == 5 * 10**9
    assert LIMITS.max_file_bytes == 4 * 10**9
    assert GB == 10**9


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="files_per_hour"):
        QuotaLimits(files_per_hour=0)


def test_windows_are_utc_clock_hour_and_utc_day() -> None:
    # 01:30 at UTC+2 is 23:30 UTC the day before.
    local = datetime(2025, 3, 16, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert hour_window(local) == (at(23), at(0, day=16))
    assert day_window(local) == (at(0), at(0, day=16))
    assert hour_window(at(10, 0, 0)) == (at(10), at(11))
    assert hour_window(at(10, 59, 59)) == (at(10), at(11))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        decide(1, datetime(2025, 3, 15, 10), 0, 0, LIMITS)


def test_send_when_it_fits() -> None:
    decision = decide(100, at(10, 5), 19, 5 * GB - 100, LIMITS)
    assert decision.action is Action.SEND and decision.send
    assert decision.not_before is None


def test_hour_full_defers_to_the_next_hour() -> None:
    decision = decide(100, at(10, 59, 59), 20, 0, LIMITS)
    assert decision.defer
    assert decision.not_before == at(11)
    assert "hourly" in decision.reason and "S2S-QUOTA" in decision.reason


def test_hour_full_at_23_defers_to_midnight() -> None:
    decision = decide(100, at(23, 30), 20, 0, LIMITS)
    assert decision.not_before == at(0, day=16)


def test_day_full_defers_to_midnight_even_when_the_hour_is_full_too() -> None:
    decision = decide(2 * GB, at(10, 30), 20, 4 * GB, LIMITS)
    assert decision.defer
    assert decision.not_before == at(0, day=16)
    assert "daily" in decision.reason


def test_exactly_the_daily_limit_still_fits() -> None:
    assert decide(GB, at(10), 0, 4 * GB, LIMITS).send
    assert decide(GB + 1, at(10), 0, 4 * GB, LIMITS).defer


def test_refuse_above_the_per_file_limit() -> None:
    assert decide(4 * GB, at(10), 0, 0, LIMITS).send
    decision = decide(4 * GB + 1, at(10), 0, 0, LIMITS)
    assert decision.refuse and decision.not_before is None
    assert "per-file" in decision.reason and "S2S-QUOTA" in decision.reason


def test_refuse_above_the_daily_limit_when_that_is_lower() -> None:
    limits = QuotaLimits(bytes_per_day=1000, max_file_bytes=5000)
    decision = decide(1001, at(10), 0, 0, limits)
    assert decision.refuse and "daily limit" in decision.reason


def test_refuse_wins_over_defer() -> None:
    assert decide(5 * GB, at(10), 20, 5 * GB, LIMITS).refuse


def test_usage_shows_what_is_left_and_when_it_resets() -> None:
    shown = usage(at(10, 30), 7, 2 * GB, LIMITS, in_flight_files=2)
    assert shown.files_left_this_hour == 13
    assert shown.bytes_left_today == 3 * GB
    assert (shown.hour_start, shown.hour_end) == (at(10), at(11))
    assert (shown.day_start, shown.day_end) == (at(0), at(0, day=16))
    row = shown.as_dict()
    assert row["files_left_this_hour"] == 13 and row["in_flight_files"] == 2
    assert row["hour_resets_at"] == "2025-03-15T11:00:00+00:00"
    # Over-use (e.g. uploads made outside this ledger) never shows negative room.
    assert usage(at(10), 25, 6 * GB, LIMITS).files_left_this_hour == 0
    assert usage(at(10), 25, 6 * GB, LIMITS).bytes_left_today == 0


# -- property: executing decisions never breaks the quotas ---------------------------------

SMALL = QuotaLimits(files_per_hour=3, bytes_per_day=1000, max_file_bytes=600)
START = datetime(2025, 3, 15, 22, 0, tzinfo=UTC)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 * 3600),  # seconds since the previous request
            st.integers(min_value=0, max_value=800),  # file size, sometimes above the limit
        ),
        min_size=1,
        max_size=60,
    )
)
def test_sent_files_never_exceed_the_hour_or_day_quota(requests: list[tuple[int, int]]) -> None:
    sent: list[tuple[datetime, int]] = []
    now = START
    for gap, size in requests:
        now += timedelta(seconds=gap)
        hour_start, _ = hour_window(now)
        day_start, _ = day_window(now)
        files_hour = sum(1 for t, _ in sent if t >= hour_start)
        bytes_day = sum(s for t, s in sent if t >= day_start)
        decision = decide(size, now, files_hour, bytes_day, SMALL)
        if decision.send:
            sent.append((now, size))
        elif decision.defer:
            assert decision.not_before is not None and decision.not_before > now
            # At not_before the window that blocked has reset: nothing used yet, it fits.
            later = decide(size, decision.not_before, 0, 0, SMALL)
            assert later.send
            # And not a moment earlier would the blocking window have reset.
            before = decision.not_before - timedelta(microseconds=1)
            assert hour_window(before)[1] == decision.not_before or (
                day_window(before)[1] == decision.not_before
            )
        else:
            assert size > SMALL.max_file_bytes or size > SMALL.bytes_per_day

    per_hour = Counter(hour_window(t)[0] for t, _ in sent)
    per_day: Counter[datetime] = Counter()
    for t, size in sent:
        per_day[day_window(t)[0]] += size
    assert all(count <= SMALL.files_per_hour for count in per_hour.values())
    assert all(total <= SMALL.bytes_per_day for total in per_day.values())
