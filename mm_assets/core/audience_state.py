"""The held audience state of snapshot mode: what MediaMath holds according to our deliveries.

Per client (agency) and cookie/mobile family, the set of (user, segment) members, with the
timestamp last exported and when each member was last sent. It lives in the state folder as
Parquet, one file per user bucket, partitioned by the same hash the build's reader uses
(`hash(agency, mobile, user_id) % n`, `n` fixed for a state and recorded with it), so a diff
streams bucket by bucket. Each member carries that hash as its user's 64-bit key, so the diff
joins on (key, segment) like the merge groups (a state written before keys were kept gets them
computed as it is read, and its next version stores them).

Crash safety: a state is a complete *version folder* (written under a temporary name, synced,
renamed) named by a *pointer* (`CURRENT`, replaced atomically). A process that dies before the
pointer swap leaves an orphan folder that the next writer removes; one that dies after it has
advanced. Either way the state is the old one or the new one, never half of each, and
promoting the same batch twice is a no-op: a diff is never lost nor applied twice.

Order (snapshots apply in export order): a diff registers its batch as *pending* in the
pointer; another batch's diff refuses, naming the batch it waits for, until that batch was
decided (its accepted families advanced, the others kept). One lock file makes diffs and
promotions exclusive across processes.

No Dagster import here (DESIGN.md, layer 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from mm_assets.core.duckdb_session import sql_string
from mm_assets.core.segment_merge import user_key_sql

POINTER = "CURRENT"
VERSIONS = "versions"
LOCK = ".lock"
MEMBERS_FILE = "members.parquet"
CANDIDATE_INFO = "candidate.json"
# Buckets of a new state: fixed for its whole life (recorded in the pointer). At 20 M members
# a bucket holds ~1.25 M (the delta build's own buckets are as large at 20 M rows); fewer
# buckets cost less per batch (64 made a 200 k-row build 2x slower than 16: per-bucket
# overhead), more keep a larger state's buckets inside the memory budget.
DEFAULT_STATE_BUCKETS = 16
_HISTORY = 20  # decisions kept in the pointer, newest last
# The members' schema, one definition (the diff writes candidates in it, the state reads it).
# `user_key` is the reader's `user_key_sql()` of the member's user, never a merge's re-key.
MEMBER_COLUMNS = (
    "user_key UBIGINT, agency VARCHAR, mobile BOOLEAN, user_id VARCHAR, segment VARCHAR, "
    "ts BIGINT, sent_at BIGINT"
)
MEMBER_NAMES = ", ".join(c.strip().split(" ")[0] for c in MEMBER_COLUMNS.split(","))
# Candidates and versions: zstd level 1 (the default level 3 cost the diff ~10 % more for a
# few % of size; these files are rewritten every batch).
MEMBERS_PARQUET = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"


class SnapshotOrderError(RuntimeError):
    """A diff that must wait (`waiting_for` names the undecided batch), or that comes too late:
    its batch is older than one already applied (`waiting_for` is None)."""

    def __init__(self, message: str, waiting_for: str | None = None) -> None:
        super().__init__(message)
        self.waiting_for = waiting_for


class SnapshotBusy(RuntimeError):
    """Another process diffs or promotes snapshots right now (two diffs never run at once)."""


def family_key(agency: str, mobile: bool) -> str:
    """A family's name in the pointer and in SQL lists: `Acme|1`; `|0` is global cookies."""
    return f"{agency}|{int(mobile)}"


def bucket_hash_probe() -> int:
    """The hash the export reader buckets users with, of a fixed (agency, mobile, user)."""
    with duckdb.connect(":memory:") as con:
        return int(con.execute("SELECT hash('Probe', true, 'probe-user-0')").fetchone()[0])


def bucket_name(index: int) -> str:
    return f"bucket={index}"


@dataclass
class StatePointer:
    """What `CURRENT` says: the version in force and the order bookkeeping."""

    buckets: int
    version: str | None = None  # folder under versions/; None: nothing held yet
    last_advanced_batch: str | None = None
    last_decided_batch: str | None = None
    pending_batch: str | None = None  # diffed, waiting for its verdict
    families: dict[str, int] = field(default_factory=dict)  # family_key -> members held
    history: list[dict] = field(default_factory=list)
    # DuckDB's hash of a fixed user, recorded with the state: the buckets pair loads and held
    # members only while the reader's hash is the same (a DuckDB upgrade could change it).
    hash_probe: int | None = None

    @property
    def members(self) -> int:
        return sum(self.families.values())


