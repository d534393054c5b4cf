"""Register new batch folders of the local export as partitions and build them."""


import dagster as dg

from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage

build_s2s_files_job = dg.define_asset_job(
    "build_s2s_files", selection=dg.AssetSelection.groups("s2s_build"),
    partitions_def=export_batches,
    description="Read, merge and write the S2S files of one export batch.",
)


@dg.sensor(job=build_s2s_files_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.STOPPED)
def local_export_batches(
    context: dg.SensorEvaluationContext, storage: BatchStorage
) -> dg.SensorResult | dg.SkipReason:
    """One run per new sub-folder of the export folder; the cursor holds the batches seen."""
    seen = set(filter(None, (context.cursor or "").split("\n")))
    new = [b for b in storage.list_batches() if b not in seen]
    if not new:
        return dg.SkipReason("no new batch folder")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=b) for b in new],
        dynamic_partitions_requests=[export_batches.build_add_request(new)],
        cursor="\n".join(sorted(seen | set(new))),
    )
