"""The one retry policy of the MediaMath clients (SFTP, CFT, processing log).

Exponential backoff, `base * 2**(attempt - 1)` capped at `max_seconds`, jittered to between
half and all of it so parallel runs do not retry in lockstep; a bounded number of attempts.
Each client says which errors are worth another try and may adjust a wait (a server's
`Retry-After`, a refresh that needs no wait) or stop early (a time budget) in `before_retry`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")
_RNG = random.Random()


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    max_seconds: float = math.inf
    # False where a single caller retries alone (e.g. under a lock): nothing to spread out.
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt `attempt` (1-based)."""
        full = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return full * (0.5 + (rng or _RNG).random() / 2) if self.jitter else full


class RetriesExhausted(Exception):
    """Every attempt failed with a retryable error; `last` is the final one."""

    def __init__(self, last: Exception, attempts: int) -> None:
        super().__init__(f"{attempts} attempt(s) failed")
        self.last = last
        self.attempts = attempts


def retry(
    operation: Callable[[int], _T],
    *,
    attempts: int,
    backoff: Backoff,
    retryable: Callable[[Exception], bool],
    before_retry: Callable[[int, Exception, float], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> _T:
    """`operation(attempt)` until it returns, a non-retryable error (raised as is), or
    `attempts` tries (`RetriesExhausted`). `before_retry(attempt, error, delay)` returns the
    wait to use, or raises to stop."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return operation(attempt)
        except Exception as exc:
            if not retryable(exc):
                raise
            if attempt == attempts:
                raise RetriesExhausted(exc, attempt) from None
            delay = backoff.delay(attempt, rng)
            if before_retry is not None:
                delay = before_retry(attempt, exc, delay)
            if delay > 0:
                sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
