"""MCM-STS with the official client (REST transport) against the local transfer API stand-in."""

from __future__ import annotations

import dagster as dg
import pytest

from mm_assets.clients.moloco_export.errors import TransferAccessDenied
from mm_assets.defs.moloco_source.assets import moloco_export_objects
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage
from mm_assets.sandbox.moloco.gcs_emulator import GcsEmulator
from mm_assets.sandbox.moloco.storage_transfer_api import StorageTransferStandIn

SOURCE, DEST, PROJECT = "mcm-export-sts", "own-bucket", "my-project"
CSV = b"user_id,segment\nu1,1\n"


@pytest.fixture
def gcs():
    with GcsEmulator([SOURCE, DEST]) as emulator:
        emulator.put(SOURCE, "exp/b1/part-0.csv", CSV)
        emulator.put(SOURCE, "exp/b1/_SUCCESS", b"")
        yield emulator


def _source(gcs: GcsEmulator, sts: StorageTransferStandIn) -> MolocoExportSource:
    return MolocoExportSource(
        method="sts",
        bucket=SOURCE,
        prefix="exp",
        sts_project=PROJECT,
        sts_destination_bucket=DEST,
        sts_endpoint=sts.url,
        gcs_endpoint=gcs.url,
        sts_poll_interval="0.05",
    )


def test_transfer_then_stage_from_own_bucket(gcs, tmp_path, caplog):
    """MCM-STS: job created once and reused, run, waited for with progress in the log, then the
    batch is read from our own bucket and staged."""
    caplog.set_level("INFO")
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "w"),
        outbox_dir=str(tmp_path / "o"),
    )
    with (
        StorageTransferStandIn(gcs, PROJECT, polls_until_done=3) as sts,
        dg.instance_for_test() as instance,
    ):
        instance.add_dynamic_partitions(export_batches.name, ["b1"])
        source = _source(gcs, sts)
        for _ in range(2):
            result = dg.materialize(
                [moloco_export_objects],
                partition_key="b1",
                instance=instance,
                resources={"moloco_source": source, "storage": storage},
            )
            assert result.success
        assert len(sts.jobs) == 1  # created once, reused by the second run
        assert sum(1 for m, p in sts.requests if p.endswith(":run")) == 2
        [job] = sts.jobs.values()
        assert job["transferSpec"]["gcsDataSource"] == {"bucketName": SOURCE, "path": "exp/"}
        logs = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    assert gcs.names(DEST, "exp/") == ["exp/b1/_SUCCESS", "exp/b1/part-0.csv"]
    assert (tmp_path / "export" / "b1" / "part-0.csv").read_bytes() == CSV
    assert "transfer transferOperations/" in logs and "done" in logs


def test_access_denied_names_the_service_agent(gcs):
    with StorageTransferStandIn(gcs, PROJECT, agent_can_read=False) as sts:
        runner = _source(gcs, sts).transfer_runner()
        with pytest.raises(TransferAccessDenied) as err:
            runner.run()
    assert "project-123456789012@storage-transfer-service.iam.gserviceaccount.com" in str(err.value)
    assert "MCM-STS" in str(err.value)


def test_the_scheduled_transfer_lets_the_sensor_find_the_new_batch(gcs, tmp_path):
    """MCM-STS discovery: the sensor lists our own bucket without waiting on anything; the
    scheduled transfer run copies the export there, and the next tick requests the build."""
    from mm_assets.defs.moloco_source.sensors import moloco_export_batches
    from mm_assets.defs.moloco_source.transfer import moloco_export_discovery

    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "w"),
        outbox_dir=str(tmp_path / "o"),
    )
    with (
        StorageTransferStandIn(gcs, PROJECT, polls_until_done=2) as sts,
        dg.instance_for_test() as instance,
    ):
        resources = {"moloco_source": _source(gcs, sts), "storage": storage}

        def tick():
            return moloco_export_batches(
                dg.build_sensor_context(instance=instance, resources=resources)
            )

        assert isinstance(tick(), dg.SkipReason)  # our bucket is still empty: nothing yet
        assert not sts.requests  # and the tick started no transfer, nor waited on one
        assert moloco_export_discovery.execute_in_process(
            instance=instance, resources=resources
        ).success
        found = tick()
        assert [r.partition_key for r in found.run_requests] == ["b1"]
        assert instance.get_dynamic_partitions("export_batches") == ["b1"]
