"""Build faults (issue 10): a build killed with SIGKILL in its write step leaves the old outbox
whole and usable, and two builds of one batch never write at once (the second refuses)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm_assets.core.export_reader import read_export_batch
from mm_assets.core.s2s_writer import (
    BUILDS,
    MANIFEST,
    BuildInProgress,
    batch_build_lock,
    read_manifest,
    write_s2s_files,
)
from mm_assets.core.segment_merge import merge_segment_loads
from mm_assets_tests.conftest import csv_bytes, make_settings, write_batch
from mm_assets_tests.faults.world import PROJECT, sigkill

HOLD_TIMEOUT = 60.0


def _merged(tmp_path: Path) -> Path:
    rows = [
        (f"user-{i:05d}", str(i % 7), "0", ("Acme", "Bolt", "")[i % 3], "") for i in range(3000)
    ]
    batch = write_batch(tmp_path, {"part.csv": csv_bytes(rows)}, name="batch_1")
    settings = make_settings(threads=1)
    read = read_export_batch(batch, tmp_path / "work" / "raw", settings)
    return merge_segment_loads(read.loads_dir, tmp_path / "work" / "merged", settings).merged_dir


def _outbox_is_whole(outbox: Path) -> list[str]:
    """The manifest's files are all there with their md5, and nothing else visible."""
    listed = read_manifest(outbox)
    for built in listed:
        data = (outbox / built.name).read_bytes()
        assert hashlib.md5(data).hexdigest() == built.md5 and len(data) == built.bytes
    visible = sorted(p.name for p in outbox.iterdir() if not p.name.startswith("."))
    assert visible == sorted([MANIFEST, *(b.name for b in listed)])
    return sorted(b.name for b in listed)


def _start(merged: Path, outbox: Path, point: str, ready: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mm_assets_tests.faults.build_worker",
            str(merged),
            str(outbox),
            point,
            str(ready),
        ],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(ready: Path, worker: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + HOLD_TIMEOUT
    while not ready.exists():
        assert worker.poll() is None, worker.communicate()[1]
        assert time.monotonic() < deadline, "the build worker never reached its hold point"
        time.sleep(0.02)


@pytest.mark.parametrize("point", ["mid_file", "before_publish"])
def test_kill_9_in_the_write_step_leaves_the_old_outbox_intact(tmp_path: Path, point: str) -> None:
    merged = _merged(tmp_path)
    outbox = tmp_path / "outbox" / "batch_1"
    write_s2s_files(merged, outbox, make_settings(threads=1), batch="batch_1")
    before = _outbox_is_whole(outbox)

    ready = tmp_path / "ready"
    worker = _start(merged, outbox, point, ready)
    _wait(ready, worker)
    sigkill(worker)

    assert _outbox_is_whole(outbox) == before  # old files + old manifest, readable
    # The next build replaces it whole and clears the dead build's folder.
    after = write_s2s_files(merged, outbox, make_settings(threads=1), batch="batch_1")
    assert _outbox_is_whole(outbox) == sorted(f.name for f in after)
    assert not set(before) & {f.name for f in after}  # new names (FileIdentifier unique)
    assert len(list((tmp_path / "outbox" / BUILDS / "batch_1").iterdir())) == 2  # new + previous


def test_a_second_build_of_the_batch_refuses_while_one_runs(tmp_path: Path) -> None:
    merged = _merged(tmp_path)
    outbox = tmp_path / "outbox" / "batch_1"
    ready = tmp_path / "ready"
    worker = _start(merged, outbox, "before_publish", ready)
    _wait(ready, worker)
    try:
        with pytest.raises(BuildInProgress, match="another build of batch batch_1"):
            write_s2s_files(merged, outbox, make_settings(threads=1), batch="batch_1")
        assert not outbox.exists()  # no empty success: nothing was published
    finally:
        sigkill(worker)
    # The lock dies with its holder.
    built = write_s2s_files(merged, outbox, make_settings(threads=1), batch="batch_1")
    assert built and _outbox_is_whole(outbox) == sorted(f.name for f in built)


def test_cli_build_refuses_clearly_while_another_build_of_the_batch_runs(tmp_path: Path) -> None:
    batch = PROJECT / "data" / "export" / "batch_20261120"
    outbox_root = tmp_path / "outbox"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "MM_ASSETS_OUTBOX_DIR": str(outbox_root),
        "MM_ASSETS_WORK_DIR": str(tmp_path / "work"),
    }
    with batch_build_lock(outbox_root, batch.name):  # held by this process: "the other build"
        done = subprocess.run(
            [sys.executable, "-m", "mm_assets.cli", "build", str(batch)],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 2
    assert "another build of batch batch_20261120 is running" in done.stderr
    assert "users" not in done.stdout  # no summary of an empty build
    assert not (outbox_root / batch.name).exists()


def test_a_build_step_started_beside_another_build_refuses_and_leaves_its_work(
    tmp_path: Path,
) -> None:
    """A build started from the UI while `mm-assets build` runs the batch: its steps take the
    batch's build lock too, so it fails clearly instead of replacing the other's work."""
    import dagster as dg

    from mm_assets.defs.moloco_source.resources import MolocoExportSource
    from mm_assets.defs.partitions import export_batches
    from mm_assets.defs.resources import BatchStorage, S2sFileSettings
    from mm_assets.defs.s2s_build import assets as build_assets

    write_batch(tmp_path, {"a.csv": csv_bytes([["u1", "1", "0", "", ""]])})
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )
    earlier_work = storage.work_for("batch_1").read_dir / "kept"
    earlier_work.parent.mkdir(parents=True)
    earlier_work.write_text("the running build's work")
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from mm_assets.core.s2s_writer import batch_build_lock\n"
            "with batch_build_lock(Path(sys.argv[1]), 'batch_1'):\n"
            "    Path(sys.argv[2]).touch()\n"
            "    time.sleep(600)\n",
            storage.outbox_dir,
            str(ready),
        ],
        cwd=PROJECT,
        text=True,
    )
    try:
        _wait(ready, holder)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(export_batches.name, ["batch_1"])
            result = dg.materialize(
                [build_assets.moloco_export_objects, build_assets.raw_audiences],
                selection=[build_assets.raw_audiences],
                partition_key="batch_1",
                instance=instance,
                resources={
                    "storage": storage,
                    "s2s": S2sFileSettings(partner_name="P", segment_namespace="ep"),
                    "moloco_source": MolocoExportSource(),
                },
                raise_on_error=False,
            )
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert "another build of batch batch_1 is running" in str(failure.event_specific_data)
        assert earlier_work.read_text() == "the running build's work"
    finally:
        sigkill(holder)
