"""The one retry policy of the MediaMath clients (`clients/retry.py`): pure, no network."""

from __future__ import annotations

import random

import pytest

from mm_assets.clients.retry import Backoff, RetriesExhausted, retry


class Flaky(Exception):
    pass


def test_backoff_doubles_is_capped_and_jittered_between_half_and_all() -> None:
    rng = random.Random(7)
    backoff = Backoff(1.0, max_seconds=5.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)]:
        for _ in range(50):
            assert full / 2 <= backoff.delay(attempt, rng) <= full


def test_retry_returns_after_transient_failures_and_sleeps_between_them() -> None:
    slept: list[float] = []
    seen: list[int] = []

    def operation(attempt: int) -> str:
        seen.append(attempt)
        if attempt < 3:
            raise Flaky
        return "done"

    result = retry(
        operation,
        attempts=5,
        backoff=Backoff(1.0),
        retryable=lambda exc: isinstance(exc, Flaky),
        sleep=slept.append,
    )
    assert result == "done" and seen == [1, 2, 3] and len(slept) == 2


def test_retry_raises_a_permanent_error_at_once_and_exhausts_on_transient_ones() -> None:
    def refused(_: int) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        retry(
            refused,
            attempts=5,
            backoff=Backoff(0.0),
            retryable=lambda exc: isinstance(exc, Flaky),
        )

    def always(_: int) -> None:
        raise Flaky("again")

    with pytest.raises(RetriesExhausted) as caught:
        retry(
            always, attempts=3, backoff=Backoff(0.0), retryable=lambda e: True, sleep=lambda _: None
        )
    assert caught.value.attempts == 3 and isinstance(caught.value.last, Flaky)


def test_before_retry_sets_the_wait_or_stops() -> None:
    slept: list[float] = []

    def stop_on_second(attempt: int, exc: Exception, delay: float) -> float:
        if attempt == 2:
            raise RuntimeError("budget")
        return 42.0

    def always(_: int) -> None:
        raise Flaky

    with pytest.raises(RuntimeError, match="budget"):
        retry(
            always,
            attempts=5,
            backoff=Backoff(1.0),
            retryable=lambda e: True,
            before_retry=stop_on_second,
            sleep=slept.append,
        )
    assert slept == [42.0]
