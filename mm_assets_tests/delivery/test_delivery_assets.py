"""`upload_receipts` (+ its check) materialised through Dagster over real sockets.

The real assets run on a copy of the sample batch (`data/export/batch_20261120`) against the
in-process asyncssh SFTP drop (`SandboxSftpServer`) and the CFT stand-in (`SandboxCft`): no
client is mocked. Rules: S2S-SFTP, S2S-QUOTA, CFT-CRED, CFT-PUT, CFT-SAME.

The sample is built once per module through Dagster (build assets + blocking checks); each
test then gets its own copy of the built outbox, its own Dagster instance (persistent, on
disk), its own ledger and its own server.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import shutil
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import dagster as dg
import pytest
from dagster._serdes import serialize_value

from mm_assets.clients import mediamath_sftp
from mm_assets.core.quota import QuotaLimits, hour_window
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.delivery.assets import (
    every_file_has_a_receipt,
    outgoing_files,
    upload_receipts,
)
from mm_assets.defs.delivery.resources import CftDelivery, MediaMathDelivery, SftpDelivery
from mm_assets.defs.metadata import table_rows
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.processing_log.resources import MediaMathProcessingLog
from mm_assets.defs.resources import BatchStorage, S2sFileSettings
from mm_assets.defs.s2s_build import assets as build_assets
from mm_assets.defs.s2s_build import checks as build_checks
from mm_assets.delivery.deliver import deliver_batch
from mm_assets.delivery.ledger import Ledger
from mm_assets.sandbox.cft_server import SandboxCft
from mm_assets.sandbox.sftp_server import SandboxSftpServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_BATCH = PROJECT_ROOT / "data" / "export" / "batch_20261120"
BATCH = SAMPLE_BATCH.name
SAMPLE_FILES = 8  # files the sample batch builds into

# Distinctive, so a leak cannot hide behind a common substring.
SFTP_PASSWORD = "SftpPw-" + "Zq8vN3xT7kLm2RwJ"
CFT_PASSWORD = "CftPw-" + "Hb4sY9pQ1cVe6UoG"
WRONG_PASSWORD = "WrongPw-" + "Ft5gK2jD8nXa3MhE"
INTEGRATION = "example_partner"

BUILD_ASSETS = [
    build_assets.moloco_export_objects,
    build_assets.raw_audiences,
    build_assets.merged_segment_loads,
    build_assets.s2s_files,
]
BUILD_CHECKS = [build_checks.files_conform_to_s2s_spec, build_checks.outbox_matches_manifest]
S2S_SETTINGS = S2sFileSettings(
    partner_name="ExamplePartner", segment_namespace="ep", hashed_taxonomies="SportsDaily"
)


# -- helpers -------------------------------------------------------------------------------


# These tests run no processing-log server: a closed local port, so delivery learns at once
# that the log cannot be read and asks only the drop or bucket.
UNREACHABLE_PROCESSING_LOG = MediaMathProcessingLog(url="http://127.0.0.1:1", max_attempts=1)


def new_instance(root: Path) -> Any:
    """A persistent test instance (SQLite storages on disk) with the batch's partition."""
    root.mkdir(parents=True, exist_ok=True)
    return dg.instance_for_test(temp_dir=str(root))


def materialize_build_and_delivery(
    instance: Any, storage: BatchStorage, delivery: MediaMathDelivery
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*BUILD_ASSETS, upload_receipts, *BUILD_CHECKS, every_file_has_a_receipt],
        selection=[
            build_assets.raw_audiences,
            build_assets.merged_segment_loads,
            build_assets.s2s_files,
            upload_receipts,
        ],
        partition_key=BATCH,
        instance=instance,
        resources={
            "storage": storage,
            "s2s": S2S_SETTINGS,
            "delivery": delivery,
            "processing_log": UNREACHABLE_PROCESSING_LOG,
            "moloco_source": MolocoExportSource(),
        },
        raise_on_error=False,
    )


def materialize_delivery(
    instance: Any, storage: BatchStorage, delivery: MediaMathDelivery
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [upload_receipts, every_file_has_a_receipt],
        partition_key=BATCH,
        instance=instance,
        resources={
            "storage": storage,
            "delivery": delivery,
            "processing_log": UNREACHABLE_PROCESSING_LOG,
        },
        raise_on_error=False,
    )


