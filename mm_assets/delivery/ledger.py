"""The delivery ledger: receipts, in-flight records and quota use (S2S-QUOTA).

It must survive restarts and be shared by concurrent runs (several Dagster steps, several
machines), so it lives in a database: a SQLite file by default, any SQLAlchemy URL
(Postgres in production). Only SQLAlchemy Core constructs are used, so the SQL is portable.

Quota accounting, deliberately conservative (over-counting only delays a file, under-counting
could get the integration suspended):

- a receipt counts in the hour and the day holding its `uploaded_at`;
- an in-flight row counts in the *current* hour and day whatever its age, because as far as
  the ledger knows the file may land at any moment. A row left by a crashed run therefore
  holds one slot until the next delivery of its batch reconciles it.

`reserve` checks the quota and inserts the in-flight row in one transaction that excludes
every other writer: `BEGIN IMMEDIATE` on SQLite (the write lock is taken before the counts
are read), `SELECT ... FOR UPDATE` of a single-row lock table elsewhere. Two processes can
therefore never both take the last slot.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from mm_assets.clients.transport import OutgoingFile, UploadResult
from mm_assets.core.quota import (
    Decision,
    QuotaLimits,
    QuotaUsage,
    as_utc,
    day_window,
    decide,
    hour_window,
)
from mm_assets.core.quota import usage as quota_usage
from mm_assets.state.database import Database

DEFAULT_LEDGER_URL = "sqlite:///ledger.sqlite"


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes stored as naive UTC.

    SQLite has no time zone type; storing naive UTC everywhere keeps comparisons correct and
    identical on every backend.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


metadata = sa.MetaData()

receipts_table = sa.Table(
    "receipts",
    metadata,
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("batch", sa.String(255), nullable=False, index=True),
    sa.Column("transport", sa.String(32), nullable=False),
    sa.Column("remote_path", sa.String(1024), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("uploaded_at", UtcDateTime, nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False),
)

in_flight_table = sa.Table(
    "in_flight",
    metadata,
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("batch", sa.String(255), nullable=False, index=True),
    sa.Column("transport", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("run_id", sa.String(255), nullable=False),
)

# Which process holds an in-flight row (`host:pid`), so a later run can tell a killed upload
# from a live one at once instead of waiting out `stale_in_flight_after`. Its own table, so a
# ledger created before it only gains a table.
in_flight_owner_table = sa.Table(
    "in_flight_owners",
    metadata,
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
)

# Uploads the ledger had no record of but MediaMath has (its processing log, the bucket, the
# drop): they count against the quota like receipts (S2S-QUOTA), e.g. after the ledger file
# was lost. `bytes` is 0 when the witness does not say.
observed_uploads_table = sa.Table(
    "observed_uploads",
    metadata,
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("landed_at", UtcDateTime, nullable=False, index=True),
    sa.Column("source", sa.String(64), nullable=False),
)

# One row; writers lock it with SELECT ... FOR UPDATE on backends that support row locks.
lock_table = sa.Table(
    "ledger_lock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
)


@dataclass(frozen=True)
class Receipt:
    file_name: str
    batch: str
    transport: str
    remote_path: str
    bytes: int
    md5: str
    uploaded_at: datetime
    attempts: int


@dataclass(frozen=True)
class InFlight:
    file_name: str
    batch: str
    transport: str
    bytes: int
    md5: str
    started_at: datetime
    run_id: str


def this_process() -> str:
    """The owner label of in-flight rows made by this process: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str) -> bool:
    """True when `owner` (`host:pid`) is a process of this machine that no longer runs.

    Only this machine's processes can be checked; another host's owner is never called dead.
    """
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class AlreadyTracked(Exception):
    """`reserve` found a receipt or an in-flight row for the file: it must not be sent now."""

    def __init__(self, file_name: str, state: str) -> None:
        what = "a receipt" if state == "receipt" else "an in-flight record"
        super().__init__(f"{file_name} already has {what}")
        self.file_name = file_name
        self.state = state  # "receipt" or "in_flight"


