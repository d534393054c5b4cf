"""Named locks in the shared database: a lease row with its owner and expiry.

A lease works the same on PostgreSQL and on SQLite, across processes and machines. Its
holder renews it from a background thread while it holds it; a holder that dies (`kill -9`,
a lost machine) stops renewing, and the lease expires `ttl_s` seconds after its last renewal,
when another worker may take it. Expiry is judged by each worker's clock, so the lease time
must be well above the clock skew between workers (NTP keeps it under a second; the default
is a minute).

Acquiring reads and writes one row in one transaction: `SELECT ... FOR UPDATE` of the row on
PostgreSQL (BEGIN IMMEDIATE on SQLite), and when the row does not exist yet, the primary key
lets only one of two simultaneous inserts succeed.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mm_assets.state import database

# How long a dead holder's lock keeps others out; a live holder renews every third of it.
DEFAULT_LEASE_SECONDS = 60.0
LEASE_SECONDS_ENV = "MM_STATE_LEASE_SECONDS"

metadata = sa.MetaData()

leases_table = sa.Table(
    "state_leases",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # Unix seconds, the holder's clock
)

# When something last happened (e.g. the last key rotation, MCM-DKR), Unix seconds.
times_table = sa.Table(
    "state_times",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
)


def lease_seconds() -> float:
    """The lease time of every lock: `MM_STATE_LEASE_SECONDS`, else one minute."""
    return float(os.environ.get(LEASE_SECONDS_ENV) or DEFAULT_LEASE_SECONDS)


def new_owner() -> str:
    """A holder label: `host:pid:token` (readable in messages, unique per acquisition)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """One named lock in the database at `url`; `try_acquire()` / `release()`, or `held()`."""

    def __init__(
        self,
        url: str | Path,
        name: str,
        *,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = database.engine_for(url, metadata)
        self.name = name
        self.ttl_s = lease_seconds() if ttl_s is None else ttl_s
        self.clock = clock
        self.owner = new_owner()
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def _row(self, conn: sa.Connection) -> sa.Row | None:
        c = leases_table.c
        query = sa.select(c.owner, c.expires_at).where(c.name == self.name)
        return conn.execute(query.with_for_update()).first()

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired; False when a live holder has it."""
        now = self.clock()
        c = leases_table.c
        try:
            with database.write(self.engine) as conn:
                row = self._row(conn)
                if row is None:
                    conn.execute(
                        leases_table.insert().values(
                            name=self.name, owner=self.owner, expires_at=now + self.ttl_s
                        )
                    )
                    return True
                if row.owner != self.owner and row.expires_at > now:
                    return False
                conn.execute(
                    leases_table.update()
                    .where(c.name == self.name)
                    .values(owner=self.owner, expires_at=now + self.ttl_s)
                )
                return True
        except IntegrityError:
            return False  # another worker inserted the row first: it holds the lease

    def holder(self) -> str | None:
        """The live holder's label, or None when the lease is free or expired."""
        c = leases_table.c
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(c.owner, c.expires_at).where(c.name == self.name)).first()
        return row.owner if row is not None and row.expires_at > self.clock() else None

    def renew(self) -> bool:
        """Push the expiry on; False when the lease is no longer ours (it expired and was
        taken)."""
        c = leases_table.c
        with database.write(self.engine) as conn:
            done = conn.execute(
                leases_table.update()
                .where(c.name == self.name, c.owner == self.owner)
                .values(expires_at=self.clock() + self.ttl_s)
            )
        return bool(done.rowcount)

    def release(self) -> None:
        self._stop_renewing()
        c = leases_table.c
        with database.write(self.engine) as conn:
            conn.execute(leases_table.delete().where(c.name == self.name, c.owner == self.owner))

    def start_renewing(self) -> None:
        """Renew from a daemon thread every third of the lease time until `release()`."""
        self._stop.clear()

        def renew_until_stopped() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if not self.renew():
                        return
                except sa.exc.SQLAlchemyError:
                    continue  # the database is unreachable for now: try again next time

        self._renewer = threading.Thread(
            target=renew_until_stopped, name=f"lease {self.name}", daemon=True
        )
        self._renewer.start()

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None

    @contextmanager
    def held(
        self,
        wait_timeout_s: float,
        *,
        on_timeout: Callable[[str | None], Exception],
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 0.2,
    ) -> Iterator[None]:
        """Hold the lease (renewed) for the block, waiting up to `wait_timeout_s` for it;
        `on_timeout(holder)` is the error raised when it stays taken that long."""
        deadline = time.monotonic() + wait_timeout_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise on_timeout(self.holder())
            sleep(poll_s)
        self.start_renewing()
        try:
            yield
        finally:
            self.release()


def last_time(url: str | Path, name: str) -> float:
    """When `name` last happened (Unix seconds), 0.0 if never."""
    engine = database.engine_for(url, metadata)
    with engine.connect() as conn:
        at = conn.execute(sa.select(times_table.c.at).where(times_table.c.name == name)).scalar()
    return float(at or 0.0)


def record_time(url: str | Path, name: str, at: float) -> None:
    """Record that `name` happened at `at` (Unix seconds)."""
    engine = database.engine_for(url, metadata)
    c = times_table.c
    with database.write(engine) as conn:
        done = conn.execute(times_table.update().where(c.name == name).values(at=at))
        if not done.rowcount:
            conn.execute(times_table.insert().values(name=name, at=at))
