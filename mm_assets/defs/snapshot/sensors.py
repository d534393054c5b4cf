"""`advance_audience_state`: snapshot mode's order, with nobody watching.

Each tick looks at one batch, the pending snapshot (the state allows one at a time): once every
file of its delivered build has MediaMath's final verdict it requests `mediamath_audience_state`
for it; until then its skip reason says what it waits for. With no batch pending, it re-requests
the build of the oldest batch whose diff had to wait. No remote call: it reads the state folder,
the outbox and the status store the processing-log poller fills.
"""

import dagster as dg

from mm_assets.core.audience_state import AudienceState, waiting_batches
from mm_assets.core.snapshot_diff import candidate_for_build
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build.jobs import build_s2s_files_job
from mm_assets.defs.snapshot.assets import advance_audience_state_job, family_verdicts
from mm_assets.defs.snapshot.checks import CHECK_NAME
from mm_assets.delivery import gate


@dg.sensor(
    name="advance_audience_state",
    jobs=[advance_audience_state_job, build_s2s_files_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Snapshot mode: applies MediaMath's verdicts on the pending snapshot batch to "
    "the held audience state, then re-requests a batch that waited for it.",
)
def advance_audience_state(
    context: dg.SensorEvaluationContext,
    storage: BatchStorage,
    s2s: S2sFileSettings,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
) -> dg.RunRequest | dg.SkipReason:
    options = s2s.snapshot_options()
    if options is None:
        return dg.SkipReason("MM_EXPORT_MODE is delta: there is no held audience state")
    pointer = AudienceState(options.state_dir).pointer()
    batch = pointer.pending_batch
    if batch is None:
        waiting = waiting_batches(options.state_dir)
        if not waiting:
            return dg.SkipReason("no snapshot batch waits for MediaMath's verdict")
        return dg.RunRequest(
            job_name=build_s2s_files_job.name,
            partition_key=waiting[0],
            run_key=f"snapshot-after:{pointer.last_decided_batch}:{waiting[0]}",
        )
    work = storage.work_for(batch)
    digest = gate.manifest_sha256(work.outbox)
    try:
        candidate_for_build(work.candidate, digest)
    except (OSError, ValueError):
        return dg.SkipReason(
            f"batch {batch} was diffed but not written for delivery: if check {CHECK_NAME} "
            f"blocked it, approve it (mm-assets approve-snapshot {batch}) and rebuild it"
        )
    with processing_log.store(delivery) as store:
        _, undecided = family_verdicts(storage, batch, store.batch(batch))
    if undecided:
        return dg.SkipReason(
            f"waiting for MediaMath's verdict on {len(undecided)} file(s) of batch {batch}"
        )
    return dg.RunRequest(
        job_name=advance_audience_state_job.name,
        partition_key=batch,
        run_key=f"audience-state:{batch}:{digest}",
    )
