"""The Dagster code location: `dagster dev` loads `defs` through workspace.yaml."""

from __future__ import annotations

import dagster as dg

from mm_assets.defs.resources import default_batch_storage, default_s2s_file_settings
from mm_assets.defs.s2s_build import assets, checks, sensors


def build_definitions(export_dir: str | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[assets.moloco_export_objects, assets.raw_audiences,
                assets.merged_segment_loads, assets.s2s_files],
        asset_checks=[checks.files_conform_to_s2s_spec, checks.outbox_matches_manifest],
        jobs=[sensors.build_s2s_files_job],
        sensors=[sensors.local_export_batches],
        resources={
            "storage": default_batch_storage(export_dir),
            "s2s": default_s2s_file_settings(),
        },
    )


defs = build_definitions()
