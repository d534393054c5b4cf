"""The fault matrix (issue 10): each fault done for real, each outcome asserted as a user sees it.

Real faults: worker processes killed with SIGKILL at a point the SFTP server holds them at,
the ledger file deleted, two deliveries started together, a server that refuses
posix-rename, hostile HTTP servers for the processing log, a CFT credentials endpoint that
is down. Outcomes: every file in MediaMath's drop or bucket exactly once (the server counts
renames), complete, under its final name; nothing half-written left; receipts consistent with
the remote; no secret in files or output. The README's "Reliability" section prints this
matrix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mm_assets.clients.mediamath_cft import MediaMathCft
from mm_assets.clients.mediamath_sftp import is_our_temporary
from mm_assets.clients.transport import DeliveryError, OutgoingFile
from mm_assets.core.quota import QuotaLimits, hour_window
from mm_assets.delivery.deliver import Status, deliver_batch
from mm_assets.delivery.ledger import Ledger
from mm_assets.sandbox.cft_server import SandboxCft
from mm_assets.sandbox.processing_log_server import SandboxProcessingLog
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.faults.world import BATCH, FILE_BYTES, PROJECT, World, secret_free, sigkill

HOLD_TIMEOUT = 60.0  # the worker reaching the hold point; generous for a loaded CI machine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with SandboxSftpServer(tmp_path / "drop") as sftp:
        log = SandboxProcessingLog([sftp.root_dir], sftp.username, sftp.password)
        with log:
            yield World(tmp_path, sftp, log)
        sftp.faults.release.set()


def _lose_ledger(world: World) -> None:
    for path in world.ledger_path.parent.glob("ledger.sqlite*"):
        path.unlink()


def _statuses(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {e.name: str(e.status) for e in report.entries}


def _receipts(world: World) -> dict[str, int]:
    with Ledger(world.ledger_path) as ledger:
        return {r.file_name: r.bytes for r in ledger.receipts(BATCH)}


def _away_from_the_hour_end() -> None:
    # The quota counts per clock hour: keep both deliveries of a test in one hour.
    _, end = hour_window(datetime.now(UTC))
    left = (end - datetime.now(UTC)).total_seconds()
    if left < 60:
        time.sleep(left + 1)


# -- lost ledger ---------------------------------------------------------------------------


def test_lost_ledger_sftp_nothing_mediamath_has_is_sent_again(world: World) -> None:
    files = world.files(3)
    assert set(_statuses(world.deliver(files, run_id="first")).values()) == {"delivered"}
    world.mediamath_reads_and_takes(files[0].name, files[1].name)  # gone from the drop
    _lose_ledger(world)

    report = world.deliver(files, run_id="after-loss")

    assert set(_statuses(report).values()) == {"already_delivered"}
    assert all(world.sftp.faults.renames[f.name] == 1 for f in files)  # each landed once
    assert world.drop_listing() == [files[2].name]
    assert _receipts(world) == {f.name: f.size for f in files}  # rebuilt, consistent


def test_lost_ledger_cft_nothing_in_the_bucket_is_sent_again(tmp_path: Path) -> None:
    files = World(tmp_path, None, None).files(2)  # type: ignore[arg-type]
    ledger_path = tmp_path / "ledger.sqlite"
    with SandboxCft(integration="acme") as cft:

        def deliver() -> dict[str, str]:
            with (
                MediaMathCft(
                    credentials_url=cft.credentials_url,
                    username=cft.username,
                    password=cft.password,
                    integration=cft.integration,
                    bucket=cft.bucket,
                    endpoint_url=cft.s3_endpoint_url,
                ) as transport,
                Ledger(ledger_path) as ledger,
            ):
                return _statuses(deliver_batch(files, BATCH, transport, ledger, QuotaLimits()))

        assert set(deliver().values()) == {"delivered"}
        ledger_path.unlink()
        assert set(deliver().values()) == {"already_delivered"}
        puts = [s for s in cft.seen if s.method == "PUT"]
        assert len(puts) == len(files)
        assert sorted(cft.list_objects()) == sorted(f"acme/{f.name}" for f in files)


def test_lost_ledger_quota_use_is_rebuilt_from_the_processing_log(world: World) -> None:
    _away_from_the_hour_end()
    limits = QuotaLimits(files_per_hour=3)
    sent = world.files(3, prefix="Acme_ExamplePartner_2026120101")
    world.deliver(sent, run_id="first", limits=limits)
    world.mediamath_reads_and_takes(*(f.name for f in sent))
    _lose_ledger(world)

    later = world.files(2, prefix="Acme_ExamplePartner_2026120102")
    report = world.deliver(later, run_id="after-loss", limits=limits)

    assert set(_statuses(report).values()) == {"deferred"}  # the hour's 3 slots are used
    assert world.drop_listing() == []


# -- kill -9 of a delivery -----------------------------------------------------------------


def test_kill_9_mid_upload_resends_at_once_and_lands_once(world: World) -> None:
    files = world.files(2)
    world.sftp.faults.pause_after_bytes = FILE_BYTES // 2
    worker = world.start_worker(files, run_id="killed")
    assert world.sftp.faults.paused.wait(HOLD_TIMEOUT)
    stderr = sigkill(worker)
    world.sftp.faults.release.set()
    assert any(is_our_temporary(n) for n in world.drop_listing())  # the half-written temp

    # At once (not after the 2 h staleness window): the owner is dead, our temp proves the
    # rename never happened.
    report = world.deliver(files, run_id="next")

    assert set(_statuses(report).values()) == {"delivered"}
    assert world.drop_listing() == sorted(f.name for f in files)  # no .part left
    assert all(world.sftp.faults.renames[f.name] == 1 for f in files)
    assert _receipts(world) == {f.name: f.size for f in files}
    assert not secret_free(world.sftp.password, stderr, world.root / "state")


def test_kill_9_after_rename_is_reconciled_from_the_processing_log(world: World) -> None:
    files = world.files(2)
    world.sftp.faults.pause_after_rename = True
    worker = world.start_worker(files, run_id="killed")
    assert world.sftp.faults.paused.wait(HOLD_TIMEOUT)
    sigkill(worker)
    world.sftp.faults.release.set()
    world.mediamath_reads_and_takes(files[0].name)  # landed, read, gone: no receipt

    report = world.deliver(files, run_id="next")

    assert _statuses(report) == {files[0].name: "reconciled", files[1].name: "delivered"}
    assert all(world.sftp.faults.renames[f.name] == 1 for f in files)
    assert _receipts(world) == {f.name: f.size for f in files}


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MM_DELIVERY_TRANSPORT": "sftp",
        "MM_DELIVERY_LEDGER_URL": f"sqlite:///{world.ledger_path}",
        "DAGSTER_HOME": str(world.root),
        "MM_ASSETS_OUTBOX_DIR": str(world.root / "outbox-root"),
        "MM_SFTP_HOST": world.sftp.host,
        "MM_SFTP_PORT": str(world.sftp.port),
        "MM_SFTP_USERNAME": world.sftp.username,
        "MM_SFTP_PASSWORD": world.sftp.password,
        "MM_SFTP_KNOWN_HOSTS": str(world.known_hosts),
        "MM_PROCESSING_LOG_URL": world.log.url,
    }
    return subprocess.run(
        [sys.executable, "-m", "mm_assets.cli", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kill_9_unknown_outcome_needs_attention_and_a_person_settles_it(world: World) -> None:
    world.log.processing_delay_seconds = 3600  # MediaMath has not logged it yet
    [file] = world.files(1)
    world.sftp.faults.pause_after_rename = True
    worker = world.start_worker([file], run_id="killed")
    assert world.sftp.faults.paused.wait(HOLD_TIMEOUT)
    sigkill(worker)
    world.sftp.faults.release.set()
    (world.drop / file.name).unlink()  # taken by MediaMath, not yet in its log

    report = world.deliver([file], run_id="next")
    [entry] = report.entries
    assert entry.status is Status.NEEDS_ATTENTION  # never re-sent blindly
    assert "mm-assets attention --settle" in entry.message
    assert world.sftp.faults.renames[file.name] == 1

    listed = _cli(world, "attention", BATCH)
    assert listed.returncode == 0, listed.stderr
    assert file.name in listed.stdout and "process gone" in listed.stdout
    settled = _cli(world, "attention", "--settle", file.name, "--as", "delivered")
    assert settled.returncode == 0, settled.stderr

    assert _statuses(world.deliver([file], run_id="after")) == {file.name: "already_delivered"}
    assert world.sftp.faults.renames[file.name] == 1
    assert "nothing needs attention" in _cli(world, "attention").stdout


def test_two_deliveries_at_once_send_each_file_once(world: World) -> None:
    files = world.files(6)
    workers = [world.start_worker(files, run_id=f"run-{i}") for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    assert world.drop_listing() == sorted(f.name for f in files)
    assert all(world.sftp.faults.renames[f.name] == 1 for f in files)
    assert _receipts(world) == {f.name: f.size for f in files}


# -- SFTP drop leftovers and servers without posix-rename -----------------------------------


def test_server_without_posix_rename_gets_a_plain_rename_and_never_an_overwrite(
    world: World,
) -> None:
    world.sftp.faults.refuse_posix_rename = True
    [file] = world.files(1)
    assert _statuses(world.deliver([file])) == {file.name: "delivered"}
    assert world.drop_listing() == [file.name]

    other = world.root / "other.log.gz"
    other.write_bytes(b"other bytes")
    impostor = OutgoingFile(file.name, other, other.stat().st_size, "0" * 32)
    with world.transport() as transport, pytest.raises(DeliveryError, match="not overwritten"):
        transport.upload(impostor)
    assert world.drop_listing() == [file.name]  # no temp left, the original untouched
    assert (world.drop / file.name).read_bytes() == file.path.read_bytes()


def test_our_stale_temporaries_are_removed_and_nobody_elses(world: World) -> None:
    [file] = world.files(1)
    old = time.time() - 3600
    leftovers = {
        f".{file.name}.0123abcd.part": True,  # this file's, from a killed upload
        ".Other_ExamplePartner_20261130000000.log.gz.deadbeef.part": True,  # ours, idle
        ".Fresh_ExamplePartner_20261130000000.log.gz.aaaaaaaa.part": False,  # ours, live
        ".someone-elses.part": False,
        "notes.txt": False,
    }
    for name, idle in leftovers.items():
        path = world.drop / name
        path.write_bytes(b"x")
        if idle or not name.startswith(".Fresh"):
            os.utime(path, (old, old))
    world.deliver([file])
    kept = {n for n, removed in leftovers.items() if not removed}
    assert set(world.drop_listing()) == kept | {file.name}


# -- CFT credentials endpoint down ---------------------------------------------------------


def test_cft_credentials_outage_fails_the_batch_fast_with_one_message(tmp_path: Path) -> None:
    files = World(tmp_path, None, None).files(8)  # type: ignore[arg-type]
    with SandboxCft(integration="acme") as cft, Ledger(tmp_path / "ledger.sqlite") as ledger:
        cft.fail_credentials_requests = 10_000
        with MediaMathCft(
            credentials_url=cft.credentials_url,
            username=cft.username,
            password=cft.password,
            integration=cft.integration,
            bucket=cft.bucket,
            endpoint_url=cft.s3_endpoint_url,
            backoff_base_seconds=0.01,
            backoff_max_seconds=0.02,
        ) as transport:
            report = deliver_batch(files, BATCH, transport, ledger, QuotaLimits())
        assert cft.credentials_requests == transport.credentials.max_attempts  # one outage
        assert ledger.in_flight(BATCH) == []  # nothing held: a later run sends them all
        assert cft.list_objects() == {}
    first, *rest = report.entries
    assert first.status is Status.FAILED and "credentials endpoint down" in first.message
    assert {e.status for e in rest} == {Status.NOT_ATTEMPTED}


# -- the batch argument -----------------------------------------------------------------


@pytest.mark.parametrize("batch", ["..", "../dout/multi"])
def test_deliver_refuses_a_path_as_batch(world: World, batch: str) -> None:
    done = _cli(world, "deliver", batch)
    assert done.returncode == 2 and "not a batch name" in done.stderr
    assert "Traceback" not in done.stderr


def test_deliver_of_a_never_built_batch_is_one_line_and_registers_nothing(world: World) -> None:
    import dagster as dg

    done = _cli(world, "deliver", "batch_never_built")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "has not been built" in done.stderr
    with dg.DagsterInstance.from_config(str(world.root)) as instance:
        assert instance.get_dynamic_partitions("export_batches") == []


def test_cli_deliver_names_the_files_and_a_lost_ledger_resends_nothing(world: World) -> None:
    from mm_assets.core.s2s_writer import write_s2s_files
    from mm_assets_tests.conftest import approve_outbox, make_settings
    from mm_assets_tests.faults.test_build_faults import _merged

    built = write_s2s_files(
        _merged(world.root / "build"),
        world.root / "outbox-root" / BATCH,
        make_settings(threads=1),
        batch=BATCH,
    )
    names = sorted(f.name for f in built)
    # Written by the core directly: approved as the build checks would (delivery's gate).
    approve_outbox(world.root / "outbox-root" / BATCH, run_id="built-by-the-core")

    first = _cli(world, "deliver", BATCH)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"delivered={len(names)}" in first.stdout
    assert all(f"delivered         {n}" in first.stdout for n in names)

    _lose_ledger(world)
    again = _cli(world, "deliver", BATCH)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already_delivered={len(names)}" in again.stdout
    assert all(world.sftp.faults.renames[n] == 1 for n in names)
    assert world.drop_listing() == names
    output = first.stdout + first.stderr + again.stdout + again.stderr
    # DAGSTER_HOME (run storage, compute logs), the outbox, the ledger: all under the root.
    assert (world.root / "storage").is_dir()
    assert not secret_free(world.sftp.password, output, world.root)
