"""Send deferred files once their quota window opens (S2S-QUOTA), and retry failed uploads once
their backoff is over: both show as the latest delivery's `next_send_after`."""

from datetime import UTC, datetime

import dagster as dg

from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.report.assets import batch_report

deliver_s2s_files_job = dg.define_asset_job(
    "deliver_s2s_files",
    # The batch report follows every delivery, so the UI shows the run's outcome per batch.
    selection=dg.AssetSelection.assets(upload_receipts, batch_report),
    partitions_def=export_batches,
    description="Deliver a built batch to MediaMath (idempotent: files with a receipt are "
    "skipped).",
)


@dg.sensor(
    job=deliver_s2s_files_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def deferred_deliveries(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Re-run `upload_receipts` for each batch whose latest delivery deferred files (quota) or
    scheduled a retry (transient failure) whose `next_send_after` has passed; the run key
    makes one run per deferral."""
    now = datetime.now(UTC)
    requests = []
    for batch in context.instance.get_dynamic_partitions(export_batches.name):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=upload_receipts.key, asset_partitions=[batch]), limit=1
        ).records
        if not records or records[0].asset_materialization is None:
            continue
        after = records[0].asset_materialization.metadata.get("next_send_after")
        if after and after.value and datetime.fromisoformat(after.value) <= now:
            requests.append(dg.RunRequest(partition_key=batch, run_key=f"{batch}@{after.value}"))
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else dg.SkipReason("no deferred file is due"),
    )
