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

from mm_assets.core.atomic_files import fsync_path, write_text_atomically
from mm_assets.core.duckdb_session import sql_string
from mm_assets.core.user_buckets import bucket_hash_probe, bucket_name, user_key_sql

POINTER = "CURRENT"
VERSIONS = "versions"
LOCK = ".lock"
MEMBERS_FILE = "members.parquet"
USERS_FILE = "users.parquet"
CANDIDATE_INFO = "candidate.json"
# Buckets of a new state: fixed for its whole life (recorded in the pointer). At 20 M members
# a bucket holds ~1.25 M (the delta build's own buckets are as large at 20 M rows); fewer
# buckets cost less per batch (64 made a 200 k-row build 2x slower than 16: per-bucket
# overhead), more keep a larger state's buckets inside the memory budget.
DEFAULT_STATE_BUCKETS = 16
_HISTORY = 20  # decisions kept in the pointer, newest last
# A bucket's members (of a version, or of a candidate), in one of two layouts, one definition:
# - keyed: `members.parquet` (MEMBER_COLUMNS, no user IDs) and `users.parquet` (USER_COLUMNS),
#   one row per (user_key, agency, mobile): the diff reads user IDs only for users, not for
#   every member. `user_key` is the reader's `user_key_sql()`, never a merge's re-key.
# - named: `members.parquet` alone, in NAMED_COLUMNS: states written before keys were kept,
#   and a bucket in which two users share a key (see SnapshotDiff.diff_bucket).
MEMBER_COLUMNS = (
    "user_key UBIGINT, agency VARCHAR, mobile BOOLEAN, segment VARCHAR, ts BIGINT, sent_at BIGINT"
)
USER_COLUMNS = "user_key UBIGINT, agency VARCHAR, mobile BOOLEAN, user_id VARCHAR"
NAMED_COLUMNS = (
    "agency VARCHAR, mobile BOOLEAN, user_id VARCHAR, segment VARCHAR, ts BIGINT, sent_at BIGINT"
)
# Candidates and versions: zstd level 1 (rewritten every batch; level 3, DuckDB's default,
# costs more CPU for a few % of size).
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
        write_text_atomically(self.folder / CANDIDATE_INFO, json.dumps(data, indent=2))


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
        if set(pointer.families) <= set(advanced):
            old = None  # every family held moves to the candidate: nothing of the old is kept
        sizes: dict[str, int] = {}
        for index in range(pointer.buckets):
            if not (candidate.folder / bucket_name(index) / MEMBERS_FILE).is_file():
                raise ValueError(f"batch {candidate.batch}: its candidate lacks bucket {index}")
            keyed = is_keyed(candidate.folder, index) and (old is None or is_keyed(old, index))
            layout = (
                ((MEMBERS_FILE, held_members_sql), (USERS_FILE, held_users_sql))
                if keyed
                else ((MEMBERS_FILE, named_members_sql),)
            )
            out = temp / bucket_name(index)
            out.mkdir()
            for file, relation in layout:
                sources = [
                    f"SELECT * FROM {relation(candidate.folder, index)} "
                    "WHERE list_contains($1, agency || '|' || CAST(mobile AS INTEGER))"
                ]
                if old is not None:
                    sources.append(
                        f"SELECT * FROM {relation(old, index)} "
                        "WHERE NOT list_contains($1, agency || '|' || CAST(mobile AS INTEGER))"
                    )
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE promoted AS {' UNION ALL '.join(sources)}",
                    [advanced],
                )
                con.execute(f"COPY promoted TO {sql_string(str(out / file))} ({MEMBERS_PARQUET})")
                if file == MEMBERS_FILE:
                    for agency, mobile, count in con.execute(
                        "SELECT agency, mobile, count(*) FROM promoted GROUP BY ALL"
                    ).fetchall():
                        key = family_key(agency, mobile)
                        sizes[key] = sizes.get(key, 0) + count
                fsync_path(out / file)
        con.execute("DROP TABLE IF EXISTS promoted")
        os.rename(temp, self.folder / VERSIONS / name)
        fsync_path(self.folder / VERSIONS)
        return name, sizes

    def _write_pointer(self, pointer: StatePointer) -> None:
        write_text_atomically(self.folder / POINTER, json.dumps(asdict(pointer), indent=2))

    def _remove_orphans(self, pointer: StatePointer) -> None:
        """Version folders the pointer does not name: superseded ones, or a crashed write's."""
        for path in (self.folder / VERSIONS).glob("*"):
            if path.name != pointer.version:
                shutil.rmtree(path, ignore_errors=True)


