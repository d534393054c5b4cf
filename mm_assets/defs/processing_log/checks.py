"""`upload_receipts / every_file_accepted_by_mediamath`: MediaMath's verdict (S2S-LOG) per batch.

One check per batch rather than one per file: the files of a partition are only known at run
time (dynamic partitions, a rebuild renames every file), while asset checks are declared with
the code. The check's metadata carries the per-file table instead.

It runs with every `upload_receipts` materialisation: it registers the batch's files in the
status store, asks MediaMath once about those still pending, and reports. The
`processing_log_poller` sensor re-asks later and records new evaluations of this same check.
"""

import json
from datetime import datetime
from typing import Any

import dagster as dg

# Not re-exported by `dagster`; the evaluation's own module is the stable home in 1.13.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from mm_assets.clients.mediamath_processing_log import ProcessingLogCredentialsError
from mm_assets.core.clock import utc_now
from mm_assets.core.s2s_writer import MANIFEST, read_manifest
from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.metadata import table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.resources import BatchStorage
from mm_assets.processing_log.polling import (
    TABLE_COLUMNS,
    BatchVerdict,
    batch_verdict,
    poll_files,
)
from mm_assets.processing_log.status_store import FileState, StatusStore

CHECK_NAME = "every_file_accepted_by_mediamath"
# Raw records in metadata are for reading, not archiving (the store keeps them all).
_RAW_RECORDS_PER_FILE = 5


def verdict_metadata(verdict: BatchVerdict) -> dict[str, Any]:
    counts = verdict.counts
    return {
        "files": len(verdict.current),
        **{f"files_{state}": counts.get(str(state), 0) for state in FileState},
        "longest_wait_minutes": round((verdict.longest_wait_seconds or 0) / 60, 1),
        "processing_log": table(TABLE_COLUMNS, verdict.rows),
        "mediamath_records": dg.MetadataValue.json(
            {r.file_name: r.raw_records[-_RAW_RECORDS_PER_FILE:] for r in verdict.current}
        ),
    }


def verdict_severity(verdict: BatchVerdict) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if verdict.error else dg.AssetCheckSeverity.WARN


def register_batch(
    store: StatusStore, storage: BatchStorage, delivery: MediaMathDelivery, batch: str
) -> None:
    """Track every file of the batch's current build: delivered ones (with a receipt) as
    pending until MediaMath answers, the others as not delivered."""
    outbox = storage.outbox(batch)
    if not (outbox / MANIFEST).exists():
        return
    built_at = str(json.loads((outbox / MANIFEST).read_text()).get("built_at", ""))
    with delivery.get_ledger() as ledger:
        receipts = {r.file_name: r for r in ledger.receipts(batch)}
    for built in read_manifest(outbox):
        receipt = receipts.get(built.name)
        store.register(
            built.name,
            batch,
            built_at,
            receipt.transport if receipt else delivery.transport_label(),
            receipt.bytes if receipt else built.bytes,
            receipt.uploaded_at if receipt else None,
            None,
        )


@dg.asset_check(
    asset=upload_receipts,
    name=CHECK_NAME,
    partitions_def=export_batches,
    description="MediaMath's processing log (S2S-LOG) said OK for every delivered file of the "
    "batch. Fails (ERROR) with MediaMath's message when a file is rejected or gets no answer "
    "before the deadline; warns while files wait. Re-evaluated by the processing_log_poller "
    "sensor.",
)
def every_file_accepted_by_mediamath(
    context: dg.AssetCheckExecutionContext,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    processing_log: MediaMathProcessingLog,
) -> dg.AssetCheckResult:
    batch = context.partition_key
    settings = processing_log.poll_settings()
    problem = ""
    with processing_log.store(delivery) as store:
        register_batch(store, storage, delivery, batch)
        pending = [r for r in store.batch(batch) if r.status is FileState.PENDING]
        if pending and not delivery.is_dry_run:
            try:
                with processing_log.client(delivery) as client:
                    # A (re-)run of the check is "ask now": every pending file, not only the due.
                    poll_files(store, client, pending, utc_now, settings)
            except ProcessingLogCredentialsError as exc:
                problem = str(exc)
        verdict = batch_verdict(store.batch(batch), utc_now())
    metadata = verdict_metadata(verdict)
    if problem:
        context.log.error(problem)
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=problem,
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=verdict_severity(verdict),
        description=verdict.description,
        metadata=metadata,
    )


def evaluation_for(
    instance: dg.DagsterInstance, batch: str, verdict: BatchVerdict, now: datetime
) -> dg.AssetCheckEvaluation:
    """The check's result as an event a sensor can report, tied to the batch's latest
    `upload_receipts` materialisation so the UI shows it against that run."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upload_receipts.key, asset_partitions=[batch]), limit=1
    ).records
    target = _target(records[0]) if records else None
    return dg.AssetCheckEvaluation(
        asset_key=upload_receipts.key,
        check_name=CHECK_NAME,
        passed=verdict.passed,
        severity=verdict_severity(verdict),
        description=verdict.description,
        metadata={
            **verdict_metadata(verdict),
            "evaluated_by": "processing_log_poller",
            "evaluated_at": now.isoformat(),
        },
        target_materialization_data=target,
        partition=batch,
    )


def _target(record: dg.EventLogRecord) -> AssetCheckEvaluationTargetMaterializationData:
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )
