"""`mediamath_audience_state`: what MediaMath holds per client and cookie/mobile family, advanced
by each snapshot batch for the families MediaMath accepted (every file of the family `OK` in
its processing log), kept as it was for the others.

It reads the verdicts the processing-log checks record in the status store; the
`advance_audience_state` sensor requests it once every file of the pending batch has a final
verdict (a sensor rather than eager automation: the verdicts arrive as check evaluations,
not as materialisations an automation condition could wait on). It is idempotent: after a crash
a re-run applies the batch's decision once.
"""

from collections import defaultdict

import dagster as dg

from mm_assets.core.audience_state import AudienceState, SnapshotOrderError, family_key
from mm_assets.core.clock import utc_now
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.core.snapshot_diff import candidate_for_build
from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.metadata import table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.delivery import gate
from mm_assets.processing_log.status_store import FileState, FileStatus


def family_verdicts(
    storage: BatchStorage, batch: str, statuses: list[FileStatus]
) -> tuple[dict[str, list[str]], list[str]]:
    """({family key: files not accepted}, files still without a final verdict) for the
    batch's current build."""
    known = {s.file_name: s for s in statuses}
    not_accepted: dict[str, list[str]] = defaultdict(list)
    undecided = []
    for built in read_manifest(storage.outbox(batch)):
        status = known.get(built.name)
        if status is None or not status.final:
            undecided.append(built.name)
        elif status.status is not FileState.ACCEPTED:
            not_accepted[family_key(built.agency, built.mobile)].append(built.name)
    return dict(not_accepted), undecided


@dg.asset(
    deps=[upload_receipts],
    partitions_def=export_batches,
    group_name="snapshot",
    kinds={"parquet"},
    description="Snapshot mode: the (user, segment) members MediaMath holds per client and "
    "cookie/mobile family. A batch advances the families whose every file MediaMath accepted; "
    "the others keep their state, so the next snapshot's diff re-sends what was not taken.",
)
def mediamath_audience_state(
    context: dg.AssetExecutionContext,
    storage: BatchStorage,
    s2s: S2sFileSettings,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
) -> dg.MaterializeResult:
    options = s2s.snapshot_options()
    if options is None:
        raise dg.Failure(description="MM_EXPORT_MODE is delta: there is no held audience state")
    work = storage.work_for(context.partition_key)
    batch = work.batch
    state = AudienceState(options.state_dir)
    try:
        candidate = candidate_for_build(work.candidate, gate.manifest_sha256(work.outbox))
    except (OSError, ValueError) as exc:
        raise dg.Failure(description=f"batch {batch}: no snapshot build to apply ({exc})") from None
    with processing_log.store(delivery) as store:
        not_accepted, undecided = family_verdicts(storage, batch, store.batch(batch))
    if undecided:
        raise dg.Failure(
            description=f"waiting for MediaMath's verdict on {len(undecided)} file(s) of batch "
            f"{batch} ({', '.join(undecided[:5])}): the held state is unchanged"
        )
    families = set(candidate.families) | set(state.pointer().families)
    try:
        decision = state.promote(
            candidate, families - set(not_accepted), decided_at=utc_now().isoformat()
        )
    except SnapshotOrderError as exc:
        raise dg.Failure(description=str(exc)) from None
    pointer = decision.pointer
    rows = [
        [
            key.rsplit("|", 1)[0] or "(global)",
            "mobile" if key.endswith("|1") else "cookie",
            pointer.families.get(key, 0),
            "advanced" if key in decision.advanced else "kept",
            ", ".join(not_accepted.get(key, [])),
        ]
        for key in sorted(families)
    ]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": pointer.members,
            "members_held": pointer.members,
            "last_advanced_batch": pointer.last_advanced_batch or "",
            "families_advanced": len(decision.advanced),
            "families_kept": len(decision.kept),
            "already_applied": decision.already_applied,
            "families": table(
                ["agency", "ids", "members_held", "this_batch", "not_accepted"], rows
            ),
            "state_folder": dg.MetadataValue.path(str(options.state_dir)),
        }
    )


advance_audience_state_job = dg.define_asset_job(
    "advance_audience_state",
    selection=dg.AssetSelection.assets(mediamath_audience_state),
    partitions_def=export_batches,
    description="Apply MediaMath's verdicts on a snapshot batch to the held audience state.",
)
