"""What the UI shows after the sample batch is built and delivered through Dagster: the
`batch_report` partition, typed tables instead of Markdown, labels that mean what they say,
the `mediamath_quota` observations, and no int metadata beyond GraphQL's 32-bit Int.

Real peers only: the in-process SFTP drop (asyncssh) and a closed port for the processing log.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mm_assets.defs.delivery.assets import every_file_has_a_receipt, upload_receipts
from mm_assets.defs.delivery.resources import SftpDelivery
from mm_assets.defs.metadata import GRAPHQL_INT_LIMIT, table_rows
from mm_assets.defs.moloco_source.assets import moloco_export_objects, source_kinds
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.processing_log.checks import CHECK_NAME, every_file_accepted_by_mediamath
from mm_assets.defs.quota.observations import (
    MEDIAMATH_QUOTA,
    mediamath_quota,
    mediamath_quota_observer,
)
from mm_assets.defs.report.assets import batch_report
from mm_assets.defs.resources import BatchStorage
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.delivery.test_delivery_assets import (
    BATCH,
    BUILD_ASSETS,
    BUILD_CHECKS,
    S2S_SETTINGS,
    SAMPLE_FILES,
    UNREACHABLE_PROCESSING_LOG,
)


def run_sample(instance: Any, storage: BatchStorage, delivery: SftpDelivery) -> Any:
    """Build (from the export folder, local mode), check, deliver and report the sample."""
    result = dg.materialize(
        [
            *BUILD_ASSETS,
            upload_receipts,
            batch_report,
            mediamath_quota,
            *BUILD_CHECKS,
            every_file_has_a_receipt,
            every_file_accepted_by_mediamath,
        ],
        selection=[*BUILD_ASSETS, upload_receipts, batch_report],
        partition_key=BATCH,
        instance=instance,
        resources={
            "storage": storage,
            "s2s": S2S_SETTINGS,
            "delivery": delivery,
            "processing_log": UNREACHABLE_PROCESSING_LOG,
            "moloco_source": MolocoExportSource(),
        },
    )
    assert result.success
    return result


def metadata_of(result: Any, node: str) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node(node)
    return dict(materialization.metadata)


def quota_observations(instance: Any) -> list[dict[str, Any]]:
    records = instance.fetch_observations(MEDIAMATH_QUOTA, limit=100).records
    return [dict(r.asset_observation.metadata) for r in reversed(records)]


def test_the_batch_report_partition_answers_did_my_audience_get_to_mediamath(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery
) -> None:
    result = run_sample(instance, storage, delivery)
    report = metadata_of(result, "batch_report")
    files = table_rows(report["files_table"])
    assert len(files) == report["files"].value == SAMPLE_FILES
    assert {(f["delivery"], f["transport"]) for f in files} == {("sent", "sftp")}
    assert all(f["sent_at"] and f["bytes"] > 0 for f in files)
    # The log was unreachable: MediaMath's verdict is still to come, and the report says so.
    assert {f["mediamath"] for f in files} == {"pending"}
    assert report["accepted_by_mediamath"].value is False
    assert "waiting for MediaMath's processing log" in report["mediamath_verdict"].value
    assert report["rows_read"].value == (
        report["rows_accepted"].value + report["rows_quarantined"].value
    )
    assert sum(r["rows"] for r in table_rows(report["quarantine_reasons"])) == (
        report["rows_quarantined"].value
    )
    families = table_rows(report["families"])
    assert {f["ids"] for f in families} == {"cookie", "mobile"}
    assert sum(f["users"] for f in families) == report["users"].value
    assert "next_send_after" not in report  # nothing waits


def test_tabular_facts_are_typed_tables_not_markdown(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery
) -> None:
    result = run_sample(instance, storage, delivery)
    tables = {
        ("raw_audiences", "quarantine_preview"): metadata_of(result, "raw_audiences"),
        ("raw_audiences", "quarantine_reasons"): metadata_of(result, "raw_audiences"),
        ("s2s_files", "manifest"): metadata_of(result, "s2s_files"),
        ("upload_receipts", "receipts"): metadata_of(result, "upload_receipts"),
        ("batch_report", "files_table"): metadata_of(result, "batch_report"),
    }
    [verdict] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_NAME]
    tables[("check", "processing_log")] = dict(verdict.metadata)
    for (node, key), metadata in tables.items():
        value = metadata[key]
        assert isinstance(value, dg.TableMetadataValue), (node, key)
        assert value.records and value.schema.columns, (node, key)
    manifest = tables[("s2s_files", "manifest")]["manifest"]
    types = {c.name: c.type for c in manifest.schema.columns}
    assert types["bytes"] == "int" and types["name"] == "string"
    assert len(manifest.records) == SAMPLE_FILES
    preview = table_rows(tables[("raw_audiences", "quarantine_preview")]["quarantine_preview"])
    assert all(row["reason"] and row["file"] for row in preview)


def test_labels_mean_what_they_say(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery
) -> None:
    result = run_sample(instance, storage, delivery)
    built = metadata_of(result, "s2s_files")
    receipts = metadata_of(result, "upload_receipts")
    # Files are not rows: "Row count 8" is gone from the file assets.
    assert "dagster/row_count" not in built and "dagster/row_count" not in receipts
    assert built["files"].value == receipts["files"].value == SAMPLE_FILES
    assert receipts["files_with_receipt"].value == SAMPLE_FILES
    assert "next_send_after" not in receipts  # no empty cell when nothing waits
    assert "dagster/row_count" in metadata_of(result, "raw_audiences")  # rows, really
    # The local export folder is read in place: no GCS kind, no staging counts.
    source = metadata_of(result, "moloco_export_objects")
    assert source["method"].value == "local"
    assert not {"skipped_as_unchanged", "objects_downloaded", "staged_in"} & set(source)
    assert str(source["folder"].value).endswith(BATCH)
    assert next(iter(moloco_export_objects.specs)).kinds == {"filesystem"}
    assert source_kinds("local") == {"filesystem"}
    assert source_kinds("wif") == source_kinds("dkr") == source_kinds("sts") == {"gcs"}


def test_no_int_metadata_overflows_graphql_int(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery
) -> None:
    """GraphQL's Int is 32-bit: every int metadata value of every event of a sample run (and
    of a quota observation by the sensor) stays inside it; the 5 GB day goes as a float."""
    result = run_sample(instance, storage, delivery)
    observed = mediamath_quota_observer(
        dg.build_sensor_context(
            instance=instance, resources={"delivery": delivery, "storage": storage}
        )
    )
    for event in observed.asset_events:
        instance.report_runless_asset_event(event)
    metadata_seen = []
    for record in instance.get_records_for_run(result.run_id, limit=10_000).records:
        data = record.event_log_entry.dagster_event
        specific = getattr(data, "event_specific_data", None) if data else None
        for holder in ("materialization", "asset_observation", "evaluation"):
            entry = getattr(specific, holder, None)
            if entry is not None:
                metadata_seen.append(dict(entry.metadata))
        if specific is not None and hasattr(specific, "passed"):
            metadata_seen.append(dict(specific.metadata))
    metadata_seen += quota_observations(instance)
    assert len(metadata_seen) > 8
    too_big = [
        (key, value.value)
        for metadata in metadata_seen
        for key, value in metadata.items()
        if isinstance(value, dg.IntMetadataValue) and abs(value.value or 0) >= GRAPHQL_INT_LIMIT
    ]
    assert too_big == []
    receipts = metadata_of(result, "upload_receipts")
    assert receipts["quota_bytes_left_today"].value > GRAPHQL_INT_LIMIT  # a float now


def test_the_quota_is_observed_on_every_delivery_and_by_the_sensor(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery, sftp_server: SandboxSftpServer
) -> None:
    run_sample(instance, storage, delivery)
    [on_delivery] = quota_observations(instance)
    assert on_delivery["observed_by"].value == "upload_receipts"
    assert on_delivery["files_this_hour"].value >= SAMPLE_FILES
    assert on_delivery["files_waiting"].value == on_delivery["files_deferred"].value == 0
    assert on_delivery["bytes_today"].value > 0
    assert isinstance(on_delivery["next_window_with_room"], dg.TimestampMetadataValue)

    # The tick asks no remote system: with MediaMath's drop down (and no processing-log
    # resource given at all) it still observes, from the ledger and the outbox.
    sftp_server.stop()
    tick = mediamath_quota_observer(
        dg.build_sensor_context(
            instance=instance, resources={"delivery": delivery, "storage": storage}
        )
    )
    assert isinstance(tick, dg.SensorResult)
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    first, second = quota_observations(instance)
    assert second["observed_by"].value == "mediamath_quota_observer"
    assert second["bytes_today"].value == first["bytes_today"].value
    numeric = (dg.IntMetadataValue, dg.FloatMetadataValue)
    for key in ("files_this_hour", "bytes_today", "bytes_deferred", "files_deferred"):
        assert isinstance(second[key], numeric), key  # Dagster plots numeric metadata
