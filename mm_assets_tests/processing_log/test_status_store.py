"""The processing-log status store (S2S-LOG) on SQLite and on a real PostgreSQL server.

"A final verdict is never overwritten": proven sequentially, against a writer that read the row
before another writer's verdict was committed, and with many writers at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from mm_assets.processing_log.status_store import (
    FileState,
    FileStatus,
    StatusStore,
    status_table,
)

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NAME = "ExamplePartner_20261120120000.log.gz"
BATCH = "batch_20261120"
JOIN_SECONDS = 120  # far above what a blocked writer needs once the lock is released


@pytest.fixture
def store(database_url: str) -> Iterator[StatusStore]:
    with StatusStore(database_url) as opened:
        yield opened


def register_delivered(store: StatusStore, name: str = NAME) -> FileStatus:
    return store.register(
        name, BATCH, "2026-11-20T12:00:00", "sftp", 100, T0, T0 + timedelta(hours=6)
    )


def polled(status: FileStatus, state: FileState, message: str = "") -> FileStatus:
    return replace(
        status,
        status=state,
        message=message,
        polls=status.polls + 1,
        last_checked_at=T0 + timedelta(minutes=1),
        next_check_at=T0 + timedelta(minutes=2),
    )


def test_register_is_idempotent_and_a_receipt_makes_a_built_file_pending(
    store: StatusStore,
) -> None:
    built = store.register(NAME, BATCH, "2026-11-20T12:00:00", "sftp", 100, None, None)
    assert built.status is FileState.NOT_DELIVERED
    assert store.register(NAME, BATCH, "2026-11-20T12:00:00", "sftp", 100, None, None) == built
    deadline = T0 + timedelta(hours=6)
    delivered = store.register(NAME, BATCH, "2026-11-20T12:00:00", "cft", 120, T0, deadline)
    assert (delivered.status, delivered.uploaded_at, delivered.deadline_at) == (
        FileState.PENDING,
        T0,
        deadline,
    )
    assert (delivered.transport, delivered.bytes, delivered.next_check_at) == ("cft", 120, T0)
    # A known delivered file keeps its deadline when registered again later.
    again = store.register(
        NAME, BATCH, "2026-11-20T12:00:00", "cft", 120, T0, deadline + timedelta(hours=1)
    )
    assert again.deadline_at == deadline
    assert store.get(NAME) == delivered


def test_a_final_verdict_is_never_overwritten_by_a_weaker_one(store: StatusStore) -> None:
    pending = register_delivered(store)
    store.save(polled(pending, FileState.ACCEPTED, "OK"))
    store.save(polled(pending, FileState.PENDING))  # a slower poller that read the row earlier
    kept = store.get(NAME)
    assert kept is not None and (kept.status, kept.message) == (FileState.ACCEPTED, "OK")
    assert store.due(T0 + timedelta(days=1)) == []
    # A final verdict may still replace another (MediaMath's latest word decides).
    store.save(polled(pending, FileState.REJECTED, "Invalid headers"))
    assert store.batch(BATCH)[0].status is FileState.REJECTED


def test_saving_an_unknown_file_inserts_it(store: StatusStore) -> None:
    pending = register_delivered(store, "Other_20261120120000.log.gz")
    fresh = replace(pending, file_name=NAME, raw_records=[{"status": "OK"}])
    store.save(polled(fresh, FileState.ACCEPTED, "OK"))
    saved = store.get(NAME)
    assert saved is not None and saved.raw_records == [{"status": "OK"}]
    assert store.batches_with([FileState.ACCEPTED]) == [BATCH]


def _wait_until_blocked(store: StatusStore, writers: list[threading.Thread], count: int) -> None:
    """Return once `count` writers wait for the holder's lock (or, on SQLite, which cannot
    show its waiters, once they have had ample time to reach it)."""
    if store.url.get_backend_name() == "sqlite":
        time.sleep(1.0)  # only lets the race happen; no outcome depends on this margin
        return
    deadline = time.monotonic() + JOIN_SECONDS
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    with store.engine.connect() as conn:
        while conn.execute(waiting).scalar_one() < count:
            assert time.monotonic() < deadline, "writers never reached the row lock"
            assert all(w.is_alive() for w in writers), "a writer finished without waiting"
            time.sleep(0.05)


def test_a_writer_waiting_on_a_verdict_being_committed_does_not_overwrite_it(
    database_url: str,
) -> None:
    """The race the old read-then-write had: a poller reads `pending`, another poller's
    `accepted` commits, then the first writes `pending` back. Here the verdict is held
    uncommitted while pending writers start; they must leave it in place once it commits."""
    with StatusStore(database_url) as setup:
        pending = register_delivered(setup)
    stores = [StatusStore(database_url) for _ in range(3)]
    holder = StatusStore(database_url)
    try:
        with holder.engine.connect() as conn:
            tx = conn.begin()
            conn.execute(
                status_table.update()
                .where(status_table.c.file_name == NAME)
                .values(status=str(FileState.ACCEPTED), message="OK")
            )
            errors: list[BaseException] = []

            def write_pending(s: StatusStore) -> None:
                try:
                    s.save(polled(pending, FileState.PENDING))
                except BaseException as exc:  # reported by the test, not lost in the thread
                    errors.append(exc)

            writers = [threading.Thread(target=write_pending, args=(s,)) for s in stores]
            for writer in writers:
                writer.start()
            _wait_until_blocked(holder, writers, len(writers))
            tx.commit()
        for writer in writers:
            writer.join(JOIN_SECONDS)
            assert not writer.is_alive()
        assert errors == []
        kept = holder.get(NAME)
        assert kept is not None and (kept.status, kept.message) == (FileState.ACCEPTED, "OK")
    finally:
        for s in [*stores, holder]:
            s.close()


def test_many_concurrent_pollers_end_with_the_verdict(database_url: str) -> None:
    """Eight writers save `pending` rounds while one saves the verdict in the middle."""
    names = [f"ExamplePartner_2026112012{i:04d}.log.gz" for i in range(5)]
    with StatusStore(database_url) as setup:
        pending = {name: register_delivered(setup, name) for name in names}

    def poller(n: int, go: threading.Barrier) -> None:
        with StatusStore(database_url) as s:
            go.wait(JOIN_SECONDS)
            for round_ in range(6):
                for name in names:
                    state = FileState.ACCEPTED if n == 0 and round_ == 2 else None
                    s.save(polled(pending[name], state or FileState.PENDING, "OK" * bool(state)))

    _all_at_once(poller, 9)
    with StatusStore(database_url) as s:
        assert {r.file_name: r.status for r in s.batch(BATCH)} == dict.fromkeys(
            names, FileState.ACCEPTED
        )


@pytest.mark.parametrize("opens", ["status store", "retry book"])
def test_stores_opened_at_once_on_a_fresh_ledger_all_open(database_url: str, opens: str) -> None:
    """The check and the batch report of one delivery run open the status store at the same
    moment, in two processes, on a ledger that has no status table yet. Creating the table in
    a deferred transaction made one of them fail with "database is locked" (CI, once): SQLite
    refuses outright to upgrade a reader that another writer overtook. Eight openers at once,
    each on its own connection, all open and find one table."""
    from mm_assets.delivery.ledger import Ledger
    from mm_assets.delivery.retries import RetryBook

    Ledger(database_url).close()  # the ledger's own tables, as after the delivery step

    def opener(_n: int, go: threading.Barrier) -> None:
        go.wait(JOIN_SECONDS)
        if opens == "status store":
            with StatusStore(database_url) as s:
                assert s.batch(BATCH) == []
        else:
            with Ledger(database_url) as ledger:
                RetryBook(ledger).cleared(NAME)

    _all_at_once(opener, 8)


def _all_at_once(work: Callable[[int, threading.Barrier], None], count: int) -> None:
    """Run `work(n, barrier)` on `count` threads that meet at the barrier; every one ends,
    and none raised."""
    go = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n, go)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
        assert not thread.is_alive()
    assert errors == []
