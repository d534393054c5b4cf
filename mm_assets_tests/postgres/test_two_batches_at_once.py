"""Two export batches run at once through the production instance: `dagster.production.yaml`
on PostgreSQL, runs queued by `dagster job launch`, started by a real `dagster-daemon` (the
queued run coordinator) in their own processes. Both run together, yet the
`moloco_key_rotation` pool lets one step hold the key at a time and the shared ledger keeps the
two within one hourly quota."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from mm_assets.delivery.ledger import Ledger
from mm_assets_tests.postgres import two_batches
from mm_assets_tests.postgres.conftest import PROJECT, ProductionHome
from mm_assets_tests.postgres.server import LocalPostgres

BIN = Path(sys.executable).parent
RUNS_DEADLINE_SECONDS = 300.0
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _workspace(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        f"      module_name: {two_batches.__name__}\n"
        f"      working_directory: {PROJECT}\n"
    )
    return workspace


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    """Stop the daemon and the code server it started (its own process group)."""
    if daemon.poll() is None:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)


def test_two_batches_run_at_once_and_the_pool_and_quota_hold(
    tmp_path: Path,
    production_home: ProductionHome,
    postgres_server: LocalPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    ledger_url = postgres_server.new_database()
    monkeypatch.setenv(two_batches.RENDEZVOUS_ENV, str(rendezvous))
    monkeypatch.setenv(two_batches.LEDGER_ENV, ledger_url)
    Ledger(ledger_url).close()  # schema first, so the runs race on the quota alone
    workspace = _workspace(tmp_path)
    # The deployment step the README gives: pin the pool's limit once. Left to `default_limit`
    # alone, two runs that first use the pool at the same moment can both get a slot.
    pinned = subprocess.run(
        [str(BIN / "dagster"), "instance", "concurrency", "set", "moloco_key_rotation", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert pinned.returncode == 0, pinned.stderr[-2000:]
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for batch in two_batches.BATCHES:
            config = {"ops": {"reserve_uploads": {"config": {"batch": batch}}}}
            command = ["job", "launch", "-w", str(workspace), "-j", "batch_job"]
            launched = subprocess.run(
                [str(BIN / "dagster"), *command, "--config-json", json.dumps(config)],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert launched.returncode == 0, launched.stderr[-2000:]
        with dg.DagsterInstance.from_config(str(production_home.home)) as instance:
            deadline = time.monotonic() + RUNS_DEADLINE_SECONDS
            while True:
                runs = instance.get_runs()
                if len(runs) == 2 and all(r.status in FINISHED for r in runs):
                    break
                assert time.monotonic() < deadline, [(r.run_id, r.status) for r in runs]
                assert daemon.poll() is None, "the daemon stopped"
                time.sleep(0.5)
            failures = [
                str(entry.dagster_event.event_specific_data)[:3000]
                for run in runs
                if run.status is not dg.DagsterRunStatus.SUCCESS
                for entry in instance.all_logs(run.run_id)
                if entry.dagster_event is not None
                and "error" in str(entry.dagster_event.event_specific_data).lower()
            ]
            assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2, failures
            for run in runs:  # queued first, then started by the daemon
                enqueued = instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED
                ).records
                assert len(enqueued) == 1
    finally:
        _stop(daemon)
        log.close()

    # Both runs were running at once (each waited for the other's start), yet the key was
    # held by one step at a time, and the two batches shared one hour's quota.
    assert {p.name for p in rendezvous.iterdir()} == {
        *(f"started-{b}" for b in two_batches.BATCHES),
        *(f"rotated-{b}" for b in two_batches.BATCHES),
    }
    with Ledger(ledger_url) as ledger:
        in_flight = [f for b in two_batches.BATCHES for f in ledger.in_flight(b)]
    assert len(in_flight) == two_batches.FILES_PER_BATCH
