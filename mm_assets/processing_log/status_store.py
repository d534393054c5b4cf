"""Per-file processing-log status (S2S-LOG), kept in a table beside the delivery ledger.

One row per delivered (or built, not yet delivered) file name: MediaMath's status and message,
the raw records, when it was last asked and when it may be asked next. It outlives the sensor's
process, so a restart neither forgets a verdict nor restarts a file's deadline. Rows are never
deleted: a rejected file rebuilt under a new name gets a new row and the old one stays, so both
attempts stay visible. `built_at` (from the outbox manifest) numbers the attempts of a batch.

SQLAlchemy Core only, in the ledger's database (SQLite file by default, any URL), in its own
table, so the ledger module is not touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from mm_assets.delivery.ledger import UtcDateTime
from mm_assets.state.database import Database, create_tables, write


class FileState(StrEnum):
    NOT_DELIVERED = "not_delivered"  # built, no receipt yet (deferred or failed delivery)
    PENDING = "pending"  # delivered, MediaMath has not answered
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"  # no answer before the deadline; no longer polled


FINAL_STATES = frozenset({FileState.ACCEPTED, FileState.REJECTED, FileState.TIMED_OUT})

_metadata = sa.MetaData()

status_table = sa.Table(
    "processing_log_status",
    _metadata,
    sa.Column("file_name", sa.String(255), primary_key=True),
    sa.Column("batch", sa.String(255), nullable=False, index=True),
    sa.Column("built_at", sa.String(64), nullable=False),
    sa.Column("transport", sa.String(32), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("uploaded_at", UtcDateTime, nullable=True),
    sa.Column("deadline_at", UtcDateTime, nullable=True),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("raw_records", sa.Text, nullable=False),  # JSON list, as MediaMath sent them
    sa.Column("polls", sa.Integer, nullable=False),
    sa.Column("last_checked_at", UtcDateTime, nullable=True),
    sa.Column("next_check_at", UtcDateTime, nullable=True),
    sa.Column("answered_at", UtcDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class FileStatus:
    file_name: str
    batch: str
    built_at: str
    transport: str
    bytes: int
    uploaded_at: datetime | None
    deadline_at: datetime | None
    status: FileState
    message: str
    raw_records: list[Any]
    polls: int
    last_checked_at: datetime | None
    next_check_at: datetime | None
    answered_at: datetime | None
    last_error: str

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES

    def waited(self, now: datetime) -> float | None:
        """Seconds from upload to MediaMath's answer (or to `now` while waiting)."""
        if self.uploaded_at is None:
            return None
        end = self.answered_at or now
        return max(0.0, (end - self.uploaded_at).total_seconds())

    def _row(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        row["status"] = str(self.status)
        row["raw_records"] = json.dumps(self.raw_records, default=str)
        return row

    @classmethod
    def _from_row(cls, row: Any) -> FileStatus:
        data = dict(row)
        data["status"] = FileState(data["status"])
        data["raw_records"] = json.loads(data["raw_records"] or "[]")
        return cls(**data)


class StatusStore(Database):
    """Read and write per-file processing-log status."""

    def __init__(self, url: str | Path) -> None:
        super().__init__(url)
        create_tables(self.engine, _metadata)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @staticmethod
    def _get(conn: Connection, file_name: str) -> FileStatus | None:
        row = (
            conn.execute(sa.select(status_table).where(status_table.c.file_name == file_name))
            .mappings()
            .first()
        )
        return FileStatus._from_row(row) if row is not None else None

    def get(self, file_name: str) -> FileStatus | None:
        with self._tx() as conn:
            return self._get(conn, file_name)

    def register(
        self,
        file_name: str,
        batch: str,
        built_at: str,
        transport: str,
        nbytes: int,
        uploaded_at: datetime | None,
        deadline_at: datetime | None,
    ) -> FileStatus:
        """Track a file of a batch; idempotent. A file registered before its delivery becomes
        pending once it has a receipt; a known delivered file keeps its status and deadline."""
        args = (file_name, batch, built_at, transport, nbytes, uploaded_at, deadline_at)
        try:
            return self._register(*args)
        except IntegrityError:
            # Another check registered it between our read and our insert: theirs stands.
            return self._register(*args)

    def _register(
        self,
        file_name: str,
        batch: str,
        built_at: str,
        transport: str,
        nbytes: int,
        uploaded_at: datetime | None,
        deadline_at: datetime | None,
    ) -> FileStatus:
        with write(self.engine) as conn:
            known = self._get(conn, file_name)
            if known is None:
                status = FileStatus(
                    file_name=file_name,
                    batch=batch,
                    built_at=built_at,
                    transport=transport,
                    bytes=nbytes,
                    uploaded_at=uploaded_at,
                    deadline_at=deadline_at,
                    status=FileState.PENDING if uploaded_at else FileState.NOT_DELIVERED,
                    message="",
                    raw_records=[],
                    polls=0,
                    last_checked_at=None,
                    next_check_at=uploaded_at,
                    answered_at=None,
                    last_error="",
                )
                conn.execute(status_table.insert().values(**status._row()))
                return status
            if known.status is FileState.NOT_DELIVERED and uploaded_at is not None:
                # Conditional, so a row another writer moved on since our read is left alone.
                c = status_table.c
                conn.execute(
                    status_table.update()
                    .where(c.file_name == file_name, c.status == str(FileState.NOT_DELIVERED))
                    .values(
                        status=str(FileState.PENDING),
                        uploaded_at=uploaded_at,
                        deadline_at=deadline_at,
                        transport=transport,
                        bytes=nbytes,
                        next_check_at=uploaded_at,
                    )
                )
                known = self._get(conn, file_name) or known
            return known

    def save(self, status: FileStatus) -> None:
        """Write a row back after a poll; a final verdict is never overwritten by a later,
        weaker one (two pollers racing cannot turn `accepted` back into `pending`).

        The rule is the UPDATE's own WHERE clause, so the database checks it against the row
        as it is when written, not as it was read: a writer that waited for another's commit
        re-checks the committed row (Postgres re-evaluates the condition; SQLite runs the
        statement under its write lock). No read-then-write window on any backend.
        """
        row = status._row()
        c = status_table.c
        update = status_table.update().where(c.file_name == status.file_name).values(**row)
        if not status.final:
            update = update.where(c.status.not_in([str(s) for s in FINAL_STATES]))
        try:
            with write(self.engine) as conn:
                if conn.execute(update).rowcount:
                    return
                if self._get(conn, status.file_name) is not None:
                    return  # a final verdict stands
                conn.execute(status_table.insert().values(**row))
        except IntegrityError:
            # Another writer inserted the row after our update found none: the conditional
            # update now decides against theirs.
            with write(self.engine) as conn:
                conn.execute(update)

    def batch(self, batch: str) -> list[FileStatus]:
        """Every row of the batch, oldest attempt first."""
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(status_table)
                .where(status_table.c.batch == batch)
                .order_by(
                    status_table.c.built_at, status_table.c.uploaded_at, status_table.c.file_name
                )
            ).mappings()
            return [FileStatus._from_row(r) for r in rows]

    def due(self, now: datetime, limit: int = 100) -> list[FileStatus]:
        """Pending files whose next poll is due, oldest first."""
        c = status_table.c
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(status_table)
                .where(c.status == str(FileState.PENDING))
                .where(sa.or_(c.next_check_at.is_(None), c.next_check_at <= now))
                .order_by(c.next_check_at, c.file_name)
                .limit(limit)
            ).mappings()
            return [FileStatus._from_row(r) for r in rows]

    def batches_with(self, states: Sequence[FileState]) -> list[str]:
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(status_table.c.batch)
                .distinct()
                .where(status_table.c.status.in_([str(s) for s in states]))
            )
            return sorted(r[0] for r in rows)
