"""The time of day, in one place: every module that needs "now" takes a clock (a callable)
and defaults to `utc_now`, so tests inject theirs."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (S2S-QUOTA's windows are UTC hours and days)."""
    return datetime.now(UTC)
