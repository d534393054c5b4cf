"""The Dagster code location: `dagster dev` loads `defs` through workspace.yaml."""

from __future__ import annotations

import dagster as dg

from mm_assets.defs.alerts.sensors import (
    alert_on_failed_checks,
    alert_on_run_failure,
    default_alert_webhook,
    fail_runs_of_dead_commands,
)
from mm_assets.defs.delivery import assets as delivery_assets
from mm_assets.defs.delivery import sensors as delivery_sensors
from mm_assets.defs.delivery.resources import default_delivery
from mm_assets.defs.moloco_source.assets import moloco_export_objects
from mm_assets.defs.moloco_source.resources import default_moloco_source
from mm_assets.defs.moloco_source.sensors import moloco_export_batches
from mm_assets.defs.moloco_source.transfer import (
    moloco_export_discovery,
    moloco_export_discovery_schedule,
)
from mm_assets.defs.processing_log.checks import every_file_accepted_by_mediamath
from mm_assets.defs.processing_log.resources import default_processing_log
from mm_assets.defs.processing_log.sensors import processing_log_poller
from mm_assets.defs.quota.observations import mediamath_quota, mediamath_quota_observer
from mm_assets.defs.report.assets import batch_report
from mm_assets.defs.resources import default_batch_storage, default_s2s_file_settings
from mm_assets.defs.s2s_build import assets, checks, completeness, jobs
from mm_assets.defs.snapshot import assets as snapshot_assets
from mm_assets.defs.snapshot import checks as snapshot_checks
from mm_assets.defs.snapshot.sensors import advance_audience_state

# Declarative automation: requests `upload_receipts` for a batch once its new build passed the
# blocking checks (`DELIVERY_CONDITION`). On by default: delivery itself is gated.
automation = dg.AutomationConditionSensorDefinition(
    "delivery_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Delivers each batch's new build once its blocking checks passed.",
)


def build_definitions(export_dir: str | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            moloco_export_objects,
            assets.raw_audiences,
            assets.merged_segment_loads,
            assets.s2s_files,
            delivery_assets.upload_receipts,
            batch_report,
            mediamath_quota,
            snapshot_assets.mediamath_audience_state,
        ],
        asset_checks=[
            checks.files_conform_to_s2s_spec,
            checks.outbox_matches_manifest,
            completeness.batch_is_complete,
            delivery_assets.every_file_has_a_receipt,
            every_file_accepted_by_mediamath,
            snapshot_checks.snapshot_removals_within_threshold,
        ],
        jobs=[
            jobs.build_s2s_files_job,
            delivery_sensors.deliver_s2s_files_job,
            moloco_export_discovery,
            snapshot_assets.advance_audience_state_job,
        ],
        schedules=[moloco_export_discovery_schedule],
        sensors=[
            moloco_export_batches,
            automation,
            delivery_sensors.deferred_deliveries,
            processing_log_poller,
            mediamath_quota_observer,
            alert_on_failed_checks,
            alert_on_run_failure,
            fail_runs_of_dead_commands,
            advance_audience_state,
        ],
        resources={
            "storage": default_batch_storage(export_dir),
            "s2s": default_s2s_file_settings(),
            "delivery": default_delivery(),
            "processing_log": default_processing_log(),
            "moloco_source": default_moloco_source(),
            "alerts": default_alert_webhook(),
        },
    )


defs = build_definitions()
