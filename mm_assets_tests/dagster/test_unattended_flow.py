"""A batch dropped into the export folder is built, checked, delivered and accepted by
MediaMath with no command typed: each step is started by the Dagster mechanism that starts it
in production, evaluated with Dagster's own testing APIs (sensor invocation with
`build_sensor_context`, `evaluate_automation_conditions`), each requested run executed as the
daemon would. Real peers: the asyncssh SFTP drop and the sandbox processing log (S2S-LOG)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mm_assets.defs.delivery import assets as delivery_assets
from mm_assets.defs.delivery.sensors import deliver_s2s_files_job
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.moloco_source.sensors import moloco_export_batches
from mm_assets.defs.processing_log.checks import CHECK_NAME, every_file_accepted_by_mediamath
from mm_assets.defs.processing_log.sensors import processing_log_poller
from mm_assets.defs.report.assets import batch_report
from mm_assets.defs.resources import BatchStorage
from mm_assets.defs.s2s_build import assets, checks, jobs
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.delivery.test_delivery_assets import (
    S2S_SETTINGS,
    SAMPLE_BATCH,
    SAMPLE_FILES,
    SFTP_PASSWORD,
    new_instance,
    sftp_delivery,
)
from mm_assets_tests.processing_log.test_processing_log_dagster import log_server, processing_log

NEW_BATCH = "batch_20261121"


@pytest.fixture
def flow_instance(tmp_path: Path) -> Iterator[Any]:
    with new_instance(tmp_path / "dagster") as opened:
        yield opened


def test_a_new_batch_reaches_mediamath_and_is_accepted_with_no_command(
    flow_instance: Any, tmp_path: Path
) -> None:
    instance = flow_instance
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )
    with (
        SandboxSftpServer(tmp_path / "drop", password=SFTP_PASSWORD) as sftp,
        log_server(sftp, password=SFTP_PASSWORD) as mediamath_log,
    ):
        resources = {
            "storage": storage,
            "s2s": S2S_SETTINGS,
            "moloco_source": MolocoExportSource(),
            "delivery": sftp_delivery(sftp, tmp_path / "known_hosts", tmp_path / "ledger.sqlite"),
            "processing_log": processing_log(mediamath_log),
        }
        defs = dg.Definitions(
            assets=[
                assets.moloco_export_objects,
                assets.raw_audiences,
                assets.merged_segment_loads,
                assets.s2s_files,
                delivery_assets.upload_receipts,
                batch_report,
            ],
            asset_checks=[
                checks.files_conform_to_s2s_spec,
                checks.outbox_matches_manifest,
                delivery_assets.every_file_has_a_receipt,
                every_file_accepted_by_mediamath,
            ],
            jobs=[jobs.build_s2s_files_job, deliver_s2s_files_job],
            resources=resources,
        )
        automation = dg.evaluate_automation_conditions(defs, instance)  # first tick: nothing
        assert automation.total_requested == 0

        # A complete batch lands in the export folder.
        shutil.copytree(SAMPLE_BATCH, tmp_path / "export" / NEW_BATCH)
        (tmp_path / "export" / NEW_BATCH / "_SUCCESS").write_text("")

        # The batch sensor finds it, adds its partition and requests the build.
        found = moloco_export_batches(
            dg.build_sensor_context(instance=instance, resources=resources)
        )
        [request] = found.run_requests
        assert instance.has_dynamic_partition("export_batches", request.partition_key)
        build = defs.resolve_job_def(jobs.build_s2s_files_job.name).execute_in_process(
            instance=instance, partition_key=request.partition_key
        )
        assert build.success and all(e.passed for e in build.get_asset_check_evaluations())

        # Declarative automation asks for the delivery of that batch, and only that.
        automation = dg.evaluate_automation_conditions(defs, instance, cursor=automation.cursor)
        assert automation.get_requested_partitions(delivery_assets.upload_receipts.key) == {
            NEW_BATCH
        }
        delivery_run = defs.resolve_job_def(deliver_s2s_files_job.name).execute_in_process(
            instance=instance, partition_key=NEW_BATCH
        )
        assert delivery_run.success
        assert len(list((tmp_path / "drop").rglob("*.log.gz"))) == SAMPLE_FILES

        # MediaMath's verdict, asked by the run's check or by the poller's next ticks.
        verdict = {e.check_name: e for e in delivery_run.get_asset_check_evaluations()}[CHECK_NAME]
        for _ in range(5):
            if verdict.passed:
                break
            result = processing_log_poller(
                dg.build_sensor_context(instance=instance, resources=resources)
            )
            verdict = next(iter(result.asset_events or []), verdict)
        assert verdict.passed, verdict.description
        assert verdict.metadata["files_accepted"].value == SAMPLE_FILES

        # Nothing more to do: the next automation tick asks for nothing.
        after = dg.evaluate_automation_conditions(defs, instance, cursor=automation.cursor)
        assert after.total_requested == 0