def receipts_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node("upload_receipts")
    return {k: v.value for k, v in materialization.metadata.items()}


def receipt_check(result: dg.ExecuteInProcessResult) -> Any:
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "every_file_has_a_receipt"
    ]
    return evaluation


def manifest_md5s(storage: BatchStorage) -> dict[str, str]:
    return {f.name: f.md5 for f in read_manifest(storage.outbox(BATCH))}


def drop_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """{name: (inode, mtime_ns, md5)} of every file in the drop (hidden temps included):
    a re-sent file is renamed over its name and gets a new inode."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            state[str(path.relative_to(root))] = (stat.st_ino, stat.st_mtime_ns, digest)
    return state


def run_messages(instance: Any, run_id: str) -> list[str]:
    return [entry.user_message or entry.message or "" for entry in instance.all_logs(run_id)]


def sha256_fingerprint_of(pub_key_line: str) -> str:
    blob = base64.b64decode(pub_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ledger_url(path: Path) -> str:
    return f"sqlite:///{path}"


def sftp_delivery(
    server: SandboxSftpServer, known_hosts: Path, ledger: Path, **overrides: Any
) -> MediaMathDelivery:
    known_hosts.write_text(server.known_hosts_line + "\n")
    settings: dict[str, Any] = {
        "sftp_host": server.host,
        "sftp_port": server.port,
        "username": server.username,
        "password": server.password,
        "known_hosts": str(known_hosts),
        "ledger_url": ledger_url(ledger),
    }
    settings.update(overrides)
    return SftpDelivery(**settings)


def cft_delivery(sandbox: SandboxCft, ledger: Path, **overrides: Any) -> MediaMathDelivery:
    settings: dict[str, Any] = {
        "username": sandbox.username,
        "password": sandbox.password,
        "cft_credentials_url": sandbox.credentials_url,
        "cft_bucket": sandbox.bucket,
        "cft_integration": sandbox.integration,
        "cft_endpoint_url": sandbox.s3_endpoint_url,
        "ledger_url": ledger_url(ledger),
    }
    settings.update(overrides)
    return CftDelivery(**settings)


def cft_puts(sandbox: SandboxCft) -> list[str]:
    return [r.path for r in sandbox.seen if r.method == "PUT"]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample batch built once through Dagster; the blocking build checks must pass."""
    root = tmp_path_factory.mktemp("built")
    shutil.copytree(SAMPLE_BATCH, root / "export" / BATCH)
    storage = BatchStorage(
        export_dir=str(root / "export"),
        work_dir=str(root / "work"),
        outbox_dir=str(root / "outbox"),
    )
    with new_instance(root / "dagster") as instance:
        instance.add_dynamic_partitions(export_batches.name, [BATCH])
        result = dg.materialize(
            [*BUILD_ASSETS, *BUILD_CHECKS],
            selection=BUILD_ASSETS[1:],
            partition_key=BATCH,
            instance=instance,
            resources={
                "storage": storage,
                "s2s": S2S_SETTINGS,
                "moloco_source": MolocoExportSource(),
            },
        )
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 2 and all(e.passed for e in evaluations)
    assert len(read_manifest(storage.outbox(BATCH))) == SAMPLE_FILES
    return root


@pytest.fixture
def storage(built: Path, tmp_path: Path) -> BatchStorage:
    """This test's copy of the built outbox (work and export stay shared, read only)."""
    shutil.copytree(built / "outbox" / BATCH, tmp_path / "outbox" / BATCH)
    return BatchStorage(
        export_dir=str(built / "export"),
        work_dir=str(built / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Any]:
    with new_instance(tmp_path / "dagster") as opened:
        opened.add_dynamic_partitions(export_batches.name, [BATCH])
        yield opened


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SandboxSftpServer]:
    with SandboxSftpServer(tmp_path / "drop", password=SFTP_PASSWORD) as server:
        yield server


