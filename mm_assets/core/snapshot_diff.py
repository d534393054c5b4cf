"""Snapshot mode's diff: a full-audience batch against what MediaMath holds, one user bucket at a
time (DuckDB SQL, no Dagster).

Per client and cookie/mobile family, for each (user, segment):

- in the snapshot, not held -> an add, with the exported timestamp (`0` when none: S2S-TS);
- held, not in the snapshot -> a removal, `SEGMENT:-1` (S2S-TS);
- in both -> unchanged, not sent again; unless re-sending is on (`resend_after_seconds`) and it
  was last sent that long ago: then it is re-sent as an add (for destinations that age
  members out).

A `-1` row in a snapshot means "not a member": a held member removed, otherwise nothing.
The diff's loads then go through the ordinary merge (one line per user, continuation lines,
split files: S2S-EFF, S2S-LINE), and the snapshot's members of the bucket are written as the
batch's *candidate* state, which `AudienceState.promote` makes the held state for the families
MediaMath accepted.

The seam is `segment_merge._snapshot_seam`: after the merge resolved the bucket's `kept` loads
and `users`, `SnapshotDiff.diff_bucket` replaces them by the diff's, still by user key.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mm_assets.core.audience_state import (
    MEMBERS_FILE,
    MEMBERS_PARQUET,
    USERS_FILE,
    AudienceState,
    Candidate,
    family_key,
    held_members_sql,
    held_users_sql,
    named_members_sql,
)
from mm_assets.core.bucket_loads import bucket_load_files, write_empty_bucket
from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.duckdb_session import sql_string
from mm_assets.core.segment_merge import (
    RANK_NOW,
    RANK_REMOVE,
    MergeReport,
    merge_segment_loads,
)
from mm_assets.core.user_buckets import bucket_name, user_key_sql

# Per family: members held before, members in the snapshot, what is sent (adds, removals,
# re-sent), what is not (unchanged; and the rows behind them), and the snapshot's `-1` rows for
# members not held (nothing to remove: counted, not sent).
STAT_NAMES = (
    "held",
    "members",
    "adds",
    "removals",
    "unchanged",
    "resent",
    "unchanged_rows",
    "removal_rows_not_held",
)


@dataclass(frozen=True)
class SnapshotOptions:
    """Snapshot mode's settings, as the core needs them (the Dagster resource fills them)."""

    state_dir: Path
    removal_threshold: float = 0.20  # share of a family's held members; more blocks the batch
    resend_after_seconds: int = 0  # 0: unchanged members are never re-sent
    seed_batch: str = ""  # this batch seeds an empty state without sending anything


