"""`upload_receipts / every_file_accepted_by_mediamath` and `processing_log_poller` (S2S-LOG).

Real delivery path over real sockets: the sample batch built once through Dagster, delivered by
`upload_receipts` with the `sftp` transport to the in-process asyncssh drop, whose folder the
sandbox processing log reads and judges with the independent validator.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mm_assets.core.s2s_writer import NAME_REGISTER, read_manifest
from mm_assets.defs.delivery.assets import upload_receipts
from mm_assets.defs.delivery.resources import MediaMathDelivery, SftpDelivery
from mm_assets.defs.delivery.sensors import deliver_s2s_files_job
from mm_assets.defs.metadata import table_rows
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log import checks as processing_log_checks
from mm_assets.defs.processing_log import sensors as processing_log_sensors
from mm_assets.defs.processing_log.checks import CHECK_NAME, every_file_accepted_by_mediamath
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.processing_log.sensors import processing_log_poller
from mm_assets.defs.report.assets import batch_report
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build import assets as build_assets
from mm_assets.defs.s2s_build import checks as build_checks
from mm_assets.processing_log.polling import parse_duration
from mm_assets.processing_log.status_store import FileState, StatusStore
from mm_assets.sandbox.delivery_resource import SandboxDelivery
from mm_assets.sandbox.processing_log_server import SandboxProcessingLog
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.conftest import approve_outbox, break_s2s_header

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_BATCH = PROJECT_ROOT / "data" / "export" / "batch_20261120"
BATCH = SAMPLE_BATCH.name
# Distinctive, so a leak cannot hide behind a common substring.
SFTP_PASSWORD = "SftpPw-" + "Lg7tR2mQ9xVb4NcK"
WRONG_PASSWORD = "WrongPw-" + "Yh3dS8pW1zJe6TuF"
BUILD_ASSETS = [
    build_assets.moloco_export_objects,
    build_assets.raw_audiences,
    build_assets.merged_segment_loads,
    build_assets.s2s_files,
]
S2S_SETTINGS = S2sFileSettings(
    partner_name="ExamplePartner", segment_namespace="ep", hashed_taxonomies="SportsDaily"
)
CHECK_KEY = dg.AssetCheckKey(upload_receipts.key, CHECK_NAME)
BUILD_CHECKS = [build_checks.files_conform_to_s2s_spec, build_checks.outbox_matches_manifest]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample batch built once through Dagster, with the build checks (delivery's gate)."""
    root = tmp_path_factory.mktemp("built")
    shutil.copytree(SAMPLE_BATCH, root / "export" / BATCH)
    storage = BatchStorage(
        export_dir=str(root / "export"),
        work_dir=str(root / "work"),
        outbox_dir=str(root / "outbox"),
    )
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        instance.add_dynamic_partitions(export_batches.name, [BATCH])
        assert dg.materialize(
            [*BUILD_ASSETS, *BUILD_CHECKS],
            selection=BUILD_ASSETS[1:],
            partition_key=BATCH,
            instance=instance,
            resources={
                "storage": storage,
                "s2s": S2S_SETTINGS,
                "moloco_source": MolocoExportSource(),
            },
        ).success
    return root


@pytest.fixture
def storage(built: Path, tmp_path: Path) -> BatchStorage:
    """This test's copy of the outbox (and of its name register, so a rebuild gets new names)."""
    shutil.copytree(built / "outbox" / BATCH, tmp_path / "outbox" / BATCH)
    shutil.copy(built / "outbox" / NAME_REGISTER, tmp_path / "outbox" / NAME_REGISTER)
    shutil.copytree(built / "work", tmp_path / "work")
    return BatchStorage(
        export_dir=str(built / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as opened:
        opened.add_dynamic_partitions(export_batches.name, [BATCH])
        yield opened


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SandboxSftpServer]:
    with SandboxSftpServer(tmp_path / "drop", password=SFTP_PASSWORD) as server:
        yield server


@pytest.fixture
def delivery(sftp_server: SandboxSftpServer, tmp_path: Path) -> MediaMathDelivery:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sftp_server.known_hosts_line + "\n")
    return SftpDelivery(
        sftp_host=sftp_server.host,
        sftp_port=sftp_server.port,
        username=sftp_server.username,
        password=sftp_server.password,
        known_hosts=str(known_hosts),
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
    )


def log_server(
    sftp_server: SandboxSftpServer,
    *,
    delay: float = 0.0,
    password: str = SFTP_PASSWORD,
    clock: Callable[[], float] = time.time,
) -> SandboxProcessingLog:
    return SandboxProcessingLog(
        [sftp_server.root_dir],
        sftp_server.username,
        password,
        processing_delay_seconds=delay,
        allowed_namespaces=["ep"],
        page_size=2,
        clock=clock,
    )