@pytest.fixture
def cft_sandbox() -> Iterator[SandboxCft]:
    with SandboxCft(integration=INTEGRATION, password=CFT_PASSWORD) as sandbox:
        yield sandbox


@pytest.fixture
def sftp_connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the SFTP client opens (a spy: the real connection is made)."""
    opened: list[tuple[str, int]] = []
    real = socket.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        opened.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(mediamath_sftp.socket, "create_connection", spy)
    return opened


# -- 1. SFTP: every file once, a re-run sends nothing ---------------------------------------


def test_sftp_build_and_delivery_then_rerun_sends_nothing(
    sftp_server: SandboxSftpServer, tmp_path: Path
) -> None:
    shutil.copytree(SAMPLE_BATCH, tmp_path / "export" / BATCH)
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )
    ledger_path = tmp_path / "state" / "ledger.sqlite"
    delivery = sftp_delivery(sftp_server, tmp_path / "known_hosts", ledger_path)
    with new_instance(tmp_path / "dagster") as instance:
        instance.add_dynamic_partitions(export_batches.name, [BATCH])
        result = materialize_build_and_delivery(instance, storage, delivery)
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        assert len(result.get_asset_check_evaluations()) == 3

        md5s = manifest_md5s(storage)
        assert len(md5s) == SAMPLE_FILES
        landed = drop_state(sftp_server.root_dir)
        assert {name: md5 for name, (_, _, md5) in landed.items()} == md5s  # no temp left
        meta = receipts_metadata(result)
        assert meta["files_delivered"] == SAMPLE_FILES
        assert meta["all_delivered"] is True and meta["transport"] == "sftp"
        assert "next_send_after" not in meta  # nothing waits: no empty cell
        assert meta["quota_files_left_this_hour"] == 20 - SAMPLE_FILES
        with Ledger(ledger_url(ledger_path)) as ledger:
            receipts = {r.file_name: r for r in ledger.receipts(BATCH)}
            assert ledger.in_flight(BATCH) == []
        assert {n: r.md5 for n, r in receipts.items()} == md5s
        assert {r.transport for r in receipts.values()} == {"sftp"}
        assert all(r.remote_path == r.file_name for r in receipts.values())
        logins = sftp_server.successful_logins

        again = materialize_delivery(instance, storage, delivery)
        assert again.success
        meta = receipts_metadata(again)
        assert meta["files_already_delivered"] == SAMPLE_FILES
        assert "files_delivered" not in meta
        assert meta["all_delivered"] is True
        assert receipt_check(again).passed
        assert drop_state(sftp_server.root_dir) == landed
        # Nothing to send, so not even a connection was opened.
        assert sftp_server.successful_logins == logins


# -- 2. CFT: objects under the integration prefix, ETag == md5 -------------------------------


def test_cft_delivery_lands_under_prefix_with_md5_etags(
    cft_sandbox: SandboxCft, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    result = materialize_delivery(instance, storage, cft_delivery(cft_sandbox, ledger_path))
    assert result.success
    assert receipt_check(result).passed

    md5s = manifest_md5s(storage)
    objects = cft_sandbox.list_objects()
    assert set(objects) == {f"{INTEGRATION}/{name}" for name in md5s}
    for name, md5 in md5s.items():
        body, etag = cft_sandbox.get_object_bytes(f"{INTEGRATION}/{name}")
        assert etag == md5 == hashlib.md5(body).hexdigest()
        assert body == (Path(storage.outbox(BATCH)) / name).read_bytes()
    assert len(cft_puts(cft_sandbox)) == SAMPLE_FILES  # one single-part PUT each
    assert cft_sandbox.multipart_refusals == 0
    meta = receipts_metadata(result)
    assert meta["files_delivered"] == SAMPLE_FILES and meta["transport"] == "cft"
    with Ledger(ledger_url(ledger_path)) as ledger:
        receipts = ledger.receipts(BATCH)
    assert {r.remote_path for r in receipts} == {
        f"s3://{cft_sandbox.bucket}/{INTEGRATION}/{name}" for name in md5s
    }


# -- 3. quota exhausted half-way ------------------------------------------------------------


def _not_at_the_end_of_an_hour(margin_seconds: float = 20.0) -> None:
    """The quota assertions need the first runs inside one clock hour."""
    now = datetime.now(UTC)
    left = (hour_window(now)[1] - now).total_seconds()
    if left < margin_seconds:
        time.sleep(left + 0.5)


def test_quota_defers_to_the_next_hour_and_a_later_run_sends_the_rest_once(
    sftp_server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    delivery = sftp_delivery(sftp_server, tmp_path / "known_hosts", ledger_path, files_per_hour=3)
    names = [f.name for f in outgoing_files(storage, BATCH)]
    _not_at_the_end_of_an_hour()
    hour_end = hour_window(datetime.now(UTC))[1]

    first = materialize_delivery(instance, storage, delivery)
    assert first.success
    meta = receipts_metadata(first)
    assert meta["files_delivered"] == 3 and meta["files_deferred"] == 5
    assert meta["all_delivered"] is False
    assert datetime.fromisoformat(meta["next_send_after"]) == hour_end
    assert meta["quota_files_left_this_hour"] == 0
    check = receipt_check(first)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["without_receipt"].value == names[3:]
    after_first = drop_state(sftp_server.root_dir)
    assert sorted(after_first) == sorted(names[:3])
    logins = sftp_server.successful_logins

    # Same hour, same quota: nothing more goes, nothing is re-sent.
    second = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(second)
    assert meta["files_already_delivered"] == 3 and meta["files_deferred"] == 5
    assert datetime.fromisoformat(meta["next_send_after"]) == hour_end
    assert drop_state(sftp_server.root_dir) == after_first
    assert sftp_server.successful_logins == logins

    # "In the next hour" (the resource has no clock): the same delivery code, transport and
    # ledger with `now` one minute into the next hour sends the next 3, defers the last 2.
    later = hour_end + timedelta(minutes=1)
    files = outgoing_files(storage, BATCH)
    with delivery.session() as (transport, ledger):
        report = deliver_batch(
            files,
            BATCH,
            transport,
            ledger,
            delivery.quota_limits(),
            now=lambda: later,
            run_id="next-hour",
        )
    assert report.counts["already_delivered"] == 3
    assert report.counts["delivered"] == 3 and report.counts["deferred"] == 2
    assert report.next_not_before == hour_end + timedelta(hours=1)
    assert {e.uploaded_at for e in report.entries[3:6]} == {later}

    # A later run of the asset, with the quota raised, sends what is left, once.
    raised = sftp_delivery(sftp_server, tmp_path / "known_hosts", ledger_path)  # 20 an hour
    last = materialize_delivery(instance, storage, raised)
    assert last.success
    meta = receipts_metadata(last)
    assert meta["files_already_delivered"] == 6 and meta["files_delivered"] == 2
    assert meta["all_delivered"] is True and "next_send_after" not in meta
    assert receipt_check(last).passed
    final = drop_state(sftp_server.root_dir)
    assert {n: md5 for n, (_, _, md5) in final.items()} == manifest_md5s(storage)
    # The first three were never sent again (a re-send renames a new inode over the name).
    assert {n: final[n] for n in after_first} == after_first
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert sorted(r.file_name for r in ledger.receipts(BATCH)) == sorted(names)
        assert ledger.in_flight(BATCH) == []


def test_daily_byte_quota_defers_to_midnight_utc(
    sftp_server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    """A day's bytes exactly used up by the first three files: the rest wait for midnight."""
    files = outgoing_files(storage, BATCH)
    budget = sum(f.size for f in files[:3])
    delivery = sftp_delivery(
        sftp_server, tmp_path / "known_hosts", tmp_path / "l.sqlite", bytes_per_day=str(budget)
    )
    result = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(result)
    assert meta["files_delivered"] == 3 and meta["files_deferred"] == SAMPLE_FILES - 3
    assert meta["quota_bytes_left_today"] == 0
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert datetime.fromisoformat(meta["next_send_after"]) == midnight + timedelta(days=1)
    check = receipt_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert sorted(drop_state(sftp_server.root_dir)) == sorted(f.name for f in files[:3])