class SnapshotDiff:
    """One batch's diff: create it under the state's lock, pass it to `merge_segment_loads`."""

    def __init__(
        self,
        state: AudienceState,
        batch: str,
        candidate_dir: Path,
        *,
        now: int,
        resend_after_seconds: int = 0,
        seed: bool = False,
    ) -> None:
        pointer = state.begin_diff(batch)
        if seed and pointer.version is not None:
            raise ValueError(f"batch {batch} cannot seed the audience state: it holds members")
        self.state = state
        self.batch = batch
        self.buckets = pointer.buckets
        self.base_version = pointer.version
        self.version_dir = state.version_dir(pointer)
        self.candidate_dir = candidate_dir
        self.now = int(now)
        self.resend_after_seconds = int(resend_after_seconds)
        self.seed = seed
        self.diff_id = uuid.uuid4().hex
        self.families: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STAT_NAMES, 0))
        if candidate_dir.exists():
            shutil.rmtree(candidate_dir)
        candidate_dir.mkdir(parents=True)

    def prepare_loads(self, loads_dir: Path) -> None:
        """Give every one of the state's buckets a loads file (an empty one where the snapshot
        has no user), so the merge visits buckets whose held members all left."""
        for bucket in loads_dir.glob("bucket=*"):
            index = int(bucket.name.split("=", 1)[1])
            if index >= self.buckets:
                raise ValueError(
                    f"the loads have bucket {index}, the audience state {self.buckets} buckets: "
                    "re-read the batch (raw_audiences) in snapshot mode"
                )
        for index in range(self.buckets):
            bucket = loads_dir / bucket_name(index)
            if not bucket_load_files(bucket):
                write_empty_bucket(bucket)

    def diff_bucket(self, con: duckdb.DuckDBPyConnection, bucket: Path) -> None:
        """Replace the temp table `kept` (the bucket's resolved snapshot loads, by user key) by
        its diff against the held members of the same bucket, keep in `users` the users of what
        is sent (those of its removals added), and write the bucket's candidate members.

        The diff joins on (user key, segment): the key is the reader's hash, which the state
        keeps with each member. It is trusted only while one key names one user: when the merge
        re-keyed the bucket (two snapshot users share a hash), two held users share a key, or a
        held user's key names another user of the snapshot, the bucket is diffed on keys given
        to each distinct user by name instead (exact, and astronomically rare).
        """
        index = int(bucket.name.split("=", 1)[1])
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE held_users AS
            SELECT * FROM {held_users_sql(self.version_dir, index)}""")
        trusted = con.execute(f"""
            SELECT (SELECT count(*) FILTER (WHERE user_key <> {user_key_sql()}) = 0 FROM users)
               AND (SELECT count(*) = count(DISTINCT user_key) FROM held_users)
               AND (SELECT count(*) = 0 FROM held_users h JOIN users u USING (user_key)
                    WHERE h.agency <> u.agency OR h.mobile <> u.mobile
                       OR h.user_id <> u.user_id)""").fetchone()[0]
        if trusted:
            members = f"(SELECT * FROM {held_members_sql(self.version_dir, index)})"
            self._keyed_diff(con, index, members, by_name=False)
        else:
            _key_by_name(con, named_members_sql(self.version_dir, index))
            self._keyed_diff(con, index, "held_by_name", by_name=True)
            con.execute("DROP TABLE held_by_name")
        con.execute("DROP TABLE held_users")

    def _keyed_diff(
        self, con: duckdb.DuckDBPyConnection, index: int, members: str, *, by_name: bool
    ) -> None:
        """The diff of `kept` against the held `members` (user_key, agency, mobile, segment,
        sent_at) on (user_key, segment), one key naming one user of `users` or `held_users`.
        `by_name`: the keys are numbers given by name, so the candidate keeps its members with
        their user IDs (the named layout) instead of by the reader's key."""
        resend = self.resend_after_seconds
        # One row per snapshot load or held member: what changes, and its family.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE snapshot_diff AS
            SELECT d.*, coalesce(d.held_agency, u.agency) AS agency,
                   coalesce(d.held_mobile, u.mobile) AS mobile
            FROM (
                SELECT coalesce(s.user_key, h.user_key) AS user_key,
                       coalesce(s.segment, h.segment) AS segment,
                       s.rank, coalesce(s.n, 1) AS n, coalesce(s.conflict, false) AS conflict,
                       h.sent_at, h.user_key IS NOT NULL AS was_held, h.agency AS held_agency,
                       h.mobile AS held_mobile,
                       CASE WHEN s.user_key IS NULL OR s.rank = {RANK_REMOVE}
                                THEN CASE WHEN h.user_key IS NULL THEN 'not_held' ELSE 'remove' END
                            WHEN h.user_key IS NULL THEN 'add'
                            WHEN {resend} > 0 AND h.sent_at <= {self.now - resend} THEN 'resend'
                            ELSE 'unchanged' END AS change
                FROM kept s FULL OUTER JOIN
                     (SELECT user_key, agency, mobile, segment, sent_at FROM {members}) h
                  ON s.user_key = h.user_key AND s.segment = h.segment) d
            LEFT JOIN users u ON u.user_key = d.user_key AND d.held_agency IS NULL""")
        out = self.candidate_dir / bucket_name(index)
        out.mkdir(exist_ok=True)
        member = "change IN ('add', 'unchanged', 'resend')"
        ts = f"CAST(CASE rank WHEN {RANK_NOW} THEN 0 ELSE -rank END AS BIGINT) AS ts"
        sent_at = (
            f"CAST(CASE WHEN change IN ('add', 'resend') THEN {self.now} ELSE sent_at END "
            "AS BIGINT) AS sent_at"
        )
        if by_name:
            _copy_members(
                con,
                f"SELECT d.agency, d.mobile, u.user_id, d.segment, {ts}, {sent_at} "
                f"FROM snapshot_diff d JOIN users u USING (user_key) WHERE {member}",
                out / MEMBERS_FILE,
            )
        else:
            _copy_members(
                con,
                f"SELECT user_key, agency, mobile, segment, {ts}, {sent_at} "
                f"FROM snapshot_diff WHERE {member}",
                out / MEMBERS_FILE,
            )
            _copy_members(
                con,
                "SELECT user_key, agency, mobile, user_id FROM users WHERE user_key IN "
                f"(SELECT user_key FROM snapshot_diff WHERE {member})",
                out / USERS_FILE,
            )
        for agency, mobile, *counts in con.execute(f"""
            SELECT agency, mobile,
                   count(*) FILTER (WHERE was_held),
                   count(*) FILTER (WHERE {member}),
                   count(*) FILTER (WHERE change = 'add'),
                   count(*) FILTER (WHERE change = 'remove'),
                   count(*) FILTER (WHERE change = 'unchanged'),
                   count(*) FILTER (WHERE change = 'resend'),
                   coalesce(sum(n) FILTER (WHERE change = 'unchanged'), 0),
                   coalesce(sum(n) FILTER (WHERE change = 'not_held'), 0)
            FROM snapshot_diff GROUP BY ALL""").fetchall():
            stats = self.families[family_key(agency, mobile)]
            for name, count in zip(STAT_NAMES, counts, strict=True):
                stats[name] += int(count)
        # What is sent: adds, re-sent adds and removals (a removal of a member the snapshot no
        # longer lists counts as one load in); a seeding batch sends nothing. The rows of the
        # members not sent are counted in the stats.
        sent = "false" if self.seed else "change IN ('add', 'resend', 'remove')"
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE kept AS
            SELECT user_key, segment,
                   CASE change WHEN 'remove' THEN {RANK_REMOVE} ELSE rank END AS rank,
                   n, conflict
            FROM snapshot_diff WHERE {sent}""")
        # The users of the lines: those of the snapshot with something sent, and the held
        # users the snapshot no longer lists (their removals).
        con.execute("""
            CREATE OR REPLACE TEMP TABLE users AS
            SELECT user_key, agency, mobile, user_id FROM users
            WHERE user_key IN (SELECT user_key FROM kept)
            UNION ALL
            SELECT user_key, agency, mobile, user_id FROM held_users h
            WHERE user_key IN (SELECT user_key FROM kept)
              AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_key = h.user_key)""")
        con.execute("DROP TABLE snapshot_diff")

    def finish(self) -> Candidate:
        """Record the candidate (call after the merge): its batch, base version and counts."""
        candidate = Candidate(
            folder=self.candidate_dir,
            batch=self.batch,
            diff_id=self.diff_id,
            base_version=self.base_version,
            buckets=self.buckets,
            families={k: dict(v) for k, v in sorted(self.families.items())},
        )
        candidate.save()
        return candidate


