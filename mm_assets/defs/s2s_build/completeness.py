"""Is the batch complete? A file that may hold rows we could not read (corrupt or truncated
gzip, broken Parquet, a refused link, an unsupported type) makes the batch incomplete: blocking,
so a partial audience is never built and delivered unnoticed. An empty file is reported but is
no failure. `MM_ACCEPT_PARTIAL_BATCHES=true` accepts partial batches deliberately (the check
then warns instead of blocking)."""

import dagster as dg

from mm_assets.core.batch_work import ReadSummary
from mm_assets.defs.metadata import table
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build.assets import raw_audiences

CHECK_NAME = "batch_is_complete"


@dg.asset_check(
    asset=raw_audiences,
    name=CHECK_NAME,
    blocking=True,
    partitions_def=export_batches,
    description="Every data file of the batch was read: none is unusable (corrupt, truncated, "
    "a refused link). Empty files are reported, not failed. MM_ACCEPT_PARTIAL_BATCHES=true "
    "turns a failure into a warning.",
)
def batch_is_complete(
    context: dg.AssetCheckExecutionContext, storage: BatchStorage, s2s: S2sFileSettings
) -> dg.AssetCheckResult:
    report = storage.work_for(context.partition_key).load(ReadSummary)
    lost = [[f.file, f.problem] for f in report.unreadable]
    empty = [[f.file, f.problem] for f in report.unusable_files if not f.blocks_batch]
    accept_partial = s2s.accepts_partial_batches()
    return dg.AssetCheckResult(
        passed=not lost,
        severity=dg.AssetCheckSeverity.WARN if accept_partial else dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(lost)} file(s) could not be read: the batch is incomplete"
            + (" (accepted: MM_ACCEPT_PARTIAL_BATCHES)" if accept_partial else "")
            if lost
            else "every data file was read"
        ),
        metadata={
            "files_unreadable": len(lost),
            "files_empty": len(empty),
            "partial_batches_accepted": accept_partial,
            "unreadable_files": table(["file", "problem"], lost),
            "empty_files": table(["file", "problem"], empty),
        },
    )
