"""No host-local state on the critical path: with a database configured, the FileIdentifier
register, the build lock and the key-rotation lock with its last-rotation time are shared by
workers on different machines (here: processes with their own state folders and one
database, SQLite or a real PostgreSQL server), and a lock holder killed with `kill -9` does
not keep the lock past its lease."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from mm_assets.clients.moloco_export.errors import TransientSourceError
from mm_assets.clients.moloco_export.key_rotation import (
    DatabaseRotationLock,
    RotationLock,
    rotation_lock,
)
from mm_assets.core.s2s_format import file_name
from mm_assets.state import database
from mm_assets.state.build_lock import BuildInProgress, batch_build_lock
from mm_assets.state.leases import LEASE_SECONDS_ENV, Lease, last_time
from mm_assets.state.name_register import (
    NAME_REGISTER,
    DatabaseNameRegister,
    NameRegister,
    issued_names_table,
    open_name_register,
)
from mm_assets_tests.conftest import csv_bytes, make_settings, run_build, write_batch
from mm_assets_tests.faults.world import sigkill
from mm_assets_tests.state.state_worker import NOW

PROJECT = Path(__file__).resolve().parents[2]
LEASE_S = 3.0  # the workers' lease: a killed holder blocks the others this long
WORKER_TIMEOUT_S = 120.0


@pytest.fixture(autouse=True)
def _close_engines() -> Iterator[None]:
    yield
    database.dispose_engines()


class Workers:
    """Worker processes ("machines") sharing `url`, each started with its own folders."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url, self.tmp = url, tmp_path
        self.started: list[subprocess.Popen[str]] = []

    def start(self, mode: str, *args: str | Path) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            database.DATABASE_URL_ENV: self.url,
            LEASE_SECONDS_ENV: str(LEASE_S),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "mm_assets_tests.state.state_worker", mode, *map(str, args)],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(worker)
        return worker

    def wait_ready(self, *ready: Path) -> None:
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while not all(r.exists() for r in ready):
            for worker in self.started:
                assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "a worker never got ready"
            time.sleep(0.02)

    def results(self) -> list[list[str]]:
        outputs = []
        for worker in self.started:
            out, err = worker.communicate(timeout=WORKER_TIMEOUT_S)
            assert worker.returncode == 0, err
            outputs.append(out.split())
        return outputs

    def stop(self) -> None:
        for worker in self.started:
            if worker.poll() is None:
                sigkill(worker)


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(database_url, tmp_path)
    try:
        yield started
    finally:
        started.stop()


