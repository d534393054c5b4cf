"""`mediamath_quota`: MediaMath's quotas over time (S2S-QUOTA), one observation at a time.

An asset with no step of its own: every delivery (`upload_receipts`) records an observation of
it, and the `mediamath_quota_observer` sensor records one every few minutes, so the asset's
Plots tab draws files this hour, bytes today and what waits across batches and days. A tick
reads only the ledger and the outbox manifests (no remote call).
"""

from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg

from mm_assets.core.clock import utc_now
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.metadata import byte_count
from mm_assets.defs.resources import BatchStorage
from mm_assets.reporting.quota_view import QuotaSnapshot, quota_snapshot, waiting_files

MEDIAMATH_QUOTA = dg.AssetKey("mediamath_quota")
OBSERVE_EVERY_SECONDS = 300

mediamath_quota = dg.AssetSpec(
    MEDIAMATH_QUOTA,
    deps=["upload_receipts"],
    group_name="delivery",
    kinds={"mediamath"},
    description="MediaMath's upload quotas (S2S-QUOTA: 20 files per clock hour, 5 GB gz per UTC "
    "day) as the ledger counts them, observed on every delivery and every "
    f"{OBSERVE_EVERY_SECONDS // 60} minutes: files this hour, bytes today, files and bytes "
    "waiting and deferred, and the next window with room. See the Plots tab.",
)


def quota_metadata(snapshot: QuotaSnapshot) -> dict[str, Any]:
    u = snapshot.usage
    return {
        "files_this_hour": u.files_this_hour,
        "files_left_this_hour": u.files_left_this_hour,
        "files_per_hour": u.limits.files_per_hour,
        "bytes_today": byte_count(u.bytes_today),
        "bytes_left_today": byte_count(u.bytes_left_today),
        "bytes_per_day": byte_count(u.limits.bytes_per_day),
        "files_in_flight": u.in_flight_files,
        "files_waiting": snapshot.files_waiting,
        "bytes_waiting": byte_count(snapshot.bytes_waiting),
        "files_deferred": snapshot.files_deferred,
        "bytes_deferred": byte_count(snapshot.bytes_deferred),
        "next_window_with_room": dg.MetadataValue.timestamp(snapshot.next_window_with_room),
        "hour_resets_at": dg.MetadataValue.timestamp(u.hour_end),
        "day_resets_at": dg.MetadataValue.timestamp(u.day_end),
    }


def quota_observation(
    delivery: MediaMathDelivery, storage: BatchStorage, now: datetime, source: str
) -> dg.AssetObservation:
    with delivery.get_ledger() as ledger:
        waiting = waiting_files(Path(storage.outbox_dir), ledger)
        snapshot = quota_snapshot(ledger, delivery.quota_limits(), now, waiting)
    return dg.AssetObservation(
        asset_key=MEDIAMATH_QUOTA, metadata={**quota_metadata(snapshot), "observed_by": source}
    )


@dg.sensor(
    name="mediamath_quota_observer",
    minimum_interval_seconds=OBSERVE_EVERY_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records an observation of mediamath_quota (files this hour, bytes today, "
    "waiting and deferred files) from the ledger; no remote call.",
)
def mediamath_quota_observer(
    context: dg.SensorEvaluationContext, delivery: MediaMathDelivery, storage: BatchStorage
) -> dg.SensorResult:
    return dg.SensorResult(
        asset_events=[quota_observation(delivery, storage, utc_now(), "mediamath_quota_observer")]
    )