def is_keyed(folder: Path, index: int) -> bool:
    """Whether a bucket's members are in the keyed layout (a users file beside them)."""
    return (folder / bucket_name(index) / USERS_FILE).is_file()


def held_members_sql(folder: Path | None, index: int) -> str:
    """One bucket's members (a version's or a candidate's) in MEMBER_COLUMNS, whatever their
    layout (empty when nothing is held)."""
    named = _named_relation(folder, index)
    if named is None:
        return _relation(folder, index, MEMBERS_FILE, MEMBER_COLUMNS)
    # The key the reader gives the same user, computed as read.
    return (
        f"(SELECT {user_key_sql()} AS user_key, agency, mobile, segment, ts, sent_at FROM {named})"
    )


def held_users_sql(folder: Path | None, index: int) -> str:
    """One bucket's users in USER_COLUMNS, one row per (user_key, agency, mobile) unless two
    users share a key (the diff checks)."""
    named = _named_relation(folder, index)
    if named is None:
        return _relation(folder, index, USERS_FILE, USER_COLUMNS)
    return f"(SELECT DISTINCT {user_key_sql()} AS user_key, agency, mobile, user_id FROM {named})"


def named_members_sql(folder: Path | None, index: int) -> str:
    """One bucket's members with their user IDs, in NAMED_COLUMNS, whatever their layout."""
    named = _named_relation(folder, index)
    if named is not None:
        return named
    members = _relation(folder, index, MEMBERS_FILE, MEMBER_COLUMNS)
    users = _relation(folder, index, USERS_FILE, USER_COLUMNS)
    return (
        f"(SELECT m.agency, m.mobile, u.user_id, m.segment, m.ts, m.sent_at FROM {members} m "
        f"JOIN {users} u USING (user_key, agency, mobile))"
    )


def _named_relation(folder: Path | None, index: int) -> str | None:
    """A bucket in the named layout as a relation; None for a keyed (or absent) one."""
    if folder is None or is_keyed(folder, index):
        return None
    path = folder / bucket_name(index) / MEMBERS_FILE
    return _relation(folder, index, MEMBERS_FILE, NAMED_COLUMNS) if path.is_file() else None


def _relation(folder: Path | None, index: int, file: str, columns: str) -> str:
    """A file of a bucket as a relation with `columns` (empty when it does not exist)."""
    pairs = [c.strip().split(" ") for c in columns.split(",")]
    path = None if folder is None else folder / bucket_name(index) / file
    if path is None or not path.is_file():
        nulls = ", ".join(f"NULL::{kind} AS {name}" for name, kind in pairs)
        return f"(SELECT {nulls} WHERE false)"
    names = ", ".join(name for name, _ in pairs)
    return f"(SELECT {names} FROM read_parquet({sql_string(str(path))}))"


APPROVALS = "approvals"


def approve_snapshot(state_dir: Path, batch: str, *, by: str, reason: str, at: str) -> dict:
    """A person's deliberate release of a batch's snapshot that the safety check blocked
    (removals over the threshold, or an incomplete batch). Kept in the state folder."""
    record = {"batch": batch, "approved_by": by, "reason": reason, "approved_at": at}
    write_text_atomically(state_dir / APPROVALS / f"{batch}.json", json.dumps(record, indent=2))
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
