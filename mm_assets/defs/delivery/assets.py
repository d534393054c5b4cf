"""Deliver a batch's S2S files to MediaMath exactly once, within the quotas, with receipts.

Gated by construction: whoever starts it (automation, the UI, the CLI), `upload_receipts`
sends only the files the build checks approved on this exact build, with these exact bytes
(`mm_assets/delivery/gate.py`). Automation requests it for a batch as soon as `s2s_files` has
a new build whose blocking checks passed.
"""

import dagster as dg

from mm_assets.clients.transport import OutgoingFile
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.metadata import byte_count, table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.quota.observations import quota_observation
from mm_assets.defs.resources import BatchStorage
from mm_assets.defs.s2s_build.assets import s2s_files
from mm_assets.delivery import gate
from mm_assets.delivery.deliver import DONE_STATUSES, Status, deliver_batch, utc_now

# A new build of the batch whose blocking checks (spec, manifest) passed is delivered with no
# command typed; the gate inside the asset holds for runs started any other way.
DELIVERY_CONDITION = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
)
# Statuses a person must look at: the receipt check fails with ERROR for them.
HARD_STATUSES = (Status.FAILED, Status.NEEDS_ATTENTION, Status.REFUSED, Status.NOT_APPROVED)

RECONCILE_LOG_ATTEMPTS = 2
RECEIPT_COLUMNS = [
    "name",
    "status",
    "transport",
    "remote_path",
    "bytes",
    "md5",
    "attempts",
    "uploaded_at",
    "not_before",
    "message",
]


def outgoing_files(storage: BatchStorage, batch: str) -> list[OutgoingFile]:
    # Resolved once: a rebuild swaps the outbox link (s2s_writer), and this run keeps reading
    # the build it started with.
    outbox = storage.outbox(batch).resolve()
    return [
        OutgoingFile(name=f.name, path=outbox / f.name, size=f.bytes, md5_hex=f.md5)
        for f in read_manifest(outbox)
    ]


@dg.asset(
    deps=[s2s_files],
    partitions_def=export_batches,
    group_name="delivery",
    kinds={"sftp", "s3"},
    automation_condition=DELIVERY_CONDITION,
    description="One receipt per file delivered to MediaMath (S2S-SFTP or CFT-PUT), each file "
    "sent at most once and only if the build checks approved its bytes; files over the hour's "
    "or day's quota (S2S-QUOTA) wait, visibly; failed uploads are retried with backoff.",
)
def upload_receipts(
    context: dg.AssetExecutionContext,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
) -> dg.MaterializeResult:
    batch = context.partition_key
    files = outgoing_files(storage, batch)
    # Hashed here, just before the sends: what leaves is what the checks approved.
    not_approved = gate.refusals(storage.outbox(batch), files)
    with delivery.session() as (transport, ledger):
        report = deliver_batch(
            files,
            batch,
            transport,
            ledger,
            delivery.quota_limits(),
            run_id=context.run_id,
            dry_run=delivery.is_dry_run,
            not_approved=not_approved,
            retry_policy=delivery.retry_policy(),
            # Asked about files the ledger cannot vouch for (a lost ledger, a killed run) and
            # for today's quota use; few attempts: an unreachable log only narrows what is known.
            processing_log=processing_log.client(delivery, max_attempts=RECONCILE_LOG_ATTEMPTS),
        )
    # The quota over time (mediamath_quota's Plots tab): one observation per delivery.
    context.log_event(quota_observation(delivery, storage, utc_now(), "upload_receipts"))
    for entry in report.entries:
        if entry.status not in DONE_STATUSES or entry.message:
            context.log.warning(f"{entry.name}: {entry.status} {entry.message}".rstrip())
    usage = report.usage.as_dict()
    next_time = report.next_not_before
    # Present only when something waits: an empty value would show as an empty cell.
    waiting = {"next_send_after": next_time.isoformat()} if next_time else {}
    return dg.MaterializeResult(
        metadata={
            # Files, not rows: `dagster/row_count` would label them "Row count".
            "files": len(report.entries),
            "files_with_receipt": sum(report.counts[str(s)] for s in DONE_STATUSES),
            "transport": report.transport,
            "dry_run": report.dry_run,
            "all_delivered": report.done,
            **{f"files_{status}": count for status, count in report.counts.items() if count},
            "names_by_status": dg.MetadataValue.json(
                {
                    str(s): [e.name for e in report.entries if e.status is s]
                    for s in Status
                    if report.counts[str(s)]
                }
            ),
            **waiting,
            "receipts": table(RECEIPT_COLUMNS, report.to_rows()),
            "quota": dg.MetadataValue.json(usage),
            "quota_files_left_this_hour": usage["files_left_this_hour"],
            "quota_bytes_left_today": byte_count(report.usage.bytes_left_today),
        }
    )


@dg.asset_check(
    asset=upload_receipts,
    partitions_def=export_batches,
    description="Every built file of the batch has a receipt (deferred files warn "
    "until a later run sends them; failures and files needing attention fail).",
)
def every_file_has_a_receipt(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage, delivery: MediaMathDelivery
) -> dg.AssetCheckResult:
    batch = context.partition_key
    files = outgoing_files(storage, batch)
    with delivery.get_ledger() as ledger:
        receipts = {r.file_name: r.md5 for r in ledger.receipts(batch)}
    # A receipt for other bytes under the same name does not cover this file.
    missing = [f.name for f in files if receipts.get(f.name) != f.md5_hex]
    names = [f.name for f in files]
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upload_receipts.key, asset_partitions=[batch]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    metadata = materialization.metadata if materialization else {}
    hard = sum(int(metadata[f"files_{s}"].value) for s in HARD_STATUSES if f"files_{s}" in metadata)
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR if hard else dg.AssetCheckSeverity.WARN,
        metadata={
            "files": len(names),
            "with_receipt": len(names) - len(missing),
            "without_receipt": dg.MetadataValue.json(missing),
        },
    )
