"""`batch_report`: one place per batch answering "did my audience get to MediaMath?".

An asset partitioned like the rest, downstream of `upload_receipts`: materialised by every
delivery run (it is in `deliver_s2s_files`) and by automation (`eager`), and refreshed by the
`processing_log_poller` sensor whenever MediaMath's verdicts for the batch change (it records
a materialisation with the new report beside the check evaluation). Its metadata is the report
(`mm_assets/reporting/batch_report.py`) as tables; `mm-assets status` prints the same report.
"""

from datetime import datetime
from typing import Any

import dagster as dg

from mm_assets.core.clock import utc_now
from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.metadata import byte_count, table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log.checks import register_batch
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.resources import BatchStorage
from mm_assets.reporting.batch_report import BatchReport, Delivery, assemble_batch_report

FILE_COLUMNS = [
    "name",
    "client",
    "ids",
    "users",
    "loads",
    "bytes",
    "delivery",
    "transport",
    "sent_at",
    "not_before",
    "mediamath",
    "mediamath_message",
    "waited",
    "note",
]


def report_for(
    batch: str,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
    now: datetime,
) -> BatchReport:
    with delivery.get_ledger() as ledger, processing_log.store(delivery) as store:
        # Idempotent; a delivered file is `pending` from its receipt on, even when this step
        # runs before the processing-log check of the same run.
        register_batch(store, storage, delivery, batch)
        return assemble_batch_report(
            storage.work_for(batch),
            ledger=ledger,
            store=store,
            limits=delivery.quota_limits(),
            now=now,
        )


def report_metadata(report: BatchReport) -> dict[str, Any]:
    q = report.quota
    metadata: dict[str, Any] = {
        "summary": dg.MetadataValue.text(report.headline),
        "mediamath_verdict": dg.MetadataValue.text(report.verdict),
        "accepted_by_mediamath": report.accepted,
        "files": len(report.files),
        "files_sent": report.count(Delivery.SENT),
        "files_not_sent": len(report.files) - report.count(Delivery.SENT),
        "gz_bytes": byte_count(report.gz_bytes),
        "users": report.users,
        "files_table": table(FILE_COLUMNS, [f.__dict__ for f in report.files]),
        "families": table(
            ["client", "ids", "users", "lines", "loads"],
            [[f.client, f.ids, f.users, f.lines, f.loads] for f in report.families],
        ),
        "quarantine_reasons": table(["reason", "rows"], list(report.quarantine_reasons.items())),
        "input_files": table(
            ["file", "rows_seen", "accepted", "quarantined"],
            [
                [name, c["rows"], c["accepted"], c["quarantined"]]
                for name, c in report.input_files.items()
            ],
        ),
        "quota_files_this_hour": q.files_this_hour,
        "quota_files_left_this_hour": q.files_left_this_hour,
        "quota_bytes_today": byte_count(q.bytes_today),
        "quota_bytes_left_today": byte_count(q.bytes_left_today),
        "reported_at": dg.MetadataValue.timestamp(report.now),
    }
    if report.rows_read is not None:
        metadata.update(
            rows_read=report.rows_read,
            rows_accepted=report.rows_accepted,
            rows_quarantined=report.rows_quarantined,
        )
    if report.built_at is not None:
        metadata["built_at"] = dg.MetadataValue.timestamp(report.built_at)
    if report.next_send_after is not None:
        metadata["next_send_after"] = dg.MetadataValue.timestamp(report.next_send_after)
    if report.superseded:
        metadata["superseded_files"] = len(report.superseded)
    return metadata


@dg.asset(
    deps=[upload_receipts],
    partitions_def=export_batches,
    group_name="delivery",
    kinds={"python"},
    automation_condition=dg.AutomationCondition.eager(),
    description="The batch report: rows read and quarantined (by reason), users and loads per "
    "client and cookie/mobile family, every file with its bytes, when and how it was sent, "
    "MediaMath's verdict and message, the quota used and left, and what waits until when. "
    "Refreshed by every delivery and whenever MediaMath's verdicts change.",
)
def batch_report(
    context: dg.AssetExecutionContext,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
) -> dg.MaterializeResult:
    report = report_for(context.partition_key, storage, delivery, processing_log, utc_now())
    return dg.MaterializeResult(metadata=report_metadata(report))


def refreshed_report(
    batch: str,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
    now: datetime,
) -> dg.AssetMaterialization:
    """The batch's report as a runless materialisation, for a sensor that saw a verdict
    change (the report's facts live in the stores, so no run is needed to refresh it)."""
    report = report_for(batch, storage, delivery, processing_log, now)
    return dg.AssetMaterialization(
        asset_key=batch_report.key,
        partition=batch,
        metadata={**report_metadata(report), "refreshed_by": "processing_log_poller"},
    )
