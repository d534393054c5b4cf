"""`moloco_export_objects`: one export batch, staged where `raw_audiences` reads it."""

import dagster as dg

from mm_assets.clients.moloco_export.errors import MolocoExportError, redact
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage
from mm_assets.defs.s2s_build.metadata import md_table

MAX_FILES_SHOWN = 200


@dg.asset(
    name="moloco_export_objects",
    partitions_def=export_batches,
    group_name="s2s_build",
    # MCM-DKR: one key-rotation holder at a time across runs (the file lock in the client
    # covers sensors and other processes too). Set the pool's limit to 1 on the instance.
    pool="moloco_key_rotation",
    kinds={"gcs"},
    description="Raw audience files of one Moloco MCM export batch (CSV, JSONL or Parquet, "
    "optionally gzipped): with MM_MOLOCO_METHOD=local the batch folder as it is; otherwise the "
    "batch's objects staged from the export bucket (streamed, checksummed, unchanged objects "
    "skipped) into the export folder, where `raw_audiences` reads them.",
)
def moloco_export_objects(
    context: dg.AssetExecutionContext, moloco_source: MolocoExportSource, storage: BatchStorage
) -> dg.MaterializeResult:
    batch = context.partition_key
    try:
        report, access = moloco_source.stage(
            batch, storage.batch_dir(batch), storage.export_dir, log=context.log.info
        )
    except MolocoExportError as exc:
        # Client messages are already free of secrets; the redaction is a second net.
        raise dg.Failure(description=redact(str(exc), moloco_source.secrets())) from None
    if report.objects == 0:
        raise dg.Failure(description=f"batch {batch!r} has no data objects in {access.location}")
    files = sorted(report.files.items())
    metadata: dict[str, object] = {
        "method": report.method,
        "source": access.location,
        "objects": report.objects,
        "bytes": dg.MetadataValue.int(report.bytes_total),
        "objects_downloaded": len(report.downloaded),
        "bytes_downloaded": report.bytes_downloaded,
        "skipped_as_unchanged": len(report.skipped_unchanged),
        "removed_as_deleted": len(report.removed),
        "batch_version": report.version,
        "staged_in": dg.MetadataValue.path(str(storage.batch_dir(batch))),
        "files": dg.MetadataValue.md(
            md_table(
                ["file", "bytes", "version", "staged now"],
                [
                    [name, f["bytes"], f["version"], "yes" if name in report.downloaded else "no"]
                    for name, f in files[:MAX_FILES_SHOWN]
                ],
            )
        ),
    }
    metadata.update({k: v for k, v in access.details.items()})
    return dg.MaterializeResult(metadata=metadata)  # type: ignore[arg-type]
