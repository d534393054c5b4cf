"""The shared-state database: which one is configured and how its transactions are opened.

The same database as the delivery ledger (one URL to configure, one to back up). SQLite by
default in the ledger's case; for the register and the locks, no URL means their local-file
implementations, so a laptop keeps working with no database at all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# The ledger's setting: the register and the locks live where the receipts and quota use do.
DATABASE_URL_ENV = "MM_DELIVERY_LEDGER_URL"
# Long enough to wait out another process's short write transaction.
SQLITE_BUSY_TIMEOUT_SECONDS = 60.0

_ENGINES: dict[tuple[int, str], Engine] = {}
_CREATED: set[tuple[int, str, int]] = set()  # (pid, url, id(metadata)) whose tables exist
_ENGINES_GUARD = threading.Lock()


def configured_url() -> str | None:
    """The shared database's URL when one is configured, else None (local files)."""
    return os.environ.get(DATABASE_URL_ENV) or None


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite database file at `path`."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def normalise_url(url: str | Path) -> str:
    """A SQLAlchemy URL; a bare path is a SQLite file."""
    if isinstance(url, Path) or "://" not in url:
        return sqlite_url(url)
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.url.get_backend_name() == "sqlite"


def open_engine(url: str | Path, *, echo: bool = False) -> Engine:
    """A new engine for `url` (a bare path is a SQLite file, its folder created).

    On SQLite, transactions are begun by us: pysqlite's own implicit BEGIN is deferred, so two
    processes could both read and then both write; `write()` begins with BEGIN IMMEDIATE.
    """
    parsed = sa.engine.make_url(normalise_url(url))
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        parsed,
        echo=echo,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS} if sqlite else {},
    )
    if sqlite:
        _take_over_sqlite_transactions(engine)
    return engine


def engine_for(url: str | Path, metadata: sa.MetaData) -> Engine:
    """One engine per database and process, its `metadata` tables created."""
    url = normalise_url(url)
    key = (os.getpid(), url)  # an engine's pool must not cross a fork
    with _ENGINES_GUARD:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = open_engine(url)
        created = (*key, id(metadata))
        if created not in _CREATED:
            create_tables(engine, metadata)
            _CREATED.add(created)
    return engine


class Database:
    """An open database: its engine, its URL (shown without password), `close()`, and use as
    a context manager. The ledger and the processing-log status store are ones."""

    def __init__(self, url: str | Path, *, echo: bool = False) -> None:
        self.engine = open_engine(url, echo=echo)
        self.url = self.engine.url

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def __repr__(self) -> str:
        # render_as_string hides a Postgres password by default.
        return f"{type(self).__name__}({self.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _take_over_sqlite_transactions(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        _use_wal(dbapi_connection)

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("state_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _use_wal(dbapi_connection: Any) -> None:
    """WAL lets readers (usage display) proceed while a writer holds the lock.

    Switching a new database to WAL takes an exclusive lock that SQLite's busy handler does not
    wait for: two processes opening a fresh file at once saw "database is locked". Once WAL,
    the mode is persistent and asking again takes no lock, so only the first switch retries.
    """
    from mm_assets.clients.retry import Backoff, retry

    def switch(_attempt: int) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    retry(
        switch,
        attempts=40,
        backoff=Backoff(base_seconds=0.05, max_seconds=2.0),
        retryable=lambda exc: "locked" in str(exc) or "busy" in str(exc),
    )


def create_tables(engine: Engine, metadata: sa.MetaData) -> None:
    """Create `metadata`'s missing tables in a write transaction.

    Not `metadata.create_all(engine)`: that reads the schema in a deferred transaction and
    then writes, and SQLite refuses such an upgrade outright ("database is locked", no busy
    wait) when another process wrote in between. Two steps of one run opening the status
    store on a fresh database did exactly that.
    """
    try:
        with write(engine) as conn:
            metadata.create_all(conn)
    except sa.exc.SQLAlchemyError:
        # Another process created them at the same moment; now they are there.
        with write(engine) as conn:
            metadata.create_all(conn)


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction; on SQLite it excludes every other writer from its start.

    On PostgreSQL, callers lock the rows they read-then-write (`SELECT ... FOR UPDATE`) or
    rely on a unique key.
    """
    with engine.connect().execution_options(state_write=True) as conn, conn.begin():
        yield conn


def dispose_engines() -> None:
    """Close every engine this process opened (their pooled connections with them)."""
    with _ENGINES_GUARD:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        _CREATED.clear()