def _rebuild_first_file_under_its_name(storage: BatchStorage) -> str:
    """A rebuilt file reusing a delivered name (e.g. the name register was lost): other
    bytes, other md5, manifest updated to match."""
    outbox = Path(storage.outbox(BATCH))
    manifest = json.loads((outbox / "manifest.json").read_text())
    entry = manifest["files"][0]
    data = gzip.compress(b"Version: 3\n\nrebuilt 1:0\n")
    (outbox / entry["name"]).write_bytes(data)
    entry.update(bytes=len(data), md5=hashlib.md5(data).hexdigest())
    (outbox / "manifest.json").write_text(json.dumps(manifest))
    return str(entry["name"])


def _deliver_then_rebuild(
    server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> tuple[str, dg.ExecuteInProcessResult, dict[str, tuple[int, int, str]]]:
    delivery = sftp_delivery(server, tmp_path / "known_hosts", tmp_path / "l.sqlite")
    assert (
        receipts_metadata(materialize_delivery(instance, storage, delivery))["files_delivered"]
        == SAMPLE_FILES
    )
    landed = drop_state(server.root_dir)
    name = _rebuild_first_file_under_its_name(storage)
    return name, materialize_delivery(instance, storage, delivery), landed


def test_rebuilt_file_under_a_delivered_name_is_not_sent_again(
    sftp_server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    """FileIdentifier is unique across uploads (S2S-HDR): MediaMath keeps what it has."""
    name, result, landed = _deliver_then_rebuild(sftp_server, storage, instance, tmp_path)
    meta = receipts_metadata(result)
    assert meta["files_already_delivered"] == SAMPLE_FILES - 1
    assert meta["files_needs_attention"] == 1
    assert drop_state(sftp_server.root_dir) == landed
    [row] = [r for r in table_rows(meta["receipts"]) if r["name"] == name]
    assert row["status"] == "needs_attention"
    assert f"a file named {name} was delivered before with md5" in str(row["message"])


def test_rebuilt_file_under_a_delivered_name_is_flagged(
    sftp_server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    name, result, _ = _deliver_then_rebuild(sftp_server, storage, instance, tmp_path)
    warned = [m for m in run_messages(instance, result.run_id) if name in m and "differs" in m]
    assert warned and not receipt_check(result).passed


# -- 4. dry run -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sftp", "cft"])
def test_dry_run_sends_nothing_and_writes_no_receipt(
    transport: str,
    storage: BatchStorage,
    instance: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    if transport == "sftp":
        server: SandboxSftpServer = request.getfixturevalue("sftp_server")
        delivery = sftp_delivery(server, tmp_path / "known_hosts", ledger_path, dry_run="true")
    else:
        sandbox: SandboxCft = request.getfixturevalue("cft_sandbox")
        delivery = cft_delivery(sandbox, ledger_path, dry_run="true")

    result = materialize_delivery(instance, storage, delivery)
    assert result.success
    meta = receipts_metadata(result)
    assert meta["dry_run"] is True and meta["files_dry_run"] == SAMPLE_FILES
    assert meta["all_delivered"] is False and meta["files_with_receipt"] == 0
    check = receipt_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert ledger.receipts(BATCH) == [] and ledger.in_flight(BATCH) == []
    if transport == "sftp":
        assert drop_state(server.root_dir) == {}
        assert server.login_attempts == 0
    else:
        assert cft_sandbox_untouched(sandbox)


def cft_sandbox_untouched(sandbox: SandboxCft) -> bool:
    return (
        sandbox.list_objects() == {}
        and sandbox.credentials_requests == 0
        and not [
            r
            for r in sandbox.seen
            if r.access_key_id in {c["accessKeyID"] for c in sandbox.issued_credentials}
        ]
    )


# -- 5. wrong password ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sftp", "cft"])
def test_wrong_password_fails_without_retry_and_without_receipt(
    transport: str,
    storage: BatchStorage,
    instance: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    if transport == "sftp":
        server: SandboxSftpServer = request.getfixturevalue("sftp_server")
        delivery = sftp_delivery(
            server, tmp_path / "known_hosts", ledger_path, password=WRONG_PASSWORD
        )
    else:
        sandbox: SandboxCft = request.getfixturevalue("cft_sandbox")
        delivery = cft_delivery(sandbox, ledger_path, password=WRONG_PASSWORD)

    result = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(result)
    assert meta["files_failed"] == 1 and meta["files_not_attempted"] == SAMPLE_FILES - 1
    assert meta["all_delivered"] is False and meta["files_with_receipt"] == 0
    check = receipt_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert ledger.receipts(BATCH) == [] and ledger.in_flight(BATCH) == []
    messages = "\n".join(run_messages(instance, result.run_id))
    assert "AuthenticationFailed" in messages
    assert WRONG_PASSWORD not in messages
    if transport == "sftp":
        assert server.login_attempts == 1  # never retried
        assert server.successful_logins == 0
        assert drop_state(server.root_dir) == {}
    else:
        assert sandbox.credentials_requests == 1  # 401 is never retried
        assert sandbox.list_objects() == {}


# -- 6. wrong host key ----------------------------------------------------------------------


def test_wrong_host_key_is_refused_once_naming_the_fingerprint(
    sftp_server: SandboxSftpServer,
    storage: BatchStorage,
    instance: Any,
    tmp_path: Path,
    sftp_connections: list[tuple[str, int]],
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    delivery = sftp_delivery(sftp_server, tmp_path / "known_hosts", ledger_path)
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    (tmp_path / "known_hosts").write_text(
        f"[{sftp_server.host}]:{sftp_server.port} {other[0]} {other[1]}\n"
    )

    result = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(result)
    assert meta["files_failed"] == 1 and meta["files_not_attempted"] == SAMPLE_FILES - 1
    assert not receipt_check(result).passed
    assert receipt_check(result).severity == dg.AssetCheckSeverity.ERROR
    assert sftp_connections == [(sftp_server.host, sftp_server.port)]  # no retry
    assert sftp_server.login_attempts == 0  # the password never left the machine
    assert drop_state(sftp_server.root_dir) == {}
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert ledger.receipts(BATCH) == [] and ledger.in_flight(BATCH) == []

    fingerprint = sha256_fingerprint_of(sftp_server.host_key_line)
    wrong = sha256_fingerprint_of(" ".join(other[:2]))
    warnings = [m for m in run_messages(instance, result.run_id) if "HostKeyRejected" in m]
    assert warnings, "the run's events do not say the host key was rejected"
    assert any(fingerprint in m and f"{sftp_server.host}:{sftp_server.port}" in m for m in warnings)
    assert not any(wrong in m for m in run_messages(instance, result.run_id))


# -- 7. no secret anywhere ------------------------------------------------------------------


def _scan(haystacks: dict[str, str | bytes], secrets: dict[str, str]) -> list[str]:
    found = []
    for where, text in haystacks.items():
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        for label, secret in secrets.items():
            if secret.encode() in data:
                found.append(f"{label} in {where}")
    return found


def _instance_texts(instance: Any) -> dict[str, str]:
    texts: dict[str, str] = {}
    for run in instance.get_runs():
        texts[f"run {run.run_id}"] = serialize_value(run) + str(run)
        for i, entry in enumerate(instance.all_logs(run.run_id)):
            texts[f"run {run.run_id} event {i}"] = "\n".join(
                [
                    entry.message or "",
                    entry.user_message or "",
                    serialize_value(entry.dagster_event) if entry.dagster_event else "",
                    str(entry.dagster_event),
                    serialize_value(entry),
                ]
            )
    return texts


def _file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root`, plus the zlib-compressed blobs of SQLite files unpacked
    (Dagster stores job snapshots compressed in runs.db)."""
    found: dict[str, bytes] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        found[str(path)] = path.read_bytes()
        if found[str(path)].startswith(b"SQLite format 3"):
            found.update(_sqlite_blobs(path))
    return found


def _sqlite_blobs(path: Path) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for n, row in enumerate(db.execute(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            blobs[f"{path}:{table}:{n}"] = zlib.decompress(value)
    return blobs


def test_no_password_secret_key_or_session_token_in_events_logs_or_files(
    sftp_server: SandboxSftpServer,
    cft_sandbox: SandboxCft,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Passwords configured the way `default_delivery` does it (dg.EnvVar): build + delivery
    over SFTP and CFT, and both refused logins, leave no secret in Dagster's event log, run
    records and job snapshots, the Python logs (DEBUG) or any file of the run."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MM_SFTP_PASSWORD", SFTP_PASSWORD)
    monkeypatch.setenv("MM_CFT_TEST_PASSWORD", CFT_PASSWORD)
    monkeypatch.setenv("MM_WRONG_TEST_PASSWORD", WRONG_PASSWORD)
    shutil.copytree(SAMPLE_BATCH, tmp_path / "export" / BATCH)
    state = tmp_path / "state"
    state.mkdir()
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )

    def sftp(ledger: str, password: str) -> MediaMathDelivery:
        return sftp_delivery(
            sftp_server, state / "known_hosts", state / ledger, password=dg.EnvVar(password)
        )

    def cft(ledger: str, password: str) -> MediaMathDelivery:
        return cft_delivery(cft_sandbox, state / ledger, password=dg.EnvVar(password))

    with new_instance(tmp_path / "dagster") as instance:
        instance.add_dynamic_partitions(export_batches.name, [BATCH])
        results = [
            materialize_build_and_delivery(
                instance, storage, sftp("sftp.sqlite", "MM_SFTP_PASSWORD")
            ),
            materialize_delivery(instance, storage, cft("cft.sqlite", "MM_CFT_TEST_PASSWORD")),
            # the error paths too: a refused login must not echo what was sent
            materialize_delivery(
                instance, storage, sftp("wrong1.sqlite", "MM_WRONG_TEST_PASSWORD")
            ),
            materialize_delivery(instance, storage, cft("wrong2.sqlite", "MM_WRONG_TEST_PASSWORD")),
        ]
        assert receipts_metadata(results[0])["files_delivered"] == SAMPLE_FILES
        assert receipts_metadata(results[1])["files_delivered"] == SAMPLE_FILES
        assert receipts_metadata(results[2])["files_failed"] == 1
        assert receipts_metadata(results[3])["files_failed"] == 1
        haystacks: dict[str, str | bytes] = dict(_instance_texts(instance))

    assert cft_sandbox.issued_credentials, "the CFT run fetched no credentials"
    secrets = {
        "sftp password": SFTP_PASSWORD,
        "cft password": CFT_PASSWORD,
        "wrong password": WRONG_PASSWORD,
    }
    for i, issued in enumerate(cft_sandbox.issued_credentials):
        secrets[f"secret key #{i}"] = issued["secretAccessKey"]
        secrets[f"session token #{i}"] = issued["sessionToken"]

    haystacks["python logs"] = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    haystacks["caplog text"] = caplog.text
    for folder in ("outbox", "work", "state", "dagster"):
        haystacks.update(_file_bytes(tmp_path / folder))
    # The scan saw the chatty DEBUG loggers and Dagster's compressed snapshots.
    loggers = {r.name.split(".")[0] for r in caplog.records}
    assert {"botocore", "paramiko", "mm_assets"} <= loggers
    assert any(":snapshots:" in where for where in haystacks)
    assert _scan(haystacks, secrets) == []


@pytest.mark.xfail(
    reason="KNOWN LIMITATION (README, Settings): MediaMathDelivery.password given as a literal "
    "instead of dg.EnvVar is "
    "persisted as the config default in the run's job snapshot (runs.db `snapshots`) and "
    "shown in the Dagster UI; only dg.EnvVar keeps it out. README: no password is written "
    "to files.",
    strict=True,
)
def test_literal_password_is_not_persisted_in_the_job_snapshot(
    sftp_server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    delivery = sftp_delivery(sftp_server, tmp_path / "known_hosts", tmp_path / "l.sqlite")
    result = materialize_delivery(instance, storage, delivery)
    assert receipts_metadata(result)["files_delivered"] == SAMPLE_FILES
    run = instance.get_run_by_id(result.run_id)
    snapshot = serialize_value(instance.get_job_snapshot(run.job_snapshot_id))
    assert SFTP_PASSWORD not in snapshot


# -- 8. crash between upload and receipt ----------------------------------------------------


def _crash_after_upload(
    delivery: MediaMathDelivery, storage: BatchStorage, age: timedelta = timedelta(0)
) -> str:
    """What a run that died after `transport.upload` and before `ledger.complete` leaves
    (its in-flight row started `age` ago)."""
    file = outgoing_files(storage, BATCH)[0]
    with delivery.session() as (transport, ledger):
        decision = ledger.reserve(
            file,
            BATCH,
            transport.name,
            datetime.now(UTC) - age,
            QuotaLimits(),
            run_id="crashed-run",
        )
        assert decision.send
        transport.upload(file)
    return file.name


def test_cft_crash_between_upload_and_receipt_is_reconciled_not_resent(
    cft_sandbox: SandboxCft, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    delivery = cft_delivery(cft_sandbox, ledger_path)
    name = _crash_after_upload(delivery, storage)
    assert len(cft_puts(cft_sandbox)) == 1

    result = materialize_delivery(instance, storage, delivery)
    assert result.success
    meta = receipts_metadata(result)
    assert meta["files_reconciled"] == 1 and meta["files_delivered"] == SAMPLE_FILES - 1
    assert receipt_check(result).passed
    puts = cft_puts(cft_sandbox)
    assert len(puts) == SAMPLE_FILES and len(set(puts)) == SAMPLE_FILES  # each sent once
    assert sum(p.endswith("/" + name) for p in puts) == 1
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert ledger.receipt(name) is not None and ledger.in_flight(BATCH) == []


def test_sftp_crash_between_upload_and_receipt_with_file_in_drop_is_reconciled(
    sftp_server: SandboxSftpServer, storage: BatchStorage, instance: Any, tmp_path: Path
) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    delivery = sftp_delivery(sftp_server, tmp_path / "known_hosts", ledger_path)
    name = _crash_after_upload(delivery, storage)
    before = drop_state(sftp_server.root_dir)
    assert list(before) == [name]

    result = materialize_delivery(instance, storage, delivery)
    assert result.success
    meta = receipts_metadata(result)
    assert meta["files_reconciled"] == 1 and meta["files_delivered"] == SAMPLE_FILES - 1
    assert receipt_check(result).passed
    after = drop_state(sftp_server.root_dir)
    assert after[name] == before[name]  # not sent again
    assert {n: md5 for n, (_, _, md5) in after.items()} == manifest_md5s(storage)
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert ledger.receipt(name) is not None and ledger.in_flight(BATCH) == []


@pytest.mark.parametrize(
    ("age", "status", "severity"),
    [
        (timedelta(minutes=5), "in_progress", dg.AssetCheckSeverity.WARN),
        (timedelta(hours=3), "needs_attention", dg.AssetCheckSeverity.ERROR),
    ],
    ids=["recent", "stale"],
)
def test_sftp_crash_with_file_taken_from_drop_is_never_resent_blindly(
    age: timedelta,
    status: str,
    severity: dg.AssetCheckSeverity,
    sftp_server: SandboxSftpServer,
    storage: BatchStorage,
    instance: Any,
    tmp_path: Path,
) -> None:
    """Absent from the SFTP drop: maybe never landed, maybe taken by MediaMath. A recent row
    may belong to a run still uploading (in_progress); a stale one needs a human."""
    ledger_path = tmp_path / "ledger.sqlite"
    delivery = sftp_delivery(sftp_server, tmp_path / "known_hosts", ledger_path)
    name = _crash_after_upload(delivery, storage, age)
    (sftp_server.root_dir / name).unlink()  # MediaMath read it and moved it away

    result = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(result)
    assert meta[f"files_{status}"] == 1
    assert meta["files_delivered"] == SAMPLE_FILES - 1
    check = receipt_check(result)
    assert not check.passed and check.severity == severity
    assert check.metadata["without_receipt"].value == [name]
    assert name not in drop_state(sftp_server.root_dir)  # not sent again
    with Ledger(ledger_url(ledger_path)) as ledger:
        assert ledger.receipt(name) is None
        assert [f.file_name for f in ledger.in_flight(BATCH)] == [name]
