"""Commands started at once on one Dagster storage (DAGSTER_HOME), new, deleted or kept, all
get to their run.

Dagster's SQLite storages create their tables on first use without a lock, and add a dynamic
partition by reading the keys and inserting the missing ones: four processes doing both at the
same moment failed ("table runs already exists", or, on a kept storage, the partitions'
unique index). Each worker starts as a command does and waits until all are ready, so their
first use overlaps.
Measured against the code without each fix: without the storage lock (`cli._instance`) the new
and deleted cases failed on every run; without `register_export_batch`'s handling of the unique
index, the kept case failed about one run in three.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mm_assets.defs.partitions import export_batches
from mm_assets.defs.settings import PROJECT_ROOT

WORKERS = 4
END_TIMEOUT_S = 120


def _start_workers(home: Path, batch: str, wait_before: str) -> list[subprocess.Popen[str]]:
    """Start the workers, wait until each says it is ready, then release them together."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    worker = [sys.executable, "-m", "mm_assets_tests.faults.dagster_storage_worker"]
    workers = [
        subprocess.Popen(
            [*worker, batch, wait_before],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    for w in workers:
        # A worker that died says nothing: its stderr is the failure.
        assert w.stdout.readline() == "ready\n", w.communicate()
    for w in workers:
        w.stdin.write("go\n")
        w.stdin.flush()
    return workers


@pytest.mark.parametrize("storage", ["new", "deleted", "kept"])
def test_commands_started_at_once_on_one_dagster_storage_all_register_their_batch(
    tmp_path: Path, storage: str
) -> None:
    home = tmp_path / "dagster_home"
    if storage != "new":
        home.mkdir()
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(export_batches.name, ["batch_before"])
    if storage == "deleted":
        for lost in home.iterdir():  # runs, event log, partitions, schedules
            shutil.rmtree(lost)
    # On a kept storage the race is the partition's insert: each opens its instance first.
    workers = _start_workers(home, "batch_20261201", "add" if storage == "kept" else "open")
    results = [w.communicate(timeout=END_TIMEOUT_S) for w in workers]
    assert [w.returncode for w in workers] == [0] * WORKERS, results
    with dg.DagsterInstance.from_config(str(home)) as instance:
        kept = ["batch_before"] * (storage == "kept")
        assert instance.get_dynamic_partitions(export_batches.name) == [*kept, "batch_20261201"]
        assert instance.get_runs() == []  # the run storage is whole and current
