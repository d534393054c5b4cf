"""`moloco_export_objects`: one export batch, staged where `raw_audiences` reads it."""

import os

import dagster as dg

from mm_assets.clients.moloco_export.errors import MolocoExportError
from mm_assets.clients.redaction import redact
from mm_assets.defs.metadata import byte_count, table
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage

MAX_FILES_SHOWN = 200


def source_kinds(method: str) -> set[str]:
    """The asset's kind tags for the configured way in: `local` reads a folder, every other
    method reads a GCS bucket (directly, through its S3-compatible API, or a transfer copy)."""
    return {"filesystem"} if method == "local" else {"gcs"}


@dg.asset(
    name="moloco_export_objects",
    partitions_def=export_batches,
    group_name="s2s_build",
    # MCM-DKR: one key-rotation holder at a time across runs (the file lock in the client
    # covers sensors and other processes too). Set the pool's limit to 1 on the instance.
    pool="moloco_key_rotation",
    # Kinds are fixed when the code location loads, as the method is (default_moloco_source).
    kinds=source_kinds(os.environ.get("MM_MOLOCO_METHOD", "local")),
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
    files = sorted(report.files.items())[:MAX_FILES_SHOWN]
    metadata: dict[str, object] = {
        "method": report.method,
        "source": access.location,
        "objects": report.objects,
        "bytes": byte_count(report.bytes_total),
        "batch_version": report.version,
    }
    if report.method == "local":
        # Read in place: nothing is staged, so no download or skip counts to show.
        metadata["folder"] = dg.MetadataValue.path(str(storage.batch_dir(batch)))
        metadata["files"] = table(
            ["file", "bytes", "version"], [[n, f["bytes"], f["version"]] for n, f in files]
        )
    else:
        metadata.update(
            {
                "objects_downloaded": len(report.downloaded),
                "bytes_downloaded": byte_count(report.bytes_downloaded),
                "skipped_as_unchanged": len(report.skipped_unchanged),
                "removed_as_deleted": len(report.removed),
                "staged_in": dg.MetadataValue.path(str(storage.batch_dir(batch))),
                "files": table(
                    ["file", "bytes", "version", "staged_now"],
                    [[n, f["bytes"], f["version"], n in report.downloaded] for n, f in files],
                ),
            }
        )
    metadata.update({k: v for k, v in access.details.items()})
    return dg.MaterializeResult(metadata=metadata)  # type: ignore[arg-type]