class Ledger(Database):
    """Delivery state shared by every run that delivers to MediaMath."""

    def __init__(self, url: str | Path = DEFAULT_LEDGER_URL, *, echo: bool = False) -> None:
        """Open (and create if needed) the ledger at a SQLAlchemy URL or a SQLite file path."""
        super().__init__(url, echo=echo)
        self._sqlite = self.is_sqlite
        self._lock_row_ready = False
        self._create_schema()

    # -- setup -----------------------------------------------------------------------------

    def _create_schema(self) -> None:
        for attempt in range(2):
            try:
                with self._write() as conn:
                    metadata.create_all(conn)
                    if conn.execute(sa.select(lock_table.c.id)).first() is None:
                        conn.execute(lock_table.insert().values(id=1))
                self._lock_row_ready = True
                return
            except (IntegrityError, ProgrammingError, OperationalError):
                # Another process created the schema at the same moment; its tables are
                # there now, so one more pass only checks them.
                if attempt:
                    raise

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that excludes every other writer until it ends."""
        conn = self.engine.connect().execution_options(state_write=True)
        with conn, conn.begin():
            if not self._sqlite and self._lock_row_ready:
                conn.execute(
                    sa.select(lock_table.c.id).where(lock_table.c.id == 1).with_for_update()
                )
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- quota -----------------------------------------------------------------------------

    @staticmethod
    def _used(conn: Connection, now: datetime) -> tuple[int, int, int]:
        """(files this hour, bytes today, in-flight files) as counted for the quota."""
        hour_start, _ = hour_window(now)
        day_start, _ = day_window(now)
        r, f = receipts_table.c, in_flight_table.c
        files_hour = conn.execute(
            sa.select(sa.func.count()).where(r.uploaded_at >= hour_start)
        ).scalar_one()
        bytes_day = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(r.bytes), 0)).where(r.uploaded_at >= day_start)
        ).scalar_one()
        flying, flying_bytes = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(f.bytes), 0))
        ).one()
        o = observed_uploads_table.c
        unreceipted = ~sa.exists().where(r.file_name == o.file_name)
        seen_hour = conn.execute(
            sa.select(sa.func.count()).where(o.landed_at >= hour_start, unreceipted)
        ).scalar_one()
        seen_bytes = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(o.bytes), 0)).where(
                o.landed_at >= day_start, unreceipted
            )
        ).scalar_one()
        files = int(files_hour) + int(flying) + int(seen_hour)
        return files, int(bytes_day) + int(flying_bytes) + int(seen_bytes), int(flying)

    def usage(self, now: datetime, limits: QuotaLimits) -> QuotaUsage:
        """Used and left quota in the windows holding `now` (in-flight files included)."""
        with self._read() as conn:
            files, nbytes, flying = self._used(conn, now)
        return quota_usage(now, files, nbytes, limits, in_flight_files=flying)

    def reserve(
        self,
        file: OutgoingFile,
        batch: str,
        transport: str,
        now: datetime,
        limits: QuotaLimits,
        run_id: str = "",
        owner: str | None = None,
    ) -> Decision:
        """Decide on `file` and, when it may be sent, record it as in flight, atomically.

        Raises AlreadyTracked when the file has a receipt or is in flight already (another
        run may have reserved it since the caller looked).
        """
        with self._write() as conn:
            if self._receipt(conn, file.name) is not None:
                raise AlreadyTracked(file.name, "receipt")
            if self._in_flight(conn, file.name) is not None:
                raise AlreadyTracked(file.name, "in_flight")
            files, nbytes, _ = self._used(conn, now)
            decision = decide(file.size, now, files, nbytes, limits)
            if decision.send:
                conn.execute(
                    in_flight_table.insert().values(
                        file_name=file.name,
                        batch=batch,
                        transport=transport,
                        bytes=file.size,
                        md5=file.md5_hex,
                        started_at=now,
                        run_id=run_id,
                    )
                )
                conn.execute(
                    in_flight_owner_table.insert().values(
                        file_name=file.name, owner=owner or this_process()
                    )
                )
        return decision

    # -- state changes ---------------------------------------------------------------------

    def complete(self, file_name: str, result: UploadResult, now: datetime) -> Receipt:
        """Turn the in-flight row of `file_name` into its receipt.

        Idempotent: when the receipt exists already (another run reconciled the file while
        this one was uploading it) that receipt is returned. Raises LookupError when the file
        has neither.
        """
        with self._write() as conn:
            existing = self._receipt(conn, file_name)
            if existing is not None:
                self._forget_flight(conn, file_name)
                return existing
            flight = self._in_flight(conn, file_name)
            if flight is None:
                raise LookupError(f"{file_name} is not in flight; nothing to complete")
            receipt = Receipt(
                file_name=file_name,
                batch=flight.batch,
                transport=flight.transport,
                remote_path=result.remote_path,
                bytes=result.size,
                md5=flight.md5,
                uploaded_at=as_utc(now),
                attempts=result.attempts,
            )
            conn.execute(receipts_table.insert().values(**receipt.__dict__))
            self._forget_flight(conn, file_name)
        return receipt

    @staticmethod
    def _forget_flight(conn: Connection, file_name: str) -> int:
        conn.execute(
            in_flight_owner_table.delete().where(in_flight_owner_table.c.file_name == file_name)
        )
        deleted = conn.execute(
            in_flight_table.delete().where(in_flight_table.c.file_name == file_name)
        )
        return int(deleted.rowcount or 0)

    def record_found(
        self,
        file: OutgoingFile,
        batch: str,
        transport: str,
        remote_path: str,
        landed_at: datetime,
    ) -> Receipt:
        """A receipt for a file MediaMath is known to have (found by reconciliation), with or
        without an in-flight row; counted in the quota windows of `landed_at`. Idempotent."""
        with self._write() as conn:
            existing = self._receipt(conn, file.name)
            if existing is not None:
                self._forget_flight(conn, file.name)
                return existing
            receipt = Receipt(
                file_name=file.name,
                batch=batch,
                transport=transport,
                remote_path=remote_path,
                bytes=file.size,
                md5=file.md5_hex,
                uploaded_at=as_utc(landed_at),
                attempts=0,  # not sent by us this time: found
            )
            conn.execute(receipts_table.insert().values(**receipt.__dict__))
            self._forget_flight(conn, file.name)
        return receipt

    def observe(self, file_name: str, nbytes: int, landed_at: datetime, source: str) -> bool:
        """Count an upload MediaMath reports but the ledger never recorded (S2S-QUOTA).
        True when it was new."""
        with self._write() as conn:
            o = observed_uploads_table.c
            if conn.execute(sa.select(o.file_name).where(o.file_name == file_name)).first():
                return False
            conn.execute(
                observed_uploads_table.insert().values(
                    file_name=file_name, bytes=nbytes, landed_at=landed_at, source=source
                )
            )
        return True

    def owner(self, file_name: str) -> str | None:
        """`host:pid` of the process that reserved `file_name`, when recorded."""
        with self._read() as conn:
            c = in_flight_owner_table.c
            return conn.execute(sa.select(c.owner).where(c.file_name == file_name)).scalar()

    def abandon(self, file_name: str) -> bool:
        """Drop the in-flight row of a file that certainly did not land. True if one existed."""
        with self._write() as conn:
            deleted = self._forget_flight(conn, file_name)
        return bool(deleted)

    # -- reads -----------------------------------------------------------------------------

    @staticmethod
    def _receipt(conn: Connection, file_name: str) -> Receipt | None:
        row = (
            conn.execute(sa.select(receipts_table).where(receipts_table.c.file_name == file_name))
            .mappings()
            .first()
        )
        return Receipt(**row) if row is not None else None

    @staticmethod
    def _in_flight(conn: Connection, file_name: str) -> InFlight | None:
        row = (
            conn.execute(sa.select(in_flight_table).where(in_flight_table.c.file_name == file_name))
            .mappings()
            .first()
        )
        return InFlight(**row) if row is not None else None

    def receipt(self, file_name: str) -> Receipt | None:
        with self._read() as conn:
            return self._receipt(conn, file_name)

    def in_flight_record(self, file_name: str) -> InFlight | None:
        with self._read() as conn:
            return self._in_flight(conn, file_name)

    def receipts(self, batch: str) -> list[Receipt]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(receipts_table)
                .where(receipts_table.c.batch == batch)
                .order_by(receipts_table.c.uploaded_at, receipts_table.c.file_name)
            ).mappings()
            return [Receipt(**row) for row in rows]

    def in_flight(self, batch: str | None = None) -> list[InFlight]:
        """In-flight rows of `batch` (of every batch when None), oldest first."""
        query = sa.select(in_flight_table)
        if batch is not None:
            query = query.where(in_flight_table.c.batch == batch)
        with self._read() as conn:
            rows = conn.execute(
                query.order_by(in_flight_table.c.started_at, in_flight_table.c.file_name)
            ).mappings()
            return [InFlight(**row) for row in rows]