@dataclass(frozen=True)
class Candidate:
    """A batch's snapshot members as they would be held, written beside the batch's build."""

    folder: Path
    batch: str
    diff_id: str
    base_version: str | None
    buckets: int
    families: dict[str, dict[str, int]]  # family_key -> {held, members, adds, removals, ...}

    @classmethod
    def load(cls, folder: Path) -> Candidate:
        data = json.loads((folder / CANDIDATE_INFO).read_text())
        return cls(folder=folder, **data)

    def save(self) -> None:
        data = asdict(self)
        del data["folder"]
        _write_atomically(self.folder / CANDIDATE_INFO, json.dumps(data, indent=2))


@dataclass(frozen=True)
class Decision:
    batch: str
    advanced: list[str]  # family keys whose state moved to the batch's snapshot
    kept: list[str]  # family keys whose state stayed (a file not accepted)
    already_applied: bool  # the pointer had this decision already (a re-run after a crash)
    pointer: StatePointer


class AudienceState:
    """The held state in `folder`: read the version in force, order diffs, promote candidates."""

    def __init__(self, folder: Path, buckets: int = DEFAULT_STATE_BUCKETS) -> None:
        self.folder = folder
        self._new_buckets = buckets

    # -- reading ------------------------------------------------------------------------------

    def pointer(self) -> StatePointer:
        try:
            data = json.loads((self.folder / POINTER).read_text())
        except FileNotFoundError:
            return StatePointer(buckets=self._new_buckets)
        return StatePointer(**data)

    def version_dir(self, pointer: StatePointer | None = None) -> Path | None:
        pointer = pointer or self.pointer()
        return self.folder / VERSIONS / pointer.version if pointer.version else None

    # -- locking and order --------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes; refuses at once (SnapshotBusy) when someone holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SnapshotBusy(
                    f"another snapshot diff or state update is running on {self.folder}"
                ) from None
            yield
        finally:
            os.close(fd)

    def begin_diff(self, batch: str) -> StatePointer:
        """Register `batch` as the pending snapshot (call under `lock`); refuse out of order."""
        pointer = self.pointer()
        probe = bucket_hash_probe()
        if pointer.hash_probe not in (None, probe):
            raise RuntimeError(
                "the reader's user hash is not the one the audience state was bucketed with "
                "(DuckDB changed?): re-seed the state (MM_SNAPSHOT_SEED_BATCH) before diffing"
            )
        pointer.hash_probe = probe
        pending = pointer.pending_batch
        if pending not in (None, batch):
            raise SnapshotOrderError(
                f"batch {batch} waits for batch {pending}: its snapshot was diffed and "
                "MediaMath's verdict on it is not applied yet (mediamath_audience_state), or it "
                f"is blocked (approve it: mm-assets approve-snapshot {pending})",
                waiting_for=pending,
            )
        if pointer.last_decided_batch and batch < pointer.last_decided_batch:
            raise SnapshotOrderError(
                f"batch {batch} is older than batch {pointer.last_decided_batch}, whose snapshot "
                "is already applied: snapshots apply in export order"
            )
        if pointer.pending_batch != batch or not (self.folder / POINTER).exists():
            pointer.pending_batch = batch
            self._write_pointer(pointer)
        return pointer

    # -- promotion ----------------------------------------------------------------------------

    def promote(
        self,
        candidate: Candidate,
        accepted: Collection[str],
        *,
        decided_at: str,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> Decision:
        """Advance the families in `accepted` (family keys) to the candidate's members; keep
        the others. Idempotent: a batch already decided (pointer) is not applied again."""
        with self.lock():
            pointer = self.pointer()
            if pointer.pending_batch != candidate.batch:
                if pointer.last_decided_batch == candidate.batch:
                    self._remove_orphans(pointer)  # a crash after the swap may have left one
                    last = pointer.history[-1] if pointer.history else {}
                    return Decision(
                        candidate.batch,
                        last.get("advanced", []),
                        last.get("kept", []),
                        True,
                        pointer,
                    )
                raise SnapshotOrderError(
                    f"batch {candidate.batch} is not the pending snapshot "
                    f"({pointer.pending_batch or 'none'}): it cannot be applied now"
                )
            if candidate.base_version != pointer.version:
                raise SnapshotOrderError(
                    f"batch {candidate.batch} was diffed against another state than the one held "
                    "now: rebuild it"
                )
            families = set(candidate.families) | set(pointer.families)
            advanced = sorted(f for f in families if f in set(accepted))
            kept = sorted(families - set(advanced))
            if advanced:
                owned = con is None
                con = con or duckdb.connect(":memory:")
                try:
                    version, sizes = self._write_version(con, pointer, candidate, advanced)
                finally:
                    if owned:
                        con.close()
                pointer.version = version
                pointer.families = {k: v for k, v in sorted(sizes.items()) if v}
                pointer.last_advanced_batch = candidate.batch
            pointer.last_decided_batch = candidate.batch
            pointer.pending_batch = None
            pointer.history = [
                *pointer.history,
                {"batch": candidate.batch, "advanced": advanced, "kept": kept, "at": decided_at},
            ][-_HISTORY:]
            self._write_pointer(pointer)
            self._remove_orphans(pointer)
            return Decision(candidate.batch, advanced, kept, False, pointer)

    def _write_version(
        self,
        con: duckdb.DuckDBPyConnection,
        pointer: StatePointer,
        candidate: Candidate,
        advanced: list[str],
    ) -> tuple[str, dict[str, int]]:
        """The new version: advanced families from the candidate, the rest from the old one."""
        name = f"v-{uuid.uuid4().hex[:12]}"
        temp = self.folder / VERSIONS / f".{name}.tmp"
        temp.mkdir(parents=True)
        old = self.version_dir(pointer)
        sizes: dict[str, int] = {}
        for index in range(pointer.buckets):
            if not (candidate.folder / bucket_name(index) / MEMBERS_FILE).is_file():
                raise ValueError(f"batch {candidate.batch}: its candidate lacks bucket {index}")
            sources = [
                f"SELECT {MEMBER_NAMES} FROM {held_members_sql(candidate.folder, index)} "
                "WHERE list_contains($1, agency || '|' || CAST(mobile AS INTEGER))"
            ]
            if old is not None:
                sources.append(
                    f"SELECT {MEMBER_NAMES} FROM {held_members_sql(old, index)} "
                    "WHERE NOT list_contains($1, agency || '|' || CAST(mobile AS INTEGER))"
                )
            out = temp / bucket_name(index)
            out.mkdir()
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE promoted AS {' UNION ALL '.join(sources)}",
                [advanced],
            )
            con.execute(
                f"COPY promoted TO {sql_string(str(out / MEMBERS_FILE))} ({MEMBERS_PARQUET})"
            )
            for agency, mobile, count in con.execute(
                "SELECT agency, mobile, count(*) FROM promoted GROUP BY ALL"
            ).fetchall():
                key = family_key(agency, mobile)
                sizes[key] = sizes.get(key, 0) + count
            _fsync(out / MEMBERS_FILE)
        con.execute("DROP TABLE IF EXISTS promoted")
        os.rename(temp, self.folder / VERSIONS / name)
        _fsync_dir(self.folder / VERSIONS)
        return name, sizes

    def _write_pointer(self, pointer: StatePointer) -> None:
        _write_atomically(self.folder / POINTER, json.dumps(asdict(pointer), indent=2))

    def _remove_orphans(self, pointer: StatePointer) -> None:
        """Version folders the pointer does not name: superseded ones, or a crashed write's."""
        for path in (self.folder / VERSIONS).glob("*"):
            if path.name != pointer.version:
                shutil.rmtree(path, ignore_errors=True)


