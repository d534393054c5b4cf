"""The batch report, assembled from what the steps left (work folder, outbox manifest, ledger,
processing-log status store) with no Dagster in the way, and `mm-assets status` printing it.

The sample batch is built through Dagster once (fixtures), then delivered here by the core's
`deliver_batch` over a real SFTP drop at a fixed instant, with a 3-files-per-hour quota so that
five files wait for the next hour (S2S-QUOTA); MediaMath's answers are written into the status
store as the poller would (S2S-LOG).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mm_assets import cli
from mm_assets.core.quota import QuotaLimits, hour_window
from mm_assets.core.s2s_writer import read_manifest
from mm_assets.defs.delivery.assets import outgoing_files
from mm_assets.defs.delivery.resources import SftpDelivery
from mm_assets.defs.resources import BatchStorage
from mm_assets.delivery.deliver import deliver_batch
from mm_assets.delivery.ledger import Ledger
from mm_assets.processing_log.status_store import FileState, StatusStore
from mm_assets.reporting.batch_report import (
    BatchReport,
    Delivery,
    assemble_batch_report,
    known_batches,
    render_batch_report,
)
from mm_assets.reporting.quota_view import quota_snapshot, waiting_files
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.dagster.test_build_assets import SAMPLE_QUARANTINED
from mm_assets_tests.delivery.test_delivery_assets import BATCH, SAMPLE_FILES

NOW = datetime(2026, 11, 20, 12, 10, 0, tzinfo=UTC)
HOUR_END = hour_window(NOW)[1]
LIMITS = QuotaLimits(files_per_hour=3)
SENT = 3


def deliver_three_and_answer(storage: BatchStorage, delivery: SftpDelivery) -> list[str]:
    """Deliver the batch at NOW under LIMITS; MediaMath accepts the first file, rejects the
    second, has not answered about the third. Returns the manifest's names."""
    names = [f.name for f in read_manifest(storage.outbox(BATCH))]
    with delivery.session() as (transport, ledger):
        deliver_batch(
            outgoing_files(storage, BATCH), BATCH, transport, ledger, LIMITS, now=lambda: NOW
        )
    with StatusStore(delivery.ledger_url) as store:
        for name in names[:SENT]:
            store.register(name, BATCH, "b1", "sftp", 1, NOW, NOW + timedelta(hours=6))
        accepted, rejected = store.get(names[0]), store.get(names[1])
        assert accepted is not None and rejected is not None
        store.save(replace(accepted, status=FileState.ACCEPTED, message="OK", answered_at=NOW))
        store.save(
            replace(rejected, status=FileState.REJECTED, message="Invalid headers", answered_at=NOW)
        )
    return names


def report_of(storage: BatchStorage, delivery: SftpDelivery, now: datetime = NOW) -> BatchReport:
    with Ledger(delivery.ledger_url) as ledger, StatusStore(delivery.ledger_url) as store:
        return assemble_batch_report(
            storage.work_for(BATCH),
            ledger=ledger,
            store=store,
            limits=LIMITS,
            now=now,
        )


def test_the_report_answers_did_my_audience_get_to_mediamath(
    storage: BatchStorage, delivery: SftpDelivery, sftp_server: SandboxSftpServer
) -> None:
    names = deliver_three_and_answer(storage, delivery)
    report = report_of(storage, delivery)

    # Rows: every row read is accepted or quarantined, with its reason (invariant 1).
    assert report.rows_read == report.rows_accepted + report.rows_quarantined
    assert report.rows_quarantined == SAMPLE_QUARANTINED
    assert sum(report.quarantine_reasons.values()) == SAMPLE_QUARANTINED
    assert sum(c["rows"] for c in report.input_files.values()) == report.rows_read
    # Users and loads per client and cookie/mobile family, as the files carry them.
    assert {(f.client, f.ids) for f in report.families} == {(f.client, f.ids) for f in report.files}
    assert sum(f.loads for f in report.families) == sum(f.loads for f in report.files)
    assert {f.ids for f in report.families} == {"cookie", "mobile"}

    # Files by name with bytes; the three sent ones landed, when and how is recorded.
    manifest = {f.name: f for f in read_manifest(storage.outbox(BATCH))}
    assert [f.name for f in report.files] == names and len(names) == SAMPLE_FILES
    assert all(f.bytes == manifest[f.name].bytes for f in report.files)
    sent = [f for f in report.files if f.delivery == Delivery.SENT]
    assert [f.name for f in sent] == names[:SENT]
    landed = {p.name for p in Path(sftp_server.root_dir).rglob("*.log.gz")}
    assert landed == set(names[:SENT])
    assert all(f.transport == "sftp" and f.sent_at == NOW and f.remote_path for f in sent)

    # The rest waits for the next clock hour, and says so (S2S-QUOTA).
    waiting = [f for f in report.files if f.delivery != Delivery.SENT]
    assert all(f.delivery == Delivery.DEFERRED and f.not_before == HOUR_END for f in waiting)
    assert all("S2S-QUOTA" in f.note for f in waiting)
    assert report.next_send_after == HOUR_END
    assert report.quota.files_this_hour == SENT and report.quota.files_left_this_hour == 0

    # MediaMath's verdict and message per file (S2S-LOG).
    said = {f.name: (f.mediamath, f.mediamath_message) for f in report.files}
    assert said[names[0]] == ("accepted", "OK")
    assert said[names[1]] == ("rejected", "Invalid headers")
    assert said[names[2]][0] == "pending" and said[names[3]] == ("", "")
    assert not report.accepted and "Invalid headers" in report.verdict

    text = render_batch_report(report)
    assert all(name in text for name in names)
    assert "deferred until 2026-11-20 13:00:00 UTC" in text
    assert "rejected: Invalid headers" in text
    assert f"{SENT} of 3 files this hour" in text


