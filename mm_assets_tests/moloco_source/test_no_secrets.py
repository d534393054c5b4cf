"""The staging asset through Dagster (`dg.materialize`) for local, MCM-WIF and MCM-DKR; no key,
secret or token in any event-log entry, captured log line or exception text."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest

from mm_assets.defs.moloco_source.assets import moloco_export_objects
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage
from mm_assets.sandbox.moloco.hmac_s3 import HmacS3StandIn
from mm_assets.sandbox.moloco.mgmt_api import MgmtApiStandIn
from mm_assets_tests.moloco_source.conftest import AWS_SECRET, AWS_TOKEN, BUCKET, WifWorld

CSV = b"user_id,segment\nu1,1\n"
DKR_BUCKET = "mcm-export-dkr-dagster"
API_KEY = "mgmt-api-key-dagster-never-logged"


def _storage(tmp_path: Path) -> BatchStorage:
    return BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )


def _materialize(
    source: MolocoExportSource, storage: BatchStorage, instance: dg.DagsterInstance, batch: str
) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(export_batches.name, [batch])
    return dg.materialize(
        [moloco_export_objects],
        partition_key=batch,
        instance=instance,
        resources={"moloco_source": source, "storage": storage},
        raise_on_error=False,
    )


def _event_text(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(str(entry) for entry in instance.all_logs(run_id))


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    [mat] = result.asset_materializations_for_node("moloco_export_objects")
    return {k: v.value for k, v in mat.metadata.items()}


def test_local_method_records_the_batch_folder(tmp_path):
    storage = _storage(tmp_path)
    (Path(storage.export_dir) / "b1").mkdir(parents=True)
    (Path(storage.export_dir) / "b1" / "part.csv").write_bytes(CSV)
    with dg.instance_for_test() as instance:
        result = _materialize(MolocoExportSource(), storage, instance, "b1")
        assert result.success
        meta = _metadata(result)
    assert meta["method"] == "local" and meta["objects"] == 1
    assert "bytes_downloaded" not in meta  # read in place: nothing is staged


def test_wif_staging_asset_no_secrets(wif_world: WifWorld, aws_env_keys, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    gcs = wif_world.gcs
    gcs.put(BUCKET, "exp/b1/part-0.csv", CSV)
    gcs.put(BUCKET, "exp/b1/_SUCCESS", b"")
    source = MolocoExportSource(
        method="wif",
        bucket=BUCKET,
        prefix="exp",
        credentials_file=str(wif_world.config),
        gcs_endpoint=gcs.url,
    )
    storage = _storage(tmp_path)
    with dg.instance_for_test() as instance:
        first = _materialize(source, storage, instance, "b1")
        assert first.success
        second = _materialize(source, storage, instance, "b1")
        meta1, meta2 = _metadata(first), _metadata(second)
        text = _event_text(instance, first.run_id) + _event_text(instance, second.run_id)
    assert (Path(storage.export_dir) / "b1" / "part-0.csv").read_bytes() == CSV
    assert meta1["objects_downloaded"] == 1 and meta2["skipped_as_unchanged"] == 1
    assert meta2["objects_downloaded"] == 0 and meta1["method"] == "wif"
    secrets = [AWS_SECRET, AWS_TOKEN, *wif_world.sts.access_tokens, *wif_world.sts.federated_tokens]
    for secret in secrets:
        assert secret not in text and secret not in caplog.text


@pytest.fixture
def dkr_world():
    mgmt = MgmtApiStandIn("p1", API_KEY, spacing_s=1.0, propagation_s=0.3).start()
    s3 = HmacS3StandIn(mgmt).start()
    admin = s3.admin()
    admin.create_bucket(Bucket=DKR_BUCKET)
    admin.put_object(Bucket=DKR_BUCKET, Key="exp/b1/part-0.csv", Body=CSV)
    try:
        yield mgmt, s3
    finally:
        for obj in admin.list_objects_v2(Bucket=DKR_BUCKET).get("Contents", []):
            admin.delete_object(Bucket=DKR_BUCKET, Key=obj["Key"])
        admin.delete_bucket(Bucket=DKR_BUCKET)
        s3.stop()
        mgmt.stop()


def test_dkr_staging_asset_no_secrets(dkr_world, tmp_path, caplog):
    """MCM-DKR through Dagster: staged, spacing/propagation waited, nothing secret recorded;
    a failing run (wrong bucket) carries no secret in its error either."""
    caplog.set_level(logging.DEBUG)
    mgmt, s3 = dkr_world
    settings = dict(
        method="dkr",
        bucket=DKR_BUCKET,
        prefix="exp",
        api_base=mgmt.url,
        platform_id="p1",
        api_key=API_KEY,
        s3_endpoint=s3.url,
        rotation_spacing="1",
        key_activation_deadline="10",
        state_dir=str(tmp_path / "rot"),
    )
    source = MolocoExportSource(**settings)
    storage = _storage(tmp_path)
    with dg.instance_for_test() as instance:
        ok = _materialize(source, storage, instance, "b1")
        assert ok.success
        meta = _metadata(ok)
        bad = _materialize(
            MolocoExportSource(**{**settings, "api_key": API_KEY + "-wrong"}),
            storage,
            instance,
            "b1",
        )
        assert not bad.success
        text = _event_text(instance, ok.run_id) + _event_text(instance, bad.run_id)
    assert meta["method"] == "dkr" and meta["objects_downloaded"] == 1
    assert meta["key_rotations"] == 1
    secrets = [API_KEY, *mgmt.issued_secrets(), *mgmt.keys]
    assert len(secrets) >= 3
    for secret in secrets:
        assert secret not in text, "secret in the event log"
        assert secret not in caplog.text, "secret in a captured log"