def processing_log(server: SandboxProcessingLog, **overrides: Any) -> MediaMathProcessingLog:
    settings: dict[str, Any] = {
        "url": server.url,
        "poll_interval": "0s",
        "backoff_seconds": 0.01,
        "max_total_wait_seconds": 1.0,
        "timeout_seconds": 5.0,
    }
    settings.update(overrides)
    return MediaMathProcessingLog(**settings)


def deliver(
    instance: dg.DagsterInstance,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    log: MediaMathProcessingLog,
) -> dg.AssetCheckEvaluation:
    result = dg.materialize(
        [upload_receipts, every_file_accepted_by_mediamath],
        partition_key=BATCH,
        instance=instance,
        resources={"storage": storage, "delivery": delivery, "processing_log": log},
    )
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == CHECK_NAME
    return evaluation


def tick(
    instance: dg.DagsterInstance,
    delivery: MediaMathDelivery,
    log: MediaMathProcessingLog,
    storage: BatchStorage,
) -> dg.SensorResult:
    """One sensor evaluation, its asset events stored the way the sensor daemon stores them."""
    context = dg.build_sensor_context(
        instance=instance,
        resources={"delivery": delivery, "processing_log": log, "storage": storage},
    )
    result = processing_log_poller(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        assert event.partition == BATCH  # the verdict belongs to its export batch
        instance.report_runless_asset_event(event)
    return result


def meta(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {k: v.value for k, v in evaluation.metadata.items()}


def break_header(storage: BatchStorage, name: str) -> None:
    """Rewrite one built file with its header out of order (S2S-HDR) and fix the manifest and
    the checks' approvals, as if writer and validator shared a bug the checks did not see."""
    outbox = storage.outbox(BATCH)
    break_s2s_header(outbox, name)
    approve_outbox(outbox, run_id="validator-shares-the-bug")


def all_event_text(instance: dg.DagsterInstance) -> str:
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    runs = {r.event_log_entry.run_id for r in records}
    texts = [str(r.event_log_entry) for r in records]
    for run_id in runs:
        texts += [str(entry) for entry in instance.all_logs(run_id)]
    return "\n".join(texts)


# -- rejected, then rebuilt and re-sent ------------------------------------------------------


def test_a_broken_header_fails_with_invalid_headers_and_a_rebuild_passes(
    instance: dg.DagsterInstance,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    sftp_server: SandboxSftpServer,
) -> None:
    first_names = [f.name for f in read_manifest(storage.outbox(BATCH))]
    broken = first_names[0]
    break_header(storage, broken)
    with log_server(sftp_server) as server:
        log = processing_log(server)
        evaluation = deliver(instance, storage, delivery, log)
        assert not evaluation.passed
        assert evaluation.severity is dg.AssetCheckSeverity.ERROR
        assert f"{broken}: Invalid headers" in (evaluation.description or "")
        values = meta(evaluation)
        assert values["files_rejected"] == 1
        assert values["files_accepted"] == len(first_names) - 1
        assert values["mediamath_records"][broken][0]["message"] == "Invalid headers"
        rows = table_rows(values["processing_log"])
        assert [c.name for c in values["processing_log"].schema.columns][:4] == [
            "attempt",
            "name",
            "bytes",
            "transport",
        ]
        [row] = [r for r in rows if r["name"] == broken]
        assert row["attempt"] == 1 and row["transport"] == "sftp"
        assert row["mediamath_status"] == "rejected" and row["message"] == "Invalid headers"

        # On purpose: rebuild (new file names, FileIdentifier stays unique) and re-send.
        assert dg.materialize(
            [*BUILD_ASSETS, *BUILD_CHECKS],
            selection=[build_assets.s2s_files],
            partition_key=BATCH,
            instance=instance,
            resources={
                "storage": storage,
                "s2s": S2S_SETTINGS,
                "moloco_source": MolocoExportSource(),
            },
        ).success
        second_names = [f.name for f in read_manifest(storage.outbox(BATCH))]
        assert not set(second_names) & set(first_names)
        again = deliver(instance, storage, delivery, log)

    assert again.passed, again.description
    assert again.description == f"MediaMath accepted all {len(second_names)} file(s)"
    rows = {r["name"]: r for r in table_rows(meta(again)["processing_log"])}
    # Both attempts stay visible: the rejected row of attempt 1 next to attempt 2's.
    assert rows[broken]["attempt"] == 1 and rows[broken]["message"] == "Invalid headers"
    assert sum(r["current"] == "superseded" for r in rows.values()) == len(first_names)
    assert all(rows[name]["attempt"] == 2 for name in second_names)
    assert SFTP_PASSWORD not in all_event_text(instance)


# -- pending, then accepted by the sensor ----------------------------------------------------


def test_pending_files_pass_when_the_sensor_polls_after_processing(
    instance: dg.DagsterInstance,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    sftp_server: SandboxSftpServer,
    tmp_path: Path,
) -> None:
    names = [f.name for f in read_manifest(storage.outbox(BATCH))]
    # MediaMath's clock is the test's: "not processed yet" holds however slow the machine is.
    log_clock = [time.time()]
    with log_server(sftp_server, delay=60, clock=lambda: log_clock[0]) as server:
        log = processing_log(server)
        evaluation = deliver(instance, storage, delivery, log)
        assert not evaluation.passed
        assert evaluation.severity is dg.AssetCheckSeverity.WARN
        assert f"{len(names)} of {len(names)} file(s) waiting" in (evaluation.description or "")
        assert meta(evaluation)["files_pending"] == len(names)

        server.fail_next, server.retry_after = [503] * 20, ""
        outage = tick(instance, delivery, log, storage)
        # One file is tried (5 requests), the others are not asked while the log is down.
        assert outage.asset_events == [] and len(server.fail_next) == 15
        with StatusStore(delivery.ledger_url) as store:
            errors = [r.last_error for r in store.batch(BATCH) if r.last_error]
        assert len(errors) == 1 and "HTTP 503" in errors[0]
        server.fail_next = []
        early = tick(instance, delivery, log, storage)
        assert early.asset_events == []  # asked, no answer yet, nothing to report
        log_clock[0] += 61  # MediaMath has processed the files now
        answered = tick(instance, delivery, log, storage)
        requests_after = len(server.requests_seen)
        quiet = tick(instance, delivery, log, storage)

    [event, report] = answered.asset_events
    assert isinstance(event, dg.AssetCheckEvaluation)
    # The batch report follows the new verdict, with no run (batch_report in the UI).
    assert isinstance(report, dg.AssetMaterialization) and report.partition == BATCH
    assert report.metadata["accepted_by_mediamath"].value is True
    files = table_rows(report.metadata["files_table"].value)
    assert {f["mediamath"] for f in files} == {"accepted"} and len(files) == len(names)
    assert (event.asset_key, event.check_name, event.partition) == (
        upload_receipts.key,
        CHECK_NAME,
        BATCH,
    )
    assert event.passed and meta(event)["files_accepted"] == len(names)
    assert event.target_materialization_data is not None
    # Nothing pending any more: the next tick asks MediaMath nothing.
    assert quiet.asset_events == [] and len(server.requests_seen) == requests_after

    [latest] = instance.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=1)
    assert latest.event is not None and latest.event.dagster_event is not None
    stored = latest.event.dagster_event.event_specific_data
    assert stored.passed and stored.partition == BATCH
    # The verdicts outlive the sensor's process: a new store on the same database has them.
    with StatusStore(delivery.ledger_url) as store:
        assert {r.status for r in store.batch(BATCH)} == {FileState.ACCEPTED}


# -- deadline --------------------------------------------------------------------------------


def test_no_answer_by_the_deadline_is_timed_out_and_no_longer_polled(
    instance: dg.DagsterInstance,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    sftp_server: SandboxSftpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The check's and the poller's clock is the test's: the deadline passes when the test says,
    # however long the delivery took on a busy machine.
    now = [datetime.now(UTC)]
    for module in (processing_log_checks, processing_log_sensors):
        monkeypatch.setattr(module, "utc_now", lambda: now[0])
    with log_server(sftp_server, delay=3600) as server:
        log = processing_log(server, deadline="10m")
        evaluation = deliver(instance, storage, delivery, log)
        assert evaluation.severity is dg.AssetCheckSeverity.WARN
        now[0] += timedelta(hours=1)  # past every file's deadline, MediaMath still silent
        result = tick(instance, delivery, log, storage)
        requests_after = len(server.requests_seen)
        assert tick(instance, delivery, log, storage).asset_events == []
        assert len(server.requests_seen) == requests_after
    [event, _report] = result.asset_events
    assert not event.passed and event.severity is dg.AssetCheckSeverity.ERROR
    assert "no answer before the deadline" in (event.description or "")
    values = meta(event)
    assert values["files_timed_out"] == values["files"] > 0
    assert all(
        "no answer from MediaMath after" in str(r["message"])
        for r in table_rows(values["processing_log"])
    )


# -- credentials -----------------------------------------------------------------------------


def test_refused_credentials_fail_the_check_without_showing_the_password(
    instance: dg.DagsterInstance,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    sftp_server: SandboxSftpServer,
) -> None:
    with log_server(sftp_server, password=WRONG_PASSWORD) as server:
        evaluation = deliver(instance, storage, delivery, processing_log(server))
        # Asked once by the delivery (what MediaMath already has, S2S-QUOTA use) and once by
        # the check: a refusal is never retried.
        assert server.auth_failures == 2
    assert not evaluation.passed and evaluation.severity is dg.AssetCheckSeverity.ERROR
    assert "refused the credentials" in (evaluation.description or "")
    text = all_event_text(instance)
    assert SFTP_PASSWORD not in text and WRONG_PASSWORD not in text


# -- wiring ----------------------------------------------------------------------------------


def test_sandbox_transport_reads_the_log_url_and_credentials_from_the_sandbox_state(
    tmp_path: Path,
) -> None:
    state = tmp_path / "sandbox"
    state.mkdir()
    (state / "sftp_password").write_text(SFTP_PASSWORD + "\n")
    (state / "sandbox.json").write_text(
        json.dumps(
            {
                "sftp_port": 2222,
                "sftp_username": "mm_partner",
                "cft_credentials_url": "",
                "cft_s3_endpoint_url": "",
                "cft_username": "",
                "cft_integration": "",
                "cft_bucket": "",
                "processing_log_url": "http://127.0.0.1:5056",
            }
        )
    )
    delivery = SandboxDelivery(sandbox_state_dir=str(state))
    with MediaMathProcessingLog().client(delivery) as client:
        assert client.base_url == "http://127.0.0.1:5056"
        assert client.username == "mm_partner"
        assert SFTP_PASSWORD not in repr(client)
    real = SftpDelivery(username="u", password="p")
    with MediaMathProcessingLog().client(real) as client:
        assert client.base_url == "https://s2s-api.datasvc.mediamath.com"


def test_the_check_runs_with_the_delivery_job_and_the_definitions_load() -> None:
    defs = dg.Definitions(
        assets=[*BUILD_ASSETS, upload_receipts, batch_report],
        asset_checks=[every_file_accepted_by_mediamath],
        jobs=[deliver_s2s_files_job],
        sensors=[processing_log_poller],
        resources={
            "storage": BatchStorage(export_dir="e", work_dir="w", outbox_dir="o"),
            "s2s": S2S_SETTINGS,
            "delivery": SftpDelivery(),
            "moloco_source": MolocoExportSource(),
            "processing_log": MediaMathProcessingLog(),
        },
    )
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(deliver_s2s_files_job.name)
    # The check runs in every delivery run (CLI, deferred_deliveries sensor), not on its own.
    assert set(job.graph.node_names()) == {
        "upload_receipts",
        f"upload_receipts_{CHECK_NAME}",
        "batch_report",
    }


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("6h", 21600),
        ("30m", 1800),
        ("90s", 90),
        ("1d", 86400),
        ("1h30m", 5400),
        ("45", 45),
        ("0s", 0),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "6x", "h", "-1h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# -- a lost ledger, with the drop already emptied by MediaMath -------------------------------


def test_a_lost_ledger_resends_nothing_the_processing_log_knows_although_the_drop_is_empty(
    instance: dg.DagsterInstance,
    storage: BatchStorage,
    delivery: MediaMathDelivery,
    sftp_server: SandboxSftpServer,
    tmp_path: Path,
) -> None:
    """upload_receipts asks MediaMath's processing log (S2S-LOG) before sending a file the
    ledger cannot vouch for: FileIdentifiers must stay unique (S2S-HDR)."""
    names = sorted(f.name for f in read_manifest(storage.outbox(BATCH)))
    with log_server(sftp_server) as server:
        log = processing_log(server)
        assert deliver(instance, storage, delivery, log).passed
        # MediaMath read and moved every file away; then the ledger file is lost.
        for path in sftp_server.root_dir.iterdir():
            path.unlink()
        (tmp_path / "ledger.sqlite").unlink()
        result = dg.materialize(
            [upload_receipts],
            partition_key=BATCH,
            instance=instance,
            resources={"storage": storage, "delivery": delivery, "processing_log": log},
        )
    [materialization] = result.asset_materializations_for_node("upload_receipts")
    by_status = materialization.metadata["names_by_status"].value
    assert sorted(by_status.get("already_delivered", [])) == names
    assert "delivered" not in by_status
    assert list(sftp_server.root_dir.iterdir()) == []  # nothing was sent a second time