def test_in_the_next_hour_the_report_projects_what_fits_now(
    storage: BatchStorage, delivery: SftpDelivery
) -> None:
    names = deliver_three_and_answer(storage, delivery)
    later = report_of(storage, delivery, now=HOUR_END + timedelta(minutes=1))
    by_name = {f.name: f for f in later.files}
    # A new hour: room for three more; the last two still wait for the hour after.
    assert [by_name[n].delivery for n in names[SENT : 2 * SENT]] == [Delivery.FITS_NOW] * SENT
    assert all(by_name[n].delivery == Delivery.DEFERRED for n in names[2 * SENT :])
    assert by_name[names[-1]].not_before == HOUR_END + timedelta(hours=1)


def test_the_quota_view_counts_waiting_and_deferred_files_across_batches(
    storage: BatchStorage, delivery: SftpDelivery
) -> None:
    names = deliver_three_and_answer(storage, delivery)
    manifest = {f.name: f.bytes for f in read_manifest(storage.outbox(BATCH))}
    with Ledger(delivery.ledger_url) as ledger:
        waiting = waiting_files(Path(storage.outbox_dir), ledger)
        assert [name for name, _ in waiting] == names[SENT:]
        full = quota_snapshot(ledger, LIMITS, NOW, waiting)
        next_hour = quota_snapshot(ledger, LIMITS, HOUR_END, waiting)
    assert full.usage.files_this_hour == SENT
    assert full.files_waiting == full.files_deferred == SAMPLE_FILES - SENT
    assert full.bytes_deferred == sum(manifest[n] for n in names[SENT:])
    assert full.next_window_with_room == HOUR_END
    assert next_hour.usage.files_this_hour == 0 and next_hour.next_window_with_room == HOUR_END
    assert next_hour.files_deferred == SAMPLE_FILES - 2 * SENT
    # The day's bytes count every receipt of the UTC day, in the next hour too.
    assert next_hour.usage.bytes_today == sum(manifest[n] for n in names[:SENT])


@pytest.fixture
def cli_settings(
    storage: BatchStorage, delivery: SftpDelivery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "cli_home"
    home.mkdir()
    for key, value in {
        "DAGSTER_HOME": str(home),
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
    }.items():
        monkeypatch.setenv(key, value)


def test_mm_assets_status_prints_the_latest_batch_and_lists_batches(
    storage: BatchStorage,
    delivery: SftpDelivery,
    cli_settings: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = deliver_three_and_answer(storage, delivery)
    assert cli.main(["status"]) == 0  # the latest batch: the only one here
    out = capsys.readouterr().out
    assert out.startswith(f"batch {BATCH}, built ")
    assert all(name in out for name in names)
    assert "rejected: Invalid headers" in out and "sftp" in out
    assert f"{SAMPLE_QUARANTINED:,} quarantined" in out

    assert cli.main(["status", BATCH]) == 0
    assert capsys.readouterr().out == out

    assert cli.main(["status", "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{BATCH}: {SAMPLE_FILES} file(s)")
    assert f"{SENT} sent, {SAMPLE_FILES - SENT} not sent" in lines[0]
    assert lines[-1] == "1 batch(es)"

    assert cli.main(["status", "no_such_batch"]) == 2
    assert "nothing is known about batch no_such_batch" in capsys.readouterr().err
    with Ledger(delivery.ledger_url) as ledger:
        assert known_batches(storage.roots(), ledger) == [BATCH]
