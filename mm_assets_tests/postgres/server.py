"""A throw-away PostgreSQL server for the tests: Debian's `postgresql` binaries, a temporary
folder, an ephemeral port on 127.0.0.1, trust authentication for the user `mm`.

PostgreSQL refuses to run as root, so as root (CI) the folder is handed to the `postgres`
user and `initdb` / `pg_ctl` run through `runuser`; as any other user they run directly.
The server's Unix socket also lives in the folder, so nothing outside it is touched and
several test sessions on one machine never meet.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from itertools import count
from pathlib import Path
from typing import Self

import sqlalchemy as sa

PG_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the Debian package's system user, used when we are root
DB_USER = "mm"
START_ATTEMPTS = 3  # a free port can be taken by another process before the server binds it


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (`/usr/lib/postgresql/N/bin`), if any."""
    found = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """Start with `with LocalPostgres() as pg:`; `pg.new_database()` gives a fresh URL."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="mm-assets-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._names = count(1)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> Self:
        if self.as_root:
            shutil.chown(self.root, SERVER_USER)
        done = self._run(
            "initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8"
        )
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        for attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1"
            log = self.root / f"server-{attempt}.log"
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start"
            )
            if done.returncode == 0:
                return self
        raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database on this server (`postgresql://`: psycopg 3, the
        `[postgres]` extra's driver, as a user writes it)."""
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database (one per test keeps tests apart) and return its URL."""
        name = f"test_{next(self._names)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)
