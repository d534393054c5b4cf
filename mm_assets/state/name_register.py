"""The FileIdentifier register: every S2S file name ever issued (S2S-HDR, S2S-NAME).

A name is the file's FileIdentifier and must be unique across all uploads, so every build,
on every worker, asks one register. Two implementations, chosen once by `open_name_register`:

- `NameRegister`: the file `OUTBOX/.issued_names`, under `flock`; one machine (or a volume
  whose locks work across machines).
- `DatabaseNameRegister`: a table keyed by the name in the shared database; the key makes
  two workers' simultaneous claims of one name fail for all but one, which then takes the
  next free second. Names the file register issued before the database was configured
  count as taken too.
"""

from __future__ import annotations

import fcntl
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mm_assets.core.clock import utc_now
from mm_assets.core.s2s_format import SUFFIX, FileNameAllocator, FormatError, file_name
from mm_assets.state import database

NAME_REGISTER = ".issued_names"
# Claims lost to other workers before giving up (each loss moves on by one second).
MAX_CLAIMS = 10_000

metadata = sa.MetaData()

issued_names_table = sa.Table(
    "issued_file_names",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("issued_at", sa.DateTime, nullable=False),
)


class IssuesNames(Protocol):
    def allocate(self, partner: str, agency: str | None, now: datetime) -> str:
        """A name never issued before, for `agency` (None: global data) at or after `now`."""
        ...


def _names_in(outbox: Path) -> set[str]:
    """Names on disk in the outbox and in its file register (issued before any database)."""
    names = {p.name for p in outbox.rglob("*" + SUFFIX)}
    register = outbox / NAME_REGISTER
    if register.exists():
        names |= {line.strip() for line in register.read_text(encoding="ascii").splitlines()}
    return names


class NameRegister:
    """Every file name ever issued by this outbox, shared by concurrent builds (file lock)."""

    def __init__(self, outbox: Path) -> None:
        self.path = outbox / NAME_REGISTER
        outbox.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._lock = threading.Lock()

    def allocate(self, partner: str, agency: str | None, now: datetime) -> str:
        with self._lock, open(self.path, "r+", encoding="ascii") as register:
            fcntl.flock(register, fcntl.LOCK_EX)
            taken = {line.strip() for line in register}
            taken |= {p.name for p in self.path.parent.rglob("*" + SUFFIX)}
            name = FileNameAllocator(partner, taken, now).allocate(agency)
            register.write(name + "\n")
            register.flush()
            return name


class DatabaseNameRegister:
    """Every file name ever issued, in the shared database (unique key on the name)."""

    def __init__(self, url: str | Path, outbox: Path) -> None:
        self.engine = database.engine_for(url, metadata)
        self.outbox = outbox
        outbox.mkdir(parents=True, exist_ok=True)

    def _taken(self, first: str) -> set[str]:
        """Issued names of `first`'s agency and partner from `first`'s second on (the
        stamp is fixed-width, so later seconds sort after it)."""
        prefix = first[: -len("YYYYMMDDHHMMSS" + SUFFIX)]
        c = issued_names_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.name).where(c.name.startswith(prefix, autoescape=True), c.name >= first)
            )
            return {row.name for row in rows}

    def allocate(self, partner: str, agency: str | None, now: datetime) -> str:
        now = now.astimezone(UTC).replace(microsecond=0)
        first = file_name(partner, now, agency)
        taken = self._taken(first) | _names_in(self.outbox)
        allocator = FileNameAllocator(partner, taken, now)
        for _ in range(MAX_CLAIMS):
            name = allocator.allocate(agency)
            try:
                with database.write(self.engine) as conn:
                    conn.execute(
                        issued_names_table.insert().values(
                            name=name, issued_at=utc_now().replace(tzinfo=None)
                        )
                    )
                return name
            except IntegrityError:
                continue  # another worker claimed it a moment ago; the allocator moves on
        raise FormatError(f"no free file name after {MAX_CLAIMS} claims from {first}")


def open_name_register(outbox: Path) -> IssuesNames:
    """The register of this deployment: the database's when one is configured, else the
    outbox's file."""
    url = database.configured_url()
    return DatabaseNameRegister(url, outbox) if url else NameRegister(outbox)
