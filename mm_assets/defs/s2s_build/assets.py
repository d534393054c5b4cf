"""Build MediaMath S2S files for one export batch: read, merge, write (DESIGN.md asset graph)."""

import time

import dagster as dg

from mm_assets.core.batch_work import MergeSummary, ReadSummary, WriteSummary
from mm_assets.core.export_reader import read_export_batch
from mm_assets.core.s2s_writer import batch_build_lock, write_s2s_files
from mm_assets.defs.metadata import byte_count, table
from mm_assets.defs.moloco_source.assets import moloco_export_objects
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.snapshot import build as snapshot

QUARANTINE_PREVIEW_COLUMNS = [
    "file",
    "line",
    "reason",
    "user_id",
    "segment",
    "timestamp",
    "client",
    "device_type",
    "raw",
]


@dg.asset(
    deps=[moloco_export_objects],
    partitions_def=export_batches,
    group_name="s2s_build",
    kinds={"duckdb", "parquet"},
    description="The batch's rows checked against the input contract and normalised; every row "
    "that cannot be used is quarantined with its file, line and reason.",
)
def raw_audiences(
    context: dg.AssetExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.MaterializeResult:
    work = storage.work_for(context.partition_key)
    # Each build step holds the batch's build lock (s2s_files' writer holds it too): a second
    # build of the batch started alongside (UI next to the CLI) refuses instead of replacing
    # this one's work under it.
    started = time.perf_counter()
    with batch_build_lock(work.outbox_root, work.batch):
        report = read_export_batch(
            work.export, work.read_dir, s2s.build_settings(), buckets=snapshot.read_buckets(s2s)
        )
    # The core's own time (the benchmark's "read" phase; the step's is in the run).
    work.save(ReadSummary.of(report, time.perf_counter() - started))
    for issue in report.file_issues:
        context.log.warning(f"{issue.file}: {issue.message}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": report.rows_accepted,
            "rows_read": report.rows_read,
            "rows_quarantined": report.rows_quarantined,
            "files_read": len(report.files),
            "files_unusable": len(report.file_issues),
            "files_unreadable": sum(i.blocks_batch for i in report.file_issues),
            "quarantine_reasons": table(
                ["reason", "rows"], list(report.quarantine_reasons.items())
            ),
            "quarantine_preview": table(QUARANTINE_PREVIEW_COLUMNS, report.quarantine_preview),
            "unusable_files": table(
                ["file", "problem", "batch_incomplete"],
                [[i.file, i.message, i.blocks_batch] for i in report.file_issues],
            ),
            "files": table(
                ["file", "rows_seen", "accepted", "quarantined"],
                [
                    [name, f["rows"], f["accepted"], f["quarantined"]]
                    for name, f in report.files.items()
                ],
            ),
            "client_name_collisions": dg.MetadataValue.json(report.client_collisions),
            "user_buckets": report.buckets,
            "quarantine_table": dg.MetadataValue.path(str(report.quarantine_path)),
        }
    )


@dg.asset(
    deps=[raw_audiences],
    partitions_def=export_batches,
    group_name="s2s_build",
    kinds={"duckdb", "parquet"},
    description="One S2S line per user and file: repeated loads folded, conflicting loads "
    "resolved (removal, then add-now, then the latest timestamp wins), long users continued.",
)
def merged_segment_loads(
    context: dg.AssetExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.MaterializeResult:
    work = storage.work_for(context.partition_key)
    started = time.perf_counter()
    with batch_build_lock(work.outbox_root, work.batch):
        # Delta mode: the merge as it was. Snapshot mode: the diff against the held state.
        report, snapshot_metadata = snapshot.merge(work, s2s)
    summary = MergeSummary.of(report, time.perf_counter() - started)
    work.save(summary)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": report.users,
            "loads_in": report.rows_in,
            "loads_out": report.loads_out,
            "repeats_folded": report.repeats_folded,
            "conflicting_loads": report.conflicts,
            "users_continued_on_more_lines": report.continued_users,
            "user_buckets": report.buckets,
            "file_families": table(
                ["agency", "ids", "users", "lines", "loads", "text_bytes"], summary.families
            ),
            **snapshot_metadata,
        }
    )


@dg.asset(
    deps=[merged_segment_loads],
    partitions_def=export_batches,
    group_name="s2s_build",
    kinds={"gzip"},
    description="Gzipped S2S files in the outbox, one per agency plus one global, cookie and "
    "mobile apart, split under the size limit, with a manifest (name, bytes, md5).",
)
def s2s_files(
    context: dg.AssetExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.MaterializeResult:
    work = storage.work_for(context.partition_key)
    started = time.perf_counter()
    snapshot.require_release(work, s2s)  # snapshot mode: only a released diff
    built = write_s2s_files(work.lines, work.outbox, s2s.build_settings(), batch=work.batch)
    work.save(WriteSummary.of(built, time.perf_counter() - started))
    snapshot.bind(work, s2s)
    rows = [
        [
            f.name,
            f.agency or "(global)",
            int(f.mobile),
            int(f.hash_segments),
            f.users,
            f.loads,
            f.bytes,
            f.md5,
        ]
        for f in built
    ]
    return dg.MaterializeResult(
        metadata={
            # Files, not rows: `dagster/row_count` would label them "Row count".
            "files": len(built),
            "gz_bytes": byte_count(sum(f.bytes for f in built)),
            "users": sum(f.users for f in built),
            "loads": sum(f.loads for f in built),
            "manifest": table(
                ["name", "agency", "mobile", "hashed", "users", "loads", "bytes", "md5"], rows
            ),
            "outbox": dg.MetadataValue.path(str(work.outbox)),
        }
    )
