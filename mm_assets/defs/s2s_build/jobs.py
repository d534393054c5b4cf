"""The job that builds one export batch; the `moloco_export_batches` sensor requests it."""

import dagster as dg

from mm_assets.defs.partitions import export_batches

build_s2s_files_job = dg.define_asset_job(
    "build_s2s_files",
    selection=dg.AssetSelection.groups("s2s_build"),
    partitions_def=export_batches,
    description="Stage, read, merge and write the S2S files of one export batch.",
)