def held_members_sql(version_dir: Path | None, index: int) -> str:
    """The held members of one bucket (or a candidate's) as a SQL relation with every member
    column (empty when nothing is held)."""
    members = None if version_dir is None else version_dir / bucket_name(index) / MEMBERS_FILE
    if members is None or not members.is_file():
        columns = ", ".join(
            f"NULL::{kind} AS {name}"
            for name, kind in (c.strip().split(" ") for c in MEMBER_COLUMNS.split(","))
        )
        return f"(SELECT {columns} WHERE false)"
    relation = f"read_parquet({sql_string(str(members))})"
    if "user_key" not in pq.read_schema(members).names:
        # Written before members carried their user's key: the same key, computed as read.
        relation = f"(SELECT *, {user_key_sql()} AS user_key FROM {relation})"
    return relation


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with open(temp, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync(path)


APPROVALS = "approvals"


def approve_snapshot(state_dir: Path, batch: str, *, by: str, reason: str, at: str) -> dict:
    """A person's deliberate release of a batch's snapshot that the safety check blocked
    (removals over the threshold, or an incomplete batch). Kept in the state folder."""
    record = {"batch": batch, "approved_by": by, "reason": reason, "approved_at": at}
    _write_atomically(state_dir / APPROVALS / f"{batch}.json", json.dumps(record, indent=2))
    return record


def snapshot_approval(state_dir: Path, batch: str) -> dict | None:
    try:
        return json.loads((state_dir / APPROVALS / f"{batch}.json").read_text())
    except (OSError, ValueError):
        return None


WAITING = "waiting"


def note_waiting(state_dir: Path, batch: str) -> None:
    """A batch whose diff had to wait for an earlier one (re-requested once that is decided)."""
    (state_dir / WAITING).mkdir(parents=True, exist_ok=True)
    (state_dir / WAITING / batch).touch()


def clear_waiting(state_dir: Path, batch: str) -> None:
    (state_dir / WAITING / batch).unlink(missing_ok=True)


def waiting_batches(state_dir: Path) -> list[str]:
    folder = state_dir / WAITING
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
