"""`merged_segment_loads / snapshot_removals_within_threshold`: snapshot mode's safety check.

Blocking: a snapshot that would remove more than the threshold share of a family's held members
(`MM_SNAPSHOT_REMOVAL_THRESHOLD`, default 20 %), or a batch that is incomplete (a file could not
be read: the same report `batch_is_complete` judges), is not written and not delivered, until a
person approves it (`mm-assets approve-snapshot BATCH`); the approval shows in the check's
metadata. Its verdict is recorded on the diff itself, and `s2s_files` writes only a released
diff, so a blocked snapshot cannot leave however the build or delivery is started.
"""

import dagster as dg

from mm_assets.core.audience_state import Candidate, snapshot_approval
from mm_assets.core.batch_work import ReadSummary
from mm_assets.core.snapshot_diff import families_over_threshold, record_release
from mm_assets.defs.metadata import table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build.assets import merged_segment_loads
from mm_assets.defs.snapshot.build import FAMILY_COLUMNS, family_rows

CHECK_NAME = "snapshot_removals_within_threshold"


@dg.asset_check(
    asset=merged_segment_loads,
    name=CHECK_NAME,
    blocking=True,
    partitions_def=export_batches,
    description="Snapshot mode: no family loses more than the threshold share of its held "
    "members (MM_SNAPSHOT_REMOVAL_THRESHOLD) and the batch is complete; otherwise nothing of "
    "it is written or delivered until approved (mm-assets approve-snapshot BATCH). Passes in "
    "delta mode.",
)
def snapshot_removals_within_threshold(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.AssetCheckResult:
    options = s2s.snapshot_options()
    if options is None:
        return dg.AssetCheckResult(
            passed=True, description="delta mode: nothing is diffed", metadata={"mode": "delta"}
        )
    work = storage.work_for(context.partition_key)
    batch = work.batch
    candidate = Candidate.load(work.candidate)
    over = families_over_threshold(candidate, options.removal_threshold)
    unreadable = work.load(ReadSummary).unreadable
    problems = [
        f"family {key} would lose {candidate.families[key]['removals']} of "
        f"{candidate.families[key]['held']} held members"
        for key in over
    ]
    if unreadable and not s2s.accepts_partial_batches():
        problems.append(f"the batch is incomplete: {len(unreadable)} file(s) could not be read")
    approval = snapshot_approval(options.state_dir, batch)
    passed = not problems or approval is not None
    summary = "; ".join(problems)
    record_release(candidate, passed=passed, summary=summary)
    if problems and approval:
        description = f"approved by {approval['approved_by']}: {summary}"
    elif problems:
        description = f"blocked: {summary}; approve with: mm-assets approve-snapshot {batch}"
    else:
        description = f"every family within {options.removal_threshold:.0%} removals"
    return dg.AssetCheckResult(
        passed=passed,
        description=description,
        metadata={
            "removal_threshold": options.removal_threshold,
            "families_over_threshold": dg.MetadataValue.json(over),
            "files_unreadable": len(unreadable),
            "approval": dg.MetadataValue.json(approval or {}),
            "families": table(FAMILY_COLUMNS, family_rows(candidate)),
        },
    )
