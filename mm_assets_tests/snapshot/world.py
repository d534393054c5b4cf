"""A snapshot-mode world for the core tests: successive full-audience batches built through the
real reader, diff, merge and writer into gzipped S2S files, read back by parsing them, and a
held state advanced the way `mediamath_audience_state` advances it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mm_assets.core.audience_state import (
    AudienceState,
    Candidate,
    Decision,
    family_key,
    named_members_sql,
)
from mm_assets.core.export_reader import read_export_batch
from mm_assets.core.s2s_validator import validate_file
from mm_assets.core.s2s_writer import write_s2s_files
from mm_assets.core.segment_merge import MergeReport
from mm_assets.core.snapshot_diff import SnapshotOptions, diff_and_merge
from mm_assets_tests.conftest import NOW, csv_bytes, make_settings, parse_s2s, write_batch

# (agency, mobile, user, segment, timestamp) as written in the files
Load = tuple[str, bool, str, str, str]


@dataclass
class SnapshotBuild:
    batch: str
    merge: MergeReport
    candidate: Candidate
    loads: set[Load]
    families: dict[str, set[Load]]  # family_key -> loads written for that family

    def adds(self) -> set[Load]:
        return {load for load in self.loads if load[4] != "-1"}

    def removals(self) -> set[Load]:
        return {load for load in self.loads if load[4] == "-1"}


class SnapshotWorld:
    def __init__(self, root: Path, buckets: int = 8, **options: object) -> None:
        self.root = root
        self.state = AudienceState(root / "state", buckets=buckets)
        self.options = SnapshotOptions(state_dir=root / "state", **options)  # type: ignore[arg-type]
        self.settings = make_settings()

    def build(self, batch: str, rows: list[tuple], *, now: int | None = None) -> SnapshotBuild:
        batch_dir = write_batch(self.root, {"part.csv": csv_bytes(rows)}, name=batch)
        work = self.root / "work" / batch
        read = read_export_batch(
            batch_dir,
            work / "raw_audiences",
            self.settings,
            buckets=self.state.pointer().buckets,
        )
        merge, candidate = diff_and_merge(
            self.state,
            batch,
            read.loads_dir,
            work / "merged_segment_loads",
            work / "snapshot_candidate",
            self.settings,
            self.options,
            now=int(NOW.timestamp()) if now is None else now,
        )
        built = write_s2s_files(
            merge.merged_dir, self.root / "outbox" / batch, self.settings, now=NOW, batch=batch
        )
        loads: set[Load] = set()
        families: dict[str, set[Load]] = defaultdict(set)
        for file in built:
            path = self.root / "outbox" / batch / file.name
            report = validate_file(path)  # every S2S rule, S2S-EFF and S2S-LINE included
            assert report.ok, (file.name, report.violations[:5])
            parsed = parse_s2s(path)
            for user, user_loads in parsed.rows:
                for segment, ts in user_loads:
                    load = (file.agency, file.mobile, user, segment, ts)
                    assert load not in loads, f"{load} sent twice in one batch"
                    loads.add(load)
                    families[family_key(file.agency, file.mobile)].add(load)
        return SnapshotBuild(batch, merge, candidate, loads, dict(families))

    def decide(self, build: SnapshotBuild, rejected: set[str] = frozenset()) -> Decision:
        """MediaMath's verdict: every family accepted except `rejected` (family keys)."""
        families = set(build.candidate.families) | set(self.state.pointer().families)
        return self.state.promote(
            build.candidate, families - set(rejected), decided_at=NOW.isoformat()
        )

    def held(self) -> set[tuple[str, bool, str, str]]:
        """The members held now, read from the state's Parquet files (either layout)."""
        import duckdb

        version = self.state.version_dir()
        if version is None:
            return set()
        rows = [
            row
            for index in range(self.state.pointer().buckets)
            for row in duckdb.sql(
                "SELECT agency, mobile, user_id, segment FROM " + named_members_sql(version, index)
            ).fetchall()
        ]
        assert len(rows) == len(set(rows)), "a member held twice"
        return set(rows)
