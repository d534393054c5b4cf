"""Re-ask MediaMath about pending files and record the answers as check evaluations (S2S-LOG).

The sensor never re-runs `upload_receipts`: it reports `every_file_accepted_by_mediamath`
evaluations itself (`SensorResult(asset_events=[AssetCheckEvaluation])`, which the daemon stores
with `report_runless_asset_event`). It only reports a batch when one of its files changed, so a
batch waiting for hours does not flood the event log.
"""

import time

import dagster as dg

from mm_assets.core.clock import utc_now
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.processing_log.checks import evaluation_for
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.report.assets import refreshed_report
from mm_assets.defs.resources import BatchStorage
from mm_assets.processing_log.polling import batch_verdict, poll_files

# Each tick is cheap when nothing is due (one indexed query); the per-file spacing comes from
# the resource's poll_interval, not from this.
TICK_SECONDS = 30
# Stay well inside Dagster's sensor evaluation timeout (60 s by default).
TICK_BUDGET_SECONDS = 40.0
FILES_PER_TICK = 100


@dg.sensor(
    name="processing_log_poller",
    minimum_interval_seconds=TICK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Polls MediaMath's processing log for delivered files still pending and "
    "records every_file_accepted_by_mediamath evaluations; a file with no answer by the "
    "deadline is reported timed out and no longer polled.",
)
def processing_log_poller(
    context: dg.SensorEvaluationContext,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
    storage: BatchStorage,
) -> dg.SensorResult:
    settings = processing_log.poll_settings()
    started = time.monotonic()
    with processing_log.store(delivery) as store:
        due = store.due(utc_now(), limit=FILES_PER_TICK)
        if not due:
            return dg.SensorResult(skip_reason="no pending file is due for a poll")
        with processing_log.client(delivery) as client:
            # ProcessingLogCredentialsError propagates: the tick fails with its message, which
            # is where an operator looks when every file would fail the same way.
            changed = poll_files(
                store,
                client,
                due,
                utc_now,
                settings,
                give_up_at=started + TICK_BUDGET_SECONDS,
                clock=time.monotonic,
            )
        now = utc_now()
        events = [
            evaluation_for(context.instance, batch, batch_verdict(store.batch(batch), now), now)
            for batch in sorted(changed)
        ]
    for event in events:
        context.log.info(f"{event.partition}: {event.description}")
    if not events:
        return dg.SensorResult(skip_reason=f"polled {len(due)} file(s); no new answer")
    # Each changed batch's report follows its new verdict (batch_report in the UI).
    reports = [
        refreshed_report(str(e.partition), storage, delivery, processing_log, now) for e in events
    ]
    return dg.SensorResult(asset_events=[*events, *reports])