def _machine(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def test_two_machines_never_issue_the_same_file_name(workers: Workers, tmp_path: Path) -> None:
    """S2S-HDR: FileIdentifier unique across all uploads, whichever worker builds."""
    per_worker = 30
    go = tmp_path / "go"
    ready = [tmp_path / "ready_a", tmp_path / "ready_b"]
    for machine, ready_file in zip(("a", "b"), ready, strict=True):
        outbox = _machine(tmp_path, machine) / "outbox"
        workers.start("names", outbox, per_worker, ready_file, go)
    workers.wait_ready(*ready)
    go.touch()
    issued = [name for names in workers.results() for name in names]

    assert len(issued) == 2 * per_worker
    assert len(set(issued)) == len(issued), "a name was issued twice"
    # Both asked for the same second: the names are that second and the next ones, no gaps.
    seconds = [NOW + timedelta(seconds=i) for i in range(per_worker)]
    assert set(issued) == {file_name("Partner", s) for s in seconds} | {
        file_name("Partner", s, "Agency") for s in seconds
    }
    with database.engine_for(workers.url, sa.MetaData()).connect() as conn:
        stored = set(conn.execute(sa.select(issued_names_table.c.name)).scalars())
    assert stored == set(issued)
    for machine in ("a", "b"):  # nothing on either machine's disk
        assert not (tmp_path / machine / "outbox" / NAME_REGISTER).exists()


def test_two_machines_rotate_the_key_one_at_a_time_and_spaced(
    workers: Workers, tmp_path: Path
) -> None:
    """MCM-DKR: at least the spacing between two rotations, whichever worker rotates."""
    spacing, per_worker = 1.0, 2
    go = tmp_path / "go"
    ready = [tmp_path / "ready_a", tmp_path / "ready_b"]
    for machine, ready_file in zip(("a", "b"), ready, strict=True):
        state_dir = _machine(tmp_path, machine) / "moloco"
        workers.start("rotate", state_dir, spacing, per_worker, ready_file, go)
    workers.wait_ready(*ready)
    go.touch()
    rotations = sorted(float(t) for times in workers.results() for t in times)

    assert len(rotations) == 2 * per_worker
    gaps = [later - earlier for earlier, later in itertools.pairwise(rotations)]
    assert min(gaps) >= spacing - 1e-5, gaps  # 1e-5: the times are printed to 6 decimals
    assert last_time(workers.url, DatabaseRotationLock.LEASE) == pytest.approx(rotations[-1])
    for machine in ("a", "b"):
        assert not (tmp_path / machine / "moloco").exists()


def _until(what: str, attempt: object) -> None:
    """Call `attempt()` until it returns True; the killed holder's lease must run out first."""
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not attempt():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_killed_build_lock_holder_leaves_the_batch_buildable_after_its_lease(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(database.DATABASE_URL_ENV, workers.url)
    monkeypatch.setenv(LEASE_SECONDS_ENV, str(LEASE_S))
    ready = tmp_path / "ready"
    holder = workers.start("hold-build", _machine(tmp_path, "a") / "outbox", ready)
    workers.wait_ready(ready)
    here = _machine(tmp_path, "b") / "outbox"

    def build_now() -> bool:
        try:
            with batch_build_lock(here, "batch_1"):
                return True
        except BuildInProgress:
            return False

    assert not build_now()
    time.sleep(2 * LEASE_S)  # longer than the lease: the live holder renews it
    with (
        pytest.raises(BuildInProgress, match="another build of batch batch_1"),
        batch_build_lock(here, "batch_1"),
    ):
        pass
    sigkill(holder)
    _until("the dead holder's lease never expired", build_now)
    assert not (here / ".locks").exists()


def test_a_killed_rotation_lock_holder_leaves_the_key_after_its_lease(
    workers: Workers, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    holder = workers.start("hold-rotation", _machine(tmp_path, "a") / "moloco", ready)
    workers.wait_ready(ready)
    lock = DatabaseRotationLock(workers.url, 0.0, lease_s=LEASE_S)
    with (
        pytest.raises(TransientSourceError, match="held the key-rotation lock"),
        lock.held(wait_timeout_s=0.5),
    ):
        pass
    sigkill(holder)
    with lock.held(wait_timeout_s=WORKER_TIMEOUT_S):
        lock.record_rotation(1.0)
    assert lock.last_rotation() == 1.0


def test_a_lease_frees_only_once_its_holder_stops_renewing(database_url: str) -> None:
    now = [1_000.0]
    mine = Lease(database_url, "build:batch_1", ttl_s=60, clock=lambda: now[0])
    theirs = Lease(database_url, "build:batch_1", ttl_s=60, clock=lambda: now[0])
    assert mine.try_acquire()
    assert not theirs.try_acquire()
    now[0] += 59
    assert mine.renew()
    now[0] += 59  # 118 s after the first take, 59 after the renewal
    assert not theirs.try_acquire()
    assert theirs.holder() == mine.owner
    now[0] += 2
    assert theirs.holder() is None
    assert theirs.try_acquire()
    assert not mine.renew(), "an expired and taken lease is no longer the old holder's"
    theirs.release()
    assert mine.try_acquire(), "a released lease is free at once"


def test_the_database_register_counts_names_the_file_register_issued(
    database_url: str, tmp_path: Path
) -> None:
    """Moving a deployment onto a database never reissues a name issued before."""
    outbox = tmp_path / "outbox"
    before = NameRegister(outbox).allocate("Partner", None, NOW)
    after = DatabaseNameRegister(database_url, outbox).allocate("Partner", None, NOW)
    assert before == file_name("Partner", NOW)
    assert after == file_name("Partner", NOW + timedelta(seconds=1))


def test_without_a_database_the_state_stays_in_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(database.DATABASE_URL_ENV, raising=False)
    outbox = tmp_path / "outbox"
    assert isinstance(open_name_register(outbox), NameRegister)
    with batch_build_lock(outbox, "batch_1"):
        assert (outbox / ".locks" / "batch_1.lock").exists()
    assert type(rotation_lock(tmp_path / "moloco", 60, None)) is RotationLock


def test_a_build_with_a_database_keeps_its_names_and_lock_there(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's own register and lock: rows in the database, nothing beside the outbox
    but the files; two builds at the same second still get names of their own."""
    monkeypatch.setenv(database.DATABASE_URL_ENV, database_url)
    rows = [["u1", "1", "0", "", ""], ["u2", "2", "0", "Acme", "idfa"]]
    built = []
    for name in ("batch_1", "batch_2"):
        batch = write_batch(tmp_path, {"part.csv": csv_bytes(rows)}, name=name)
        result = run_build(
            batch, tmp_path / "work" / name, make_settings(), outbox_root=tmp_path / "outbox"
        )
        built += [f.name for f in result.built]
    assert len(built) == 4 and len(set(built)) == 4
    with database.engine_for(database_url, sa.MetaData()).connect() as conn:
        stored = set(conn.execute(sa.select(issued_names_table.c.name)).scalars())
    assert stored == set(built)
    outbox = tmp_path / "outbox"
    assert not (outbox / NAME_REGISTER).exists()
    assert not (outbox / ".locks").exists()
    assert {p.name for p in outbox.glob("*/*.log.gz")} == set(built)


def test_the_moloco_source_takes_its_rotation_lock_from_the_configured_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chosen once, from the ledger's setting, when the definitions load."""
    from mm_assets.defs.moloco_source.resources import default_moloco_source

    url = database.sqlite_url(tmp_path / "ledger.sqlite")
    monkeypatch.setenv(database.DATABASE_URL_ENV, url)
    source = default_moloco_source().process_config_and_initialize()
    lock = rotation_lock(source.state_dir, 60, source.state_database_url or None)
    assert isinstance(lock, DatabaseRotationLock) and lock.url == url
    monkeypatch.delenv(database.DATABASE_URL_ENV)
    assert default_moloco_source().process_config_and_initialize().state_database_url == ""
