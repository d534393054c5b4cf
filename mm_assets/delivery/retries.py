"""Retrying files whose upload failed for a transient reason (connection reset, timeout, 5xx).

The clients retry within one upload; this is the slower loop across runs: a file that still
failed gets a `next_attempt_at` (doubling from `first_delay` up to `max_delay`), which the
delivery report turns into `next_send_after` and the `deferred_deliveries` sensor into the next
run. After `max_attempts` failed runs the file needs a person. Authentication and host-key
failures are never retried (every attempt would fail the same way).

The failure counts live beside the ledger's receipts, in the same database, in their own
table (so the ledger's schema is untouched). No Dagster import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from mm_assets.clients.retry import Backoff
from mm_assets.core.quota import as_utc
from mm_assets.delivery.ledger import Ledger, UtcDateTime
from mm_assets.state.database import create_tables, write

metadata = sa.MetaData()

retries_table = sa.Table(
    "delivery_retries",
    metadata,
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("batch", sa.String(255), nullable=False, index=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_error", sa.String(1024), nullable=False),
    sa.Column("last_failed_at", UtcDateTime, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=True),  # None: given up
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # failed runs before a person is needed
    first_delay: timedelta = timedelta(minutes=1)
    max_delay: timedelta = timedelta(hours=1)

    def delay(self, failures: int) -> timedelta:
        """Wait before the next try after `failures` failed runs (1, 2, ...)."""
        # The clients' one backoff formula; no jitter: runs are already spread by the schedule.
        backoff = Backoff(
            self.first_delay.total_seconds(), self.max_delay.total_seconds(), jitter=False
        )
        return timedelta(seconds=backoff.delay(max(failures, 1)))


@dataclass(frozen=True)
class RetryState:
    failures: int
    next_attempt_at: datetime | None  # None: max_attempts reached, not retried


class RetryBook:
    """Failed-upload counts per file, in the ledger's database."""

    def __init__(self, ledger: Ledger) -> None:
        self.engine = ledger.engine
        create_tables(self.engine, metadata)

    def failed(
        self, file_name: str, batch: str, error: str, now: datetime, policy: RetryPolicy
    ) -> RetryState:
        """Count one more failed run for the file and say when it may be tried again."""
        now = as_utc(now)
        table = retries_table
        # A write transaction from the start: a read that upgrades to a write later is
        # refused outright by SQLite ("database is locked") when another writer got between.
        with write(self.engine) as conn:
            row = conn.execute(
                sa.select(table.c.failures).where(table.c.file_name == file_name)
            ).first()
            failures = (row[0] if row else 0) + 1
            next_at = now + policy.delay(failures) if failures < policy.max_attempts else None
            values = {
                "batch": batch,
                "failures": failures,
                "last_error": error[:1024],
                "last_failed_at": now,
                "next_attempt_at": next_at,
            }
            if row:
                conn.execute(table.update().where(table.c.file_name == file_name).values(values))
            else:
                conn.execute(table.insert().values(file_name=file_name, **values))
        return RetryState(failures, next_at)

    def cleared(self, file_name: str) -> None:
        """The file was delivered: forget its failures."""
        with write(self.engine) as conn:
            conn.execute(retries_table.delete().where(retries_table.c.file_name == file_name))
