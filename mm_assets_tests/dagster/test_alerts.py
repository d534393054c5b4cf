"""Alerts reach a local webhook (Slack-compatible JSON) through Dagster's own sensors: a file
MediaMath rejected, files not approved by their build's checks, a failed run. Real peers: the
asyncssh SFTP drop, the sandbox processing log, a local HTTP server; sensors are evaluated the
way the daemon does (`build_sensor_context`, `build_run_status_sensor_context`)."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest

from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.alerts.sensors import AlertWebhook, alert_on_failed_checks, alert_on_run_failure
from mm_assets.defs.delivery.assets import every_file_has_a_receipt, upload_receipts
from mm_assets.defs.processing_log.checks import every_file_accepted_by_mediamath
from mm_assets.defs.resources import BatchStorage
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.delivery.test_delivery_assets import BATCH, SFTP_PASSWORD
from mm_assets_tests.processing_log.test_processing_log_dagster import (
    break_header,
    log_server,
    processing_log,
)


class Webhook:
    """A local incoming-webhook endpoint that keeps every JSON body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts(self) -> list[str]:
        return [body["text"] for body in self.bodies]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def tick_check_alerts(instance: Any, alerts: AlertWebhook, cursor: str | None) -> str | None:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"alerts": alerts}
    )
    alert_on_failed_checks(context)
    return context.cursor


def test_a_rejected_file_and_unapproved_files_each_post_one_alert(
    instance: Any,
    storage: BatchStorage,
    delivery: Any,
    sftp_server: SandboxSftpServer,
    webhook: Webhook,
) -> None:
    alerts = AlertWebhook(url=webhook.url)
    cursor = tick_check_alerts(instance, alerts, None)
    assert webhook.bodies == []

    # MediaMath rejects one file (S2S-HDR broken past the checks, as in a shared bug), and
    # another changed in the outbox after its checks is not approved.
    names = [f.name for f in read_manifest(storage.outbox(BATCH))]
    break_header(storage, names[0])
    changed = storage.outbox(BATCH) / names[1]
    changed.write_bytes(gzip.compress(gzip.decompress(changed.read_bytes()) + b"u 1:0\n"))
    with log_server(sftp_server, password=sftp_server.password) as server:
        result = dg.materialize(
            [upload_receipts, every_file_has_a_receipt, every_file_accepted_by_mediamath],
            partition_key=BATCH,
            instance=instance,
            resources={
                "storage": storage,
                "delivery": delivery,
                "processing_log": processing_log(server),
            },
        )
    assert not any(e.passed for e in result.get_asset_check_evaluations())
    cursor = tick_check_alerts(instance, alerts, cursor)

    [rejected] = [t for t in webhook.texts() if "every_file_accepted_by_mediamath" in t]
    assert f"batch {BATCH}" in rejected and "files_rejected=1" in rejected
    assert f"{names[0]}: Invalid headers" in rejected
    [unapproved] = [t for t in webhook.texts() if "every_file_has_a_receipt" in t]
    assert f"batch {BATCH}" in unapproved and "without_receipt=1" in unapproved
    # Nothing is posted twice, and the webhook's token never shows in what was sent.
    tick_check_alerts(instance, alerts, cursor)
    assert len(webhook.texts()) == len(set(webhook.texts()))
    assert all(SFTP_PASSWORD not in t and "secret-token" not in t for t in webhook.texts())


def test_a_failed_run_posts_one_alert(instance: Any, webhook: Webhook) -> None:
    @dg.op
    def unreachable_drop() -> None:
        raise dg.Failure("the SFTP drop refused the connection")

    @dg.job
    def deliver_s2s_files() -> None:
        unreachable_drop()

    result = deliver_s2s_files.execute_in_process(
        instance=instance, raise_on_error=False, tags={"dagster/partition": BATCH}
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"alerts": AlertWebhook(url=webhook.url)},
    ).for_run_failure()
    alert_on_run_failure(context)
    [text] = webhook.texts()
    assert result.run_id in text and f"batch {BATCH}" in text and "failed" in text
