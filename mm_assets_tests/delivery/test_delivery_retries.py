"""A transient delivery failure is retried by itself, with bounded backoff; an authentication
failure is not retried.

Real faults over real sockets: the asyncssh SFTP drop is stopped (connection refused), then
started again on the same port; the `deferred_deliveries` sensor, evaluated the way the daemon
does, asks for the retry run once `next_send_after` has come.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from mm_assets.defs.delivery.sensors import deferred_deliveries
from mm_assets.defs.resources import BatchStorage
from mm_assets.delivery.retries import RetryPolicy
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.delivery.test_delivery_assets import (
    BATCH,
    SAMPLE_FILES,
    materialize_delivery,
    receipt_check,
    receipts_metadata,
    sftp_delivery,
)
from mm_assets_tests.delivery.test_gating import delivered_names


def retry_rows(ledger_url: str) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(ledger_url.removeprefix("sqlite:///")) as db:
        return db.execute(
            "SELECT file_name, failures, next_attempt_at FROM delivery_retries"
        ).fetchall()


def sensor_requests(instance: Any) -> list[dg.RunRequest]:
    result = deferred_deliveries(dg.build_sensor_context(instance=instance))
    return list(result.run_requests or [])


def test_a_failed_upload_is_retried_then_delivered(
    instance: Any, storage: BatchStorage, sftp_server: SandboxSftpServer, tmp_path: Path
) -> None:
    delivery = sftp_delivery(
        sftp_server,
        tmp_path / "known_hosts",
        tmp_path / "ledger.sqlite",
        connect_attempts=1,
        backoff_seconds=0.0,
        retry_first_delay_seconds=0,  # due at once: the test needs no clock
    )
    sftp_server.stop()  # MediaMath's drop is down

    failed = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(failed)
    assert meta["files_failed"] == SAMPLE_FILES
    assert meta["next_send_after"]  # visible when the retry goes
    rows = retry_rows(delivery.ledger_url)
    assert len(rows) == SAMPLE_FILES and {failures for _, failures, _ in rows} == {1}
    [request] = sensor_requests(instance)
    assert request.partition_key == BATCH

    sftp_server.start()  # back on the same port, same host key
    again = materialize_delivery(instance, storage, delivery)
    meta = receipts_metadata(again)
    assert meta["files_delivered"] == SAMPLE_FILES and "next_send_after" not in meta
    assert len(delivered_names(sftp_server)) == SAMPLE_FILES
    assert retry_rows(delivery.ledger_url) == []
    assert receipt_check(again).passed
    assert sensor_requests(instance) == []


def test_refused_credentials_are_not_retried_and_fail_the_receipt_check(
    instance: Any, storage: BatchStorage, sftp_server: SandboxSftpServer, tmp_path: Path
) -> None:
    delivery = sftp_delivery(
        sftp_server, tmp_path / "known_hosts", tmp_path / "ledger.sqlite", connect_attempts=1
    )
    sftp_server.fail_logins = 100

    result = materialize_delivery(instance, storage, delivery)

    meta = receipts_metadata(result)
    assert meta["files_failed"] == 1 and meta["files_not_attempted"] == SAMPLE_FILES - 1
    assert "next_send_after" not in meta
    assert retry_rows(delivery.ledger_url) == []
    check = receipt_check(result)
    assert not check.passed and check.severity is dg.AssetCheckSeverity.ERROR
    assert sensor_requests(instance) == []


def test_the_backoff_doubles_and_is_bounded() -> None:
    policy = RetryPolicy(first_delay=timedelta(minutes=1), max_delay=timedelta(minutes=5))
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
        timedelta(minutes=5),
    ]
