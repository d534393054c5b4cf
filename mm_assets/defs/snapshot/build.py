"""Snapshot mode's part of the build steps, called by the `s2s_build` assets (one call each), so
the build assets stay as they are in delta mode.

- `raw_audiences` reads with the held state's bucket count (`read_buckets`);
- `merged_segment_loads` diffs against the held state (`merge`), or fails visibly while an
  earlier batch's snapshot waits for its verdict;
- `s2s_files` writes only a diff the safety check released (`require_release`) and ties the
  candidate state to the build it wrote (`bind`), so the state advances for exactly what
  was delivered.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mm_assets.core.audience_state import (
    AudienceState,
    Candidate,
    SnapshotBusy,
    SnapshotOrderError,
    clear_waiting,
    note_waiting,
)
from mm_assets.core.batch_work import BatchWork, ReadSummary
from mm_assets.core.clock import utc_now
from mm_assets.core.segment_merge import MergeReport, merge_segment_loads
from mm_assets.core.snapshot_diff import bind_build, diff_and_merge, release_problem
from mm_assets.defs.metadata import table
from mm_assets.defs.resources import S2sFileSettings
from mm_assets.delivery import gate

FAMILY_COLUMNS = [
    "agency",
    "ids",
    "held",
    "in snapshot",
    "adds",
    "removals",
    "unchanged",
    "re-sent",
    "removed share",
]


def read_buckets(s2s: S2sFileSettings) -> int | None:
    """The user buckets the reader must use: the held state's in snapshot mode, else None."""
    options = s2s.snapshot_options()
    return AudienceState(options.state_dir).pointer().buckets if options else None


def merge(work: BatchWork, s2s: S2sFileSettings) -> tuple[MergeReport, dict[str, Any]]:
    """The merge step: as today in delta mode; in snapshot mode the diff, with its metadata."""
    batch = work.batch
    options = s2s.snapshot_options()
    if options is None:
        return merge_segment_loads(work.loads, work.merge_dir, s2s.build_settings()), {}
    state = AudienceState(options.state_dir)
    # The diff pairs a bucket of loads with the same bucket of the state: same hash, same n.
    read_with = work.load(ReadSummary).user_buckets
    if read_with != state.pointer().buckets:
        raise dg.Failure(
            description=f"batch {batch} was read into {read_with} user buckets, the audience "
            f"state has {state.pointer().buckets}: re-read it in snapshot mode (raw_audiences)"
        )
    try:
        report, candidate = diff_and_merge(
            state,
            batch,
            work.loads,
            work.merge_dir,
            work.candidate,
            s2s.build_settings(),
            options,
            now=int(utc_now().timestamp()),
        )
    except (SnapshotOrderError, SnapshotBusy) as exc:
        if isinstance(exc, SnapshotBusy) or exc.waiting_for:
            note_waiting(options.state_dir, batch)  # the sensor re-requests it later
        raise dg.Failure(description=str(exc)) from None
    clear_waiting(options.state_dir, batch)
    return report, snapshot_metadata(candidate)


def family_rows(candidate: Candidate) -> list[list[Any]]:
    rows = []
    for key, stats in candidate.families.items():
        agency, mobile = key.rsplit("|", 1)
        share = stats["removals"] / stats["held"] if stats["held"] else 0.0
        rows.append(
            [
                agency or "(global)",
                "mobile" if mobile == "1" else "cookie",
                stats["held"],
                stats["members"],
                stats["adds"],
                stats["removals"],
                stats["unchanged"],
                stats["resent"],
                f"{share:.1%}",
            ]
        )
    return rows


def snapshot_metadata(candidate: Candidate) -> dict[str, Any]:
    totals = {
        name: sum(s[name] for s in candidate.families.values())
        for name in ("adds", "removals", "unchanged", "resent")
    }
    return {
        "export_mode": "snapshot",
        "snapshot_adds": totals["adds"],
        "snapshot_removals": totals["removals"],
        "snapshot_unchanged": totals["unchanged"],
        "snapshot_resent": totals["resent"],
        "snapshot_families": table(FAMILY_COLUMNS, family_rows(candidate)),
        "snapshot_diffed_against": candidate.base_version or "(nothing held: all adds)",
    }


def require_release(work: BatchWork, s2s: S2sFileSettings) -> None:
    """Snapshot mode: refuse to write files from a diff the safety check did not release."""
    if s2s.snapshot_options() is None:
        return
    problem = release_problem(work.candidate)
    if problem:
        raise dg.Failure(description=f"batch {work.batch} is not written for delivery: {problem}")


def bind(work: BatchWork, s2s: S2sFileSettings) -> None:
    if s2s.snapshot_options() is not None:
        bind_build(work.candidate, gate.manifest_sha256(work.outbox))
