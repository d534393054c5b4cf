"""Delivery is gated by construction: only files the build's checks approved leave.

Over real sockets (the in-process asyncssh SFTP drop), through Dagster: the sample batch is
built with its blocking checks, then one file is changed in the outbox, or the spec check is
made to fail, and delivery is started the ways a user starts it (materialising
`upload_receipts` as the UI does, `mm-assets deliver`, the automation condition). Rules:
S2S-HDR (the broken file), invariant 2 of the project (nothing leaves unless the checks of the
build that made it passed).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mm_assets import cli
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.delivery.resources import SftpDelivery
from mm_assets.defs.metadata import table_rows
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage
from mm_assets.delivery import gate
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.conftest import break_s2s_header
from mm_assets_tests.delivery.test_delivery_assets import (
    BATCH,
    BUILD_ASSETS,
    BUILD_CHECKS,
    S2S_SETTINGS,
    SAMPLE_FILES,
    UNREACHABLE_PROCESSING_LOG,
    materialize_delivery,
    receipt_check,
    receipts_metadata,
)


def build_resources(storage: BatchStorage) -> dict[str, Any]:
    return {"storage": storage, "s2s": S2S_SETTINGS, "moloco_source": MolocoExportSource()}


def rerun_build_checks(instance: Any, storage: BatchStorage) -> list[dg.AssetCheckEvaluation]:
    """Run only the two build checks on the outbox as it is now (no rebuild), as the UI's
    "Execute checks" does."""
    job = dg.define_asset_job(
        "build_checks_only",
        selection=dg.AssetSelection.checks(*BUILD_CHECKS),
        partitions_def=export_batches,
    )
    defs = dg.Definitions(
        assets=BUILD_ASSETS,
        asset_checks=BUILD_CHECKS,
        jobs=[job],
        resources=build_resources(storage),
    )
    # A checks-only run cannot take `partition_key` in process (no asset is selected for
    # Dagster to infer the partitioning from); the run tag is what the UI's launch sets.
    result = defs.resolve_job_def(job.name).execute_in_process(
        instance=instance, tags={"dagster/partition": BATCH}, raise_on_error=False
    )
    return result.get_asset_check_evaluations()


def break_header_and_manifest(storage: BatchStorage, name: str) -> None:
    """A build whose file breaks S2S-HDR (header out of order), its manifest consistent."""
    break_s2s_header(storage.outbox(BATCH), name)


def delivered_names(server: SandboxSftpServer) -> set[str]:
    return {p.name for p in Path(server.root_dir).rglob("*.log.gz")}


def test_a_file_changed_in_the_outbox_after_its_checks_is_refused_and_the_rest_delivered(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery, sftp_server: SandboxSftpServer
) -> None:
    names = [f.name for f in read_manifest(storage.outbox(BATCH))]
    tampered = storage.outbox(BATCH) / names[2]
    data = gzip.decompress(tampered.read_bytes())
    tampered.write_bytes(gzip.compress(data + b"extra_user 1:0\n"))

    result = materialize_delivery(instance, storage, delivery)

    meta = receipts_metadata(result)
    assert meta["files_not_approved"] == 1 and meta["files_delivered"] == SAMPLE_FILES - 1
    assert names[2] not in delivered_names(sftp_server)
    assert delivered_names(sftp_server) == set(names) - {names[2]}
    [refused] = [r for r in table_rows(meta["receipts"]) if r["name"] == names[2]]
    assert refused["status"] == "not_approved"
    assert f"changed after check {gate.MANIFEST_CHECK} approved it" in str(refused["message"])
    check = receipt_check(result)
    assert not check.passed and check.severity is dg.AssetCheckSeverity.ERROR


def test_a_batch_whose_spec_check_failed_is_refused_by_materialize_and_by_the_cli(
    instance: Any,
    storage: BatchStorage,
    delivery: SftpDelivery,
    sftp_server: SandboxSftpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f.name for f in read_manifest(storage.outbox(BATCH))]
    break_header_and_manifest(storage, names[0])
    evaluations = {e.check_name: e for e in rerun_build_checks(instance, storage)}
    assert not evaluations[gate.SPEC_CHECK].passed
    assert evaluations[gate.MANIFEST_CHECK].passed  # the manifest matches the broken file

    # As the UI's Materialize does: every file refused, the check named, nothing sent.
    result = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(result)
    assert meta["files_not_approved"] == SAMPLE_FILES
    messages = [str(r["message"]) for r in table_rows(meta["receipts"])]
    assert all(f"check {gate.SPEC_CHECK} failed on this build" in m for m in messages)
    assert all("S2S-HDR" in m for m in messages)
    assert delivered_names(sftp_server) == set()

    # As `mm-assets deliver BATCH` does, with the same settings from the environment.
    env = {
        "DAGSTER_HOME": str(tmp_path / "cli_home"),
        "MM_ASSETS_EXPORT_DIR": storage.export_dir,
        "MM_ASSETS_WORK_DIR": storage.work_dir,
        "MM_ASSETS_OUTBOX_DIR": storage.outbox_dir,
        "MM_DELIVERY_TRANSPORT": "sftp",
        "MM_SFTP_HOST": delivery.sftp_host,
        "MM_SFTP_PORT": str(delivery.sftp_port),
        "MM_SFTP_USERNAME": delivery.username,
        "MM_SFTP_PASSWORD": delivery.password,
        "MM_SFTP_KNOWN_HOSTS": delivery.known_hosts,
        "MM_DELIVERY_LEDGER_URL": delivery.ledger_url,
    }
    (tmp_path / "cli_home").mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["deliver", BATCH]) == 1
    assert delivered_names(sftp_server) == set()


def test_automation_requests_delivery_only_after_the_blocking_checks_passed(
    instance: Any, storage: BatchStorage, delivery: SftpDelivery
) -> None:
    from mm_assets.defs.s2s_build import checks

    defs = dg.Definitions(
        assets=[*BUILD_ASSETS, upload_receipts],
        asset_checks=[checks.files_conform_to_s2s_spec, checks.outbox_matches_manifest],
        resources={
            **build_resources(storage),
            "delivery": delivery,
            "processing_log": UNREACHABLE_PROCESSING_LOG,
        },
    )
    only_delivery = dg.AssetSelection.assets(upload_receipts)

    def tick(cursor: Any) -> Any:
        return dg.evaluate_automation_conditions(
            defs, instance, asset_selection=only_delivery, cursor=cursor
        )

    def build() -> None:
        assert dg.materialize(
            [*BUILD_ASSETS, *BUILD_CHECKS],
            selection=[BUILD_ASSETS[-1]],
            partition_key=BATCH,
            instance=instance,
            resources=build_resources(storage),
        ).success

    # A new build whose checks then fail (the spec check on a broken file): no delivery.
    before = tick(None)
    build()
    break_header_and_manifest(storage, read_manifest(storage.outbox(BATCH))[0].name)
    assert not all(e.passed for e in rerun_build_checks(instance, storage))
    held = tick(before.cursor)
    assert held.get_requested_partitions(upload_receipts.key) == set()

    # A new build with passing checks: the next automation tick requests its delivery.
    build()
    requested = tick(held.cursor)
    assert requested.get_requested_partitions(upload_receipts.key) == {BATCH}


def test_check_evaluations_carry_their_batch(instance: Any, storage: BatchStorage) -> None:
    result = dg.materialize(
        [*BUILD_ASSETS, *BUILD_CHECKS],
        selection=[BUILD_ASSETS[-1]],
        partition_key=BATCH,
        instance=instance,
        resources=build_resources(storage),
    )
    assert {(e.check_name, e.partition) for e in result.get_asset_check_evaluations()} == {
        (gate.SPEC_CHECK, BATCH),
        (gate.MANIFEST_CHECK, BATCH),
    }
    stored = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    assert {r.event_log_entry.dagster_event.event_specific_data.partition for r in stored} == {
        BATCH
    }