def _copy_members(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    con.execute(f"COPY ({query}) TO {sql_string(str(path))} ({MEMBERS_PARQUET})")


def _key_by_name(con: duckdb.DuckDBPyConnection, named_members: str) -> None:
    """Key `kept`, `users`, `held_users` and the held members (`held_by_name`) by a number
    given to each distinct user of the bucket, the snapshot's or held, by name: unique by
    construction, whatever the reader's hash says."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE held_named AS SELECT * FROM {named_members}")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT u.agency, u.mobile, u.user_id, k.segment, k.rank, k.n, k.conflict
        FROM kept k JOIN users u USING (user_key)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE users AS
        SELECT row_number() OVER () AS user_key, agency, mobile, user_id
        FROM (SELECT agency, mobile, user_id FROM kept
              UNION SELECT agency, mobile, user_id FROM held_named)""")
    con.execute("CREATE OR REPLACE TEMP TABLE held_users AS SELECT * FROM users")
    for table, source, columns in (
        ("kept", "kept", "rank, n, conflict"),
        ("held_by_name", "held_named", "t.agency, t.mobile, sent_at"),
    ):
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            SELECT u.user_key, t.segment, {columns}
            FROM {source} t JOIN users u USING (agency, mobile, user_id)""")
    con.execute("DROP TABLE held_named")


def removal_shares(candidate: Candidate) -> dict[str, float]:
    """Per family: removals as a share of the members held before the batch."""
    return {
        key: (stats["removals"] / stats["held"]) if stats["held"] else 0.0
        for key, stats in candidate.families.items()
    }


def families_over_threshold(candidate: Candidate, threshold: float) -> list[str]:
    return sorted(k for k, share in removal_shares(candidate).items() if share > threshold)


def diff_and_merge(
    state: AudienceState,
    batch: str,
    loads_dir: Path,
    out_dir: Path,
    candidate_dir: Path,
    settings: BuildSettings,
    options: SnapshotOptions,
    *,
    now: int,
) -> tuple[MergeReport, Candidate]:
    """The merge step in snapshot mode: under the state's lock (two diffs never run at once),
    in export order (SnapshotOrderError names the batch waited for), diff and merge `batch`'s
    loads (read with the state's bucket count) and write its candidate state."""
    with state.lock():
        diff = SnapshotDiff(
            state,
            batch,
            candidate_dir,
            now=now,
            resend_after_seconds=options.resend_after_seconds,
            seed=batch == options.seed_batch,
        )
        diff.prepare_loads(loads_dir)
        report = merge_segment_loads(loads_dir, out_dir, settings, snapshot=diff)
        return report, diff.finish()


def parse_share(text: str | float) -> float:
    """`20%`, `0.2` -> 0.2: a share of a family's held members (0 ... 1)."""
    value = str(text).strip()
    share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    if not 0 <= share <= 1:
        raise ValueError(f"removal threshold {text!r}: a share from 0 to 1, or 0 % to 100 %")
    return share


# Beside a candidate: the safety check's verdict on its diff, and the build made from it.
RELEASE = "release.json"
BUILT_FROM = "build.json"


def record_release(candidate: Candidate, *, passed: bool, summary: str) -> None:
    """The safety check's verdict on this very diff (s2s_files writes only a released one)."""
    text = json.dumps({"diff_id": candidate.diff_id, "passed": passed, "summary": summary})
    (candidate.folder / RELEASE).write_text(text)


def release_problem(candidate_dir: Path) -> str:
    """Why the batch's current diff must not be written for delivery ("" when released)."""
    try:
        candidate = Candidate.load(candidate_dir)
        release = json.loads((candidate_dir / RELEASE).read_text())
    except (OSError, ValueError):
        return "the snapshot diff has not been checked (snapshot_removals_within_threshold)"
    if release.get("diff_id") != candidate.diff_id:
        return "the safety check judged another diff of this batch, not the current one"
    if not release.get("passed"):
        return f"the snapshot is blocked: {release.get('summary') or 'see the check'}"
    return ""


def bind_build(candidate_dir: Path, manifest_digest: str) -> None:
    """Tie the candidate to the build written from its diff (the outbox manifest's digest)."""
    candidate = Candidate.load(candidate_dir)
    text = json.dumps({"diff_id": candidate.diff_id, "manifest_sha256": manifest_digest})
    (candidate_dir / BUILT_FROM).write_text(text)


def candidate_for_build(candidate_dir: Path, manifest_digest: str) -> Candidate:
    """The candidate the delivered build was made from; ValueError when they do not match."""
    candidate = Candidate.load(candidate_dir)
    try:
        built = json.loads((candidate_dir / BUILT_FROM).read_text())
    except (OSError, ValueError):
        built = {}
    if built.get("diff_id") != candidate.diff_id or built.get("manifest_sha256") != (
        manifest_digest
    ):
        raise ValueError(
            f"batch {candidate.batch}: the outbox's build was not written from the current "
            "snapshot diff: rebuild the batch"
        )
    return candidate
