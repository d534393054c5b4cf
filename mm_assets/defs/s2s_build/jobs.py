"""The job that builds one export batch; the `moloco_export_batches` sensor requests it."""

import dagster as dg

from mm_assets.defs.partitions import export_batches

build_s2s_files_job = dg.define_asset_job(
    "build_s2s_files",
    selection=dg.AssetSelection.groups("s2s_build"),
    partitions_def=export_batches,
    description="Stage, read, merge and write the S2S files of one export batch.",
    # The steps are a chain (each needs the one before), so a process per step bought no
    # parallelism and cost ~2 s per step to start and import the definitions (8 steps: most of
    # `mm-assets build`'s fixed time). In the run's own process they run one after another;
    # the spec check still validates big batches on every core (its own process pool).
    executor_def=dg.in_process_executor,
)
