"""MCM-DKR over real sockets: rotation API, spacing, propagation, one holder at a time."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm_assets.clients.moloco_export.errors import CredentialError, KeyNotActiveError
from mm_assets.clients.moloco_export.key_rotation import (
    KeyRotationClient,
    KeyRotationSession,
    RotationLock,
)
from mm_assets.clients.moloco_export.listing import S3Store, group_batches
from mm_assets.clients.moloco_export.staging import stage_batch
from mm_assets.sandbox.moloco.hmac_s3 import HmacS3StandIn
from mm_assets.sandbox.moloco.mgmt_api import MgmtApiStandIn

BUCKET = "mcm-export-dkr-tests"
PLATFORM = "sandbox_platform"
API_KEY = "mgmt-api-key-never-logged-0001"


@pytest.fixture
def dkr_world():
    mgmt = MgmtApiStandIn(PLATFORM, API_KEY, spacing_s=1.0, propagation_s=0.6).start()
    s3 = HmacS3StandIn(mgmt).start()
    admin = s3.admin()
    admin.create_bucket(Bucket=BUCKET)
    admin.put_object(Bucket=BUCKET, Key="export/b1/part-0.csv", Body=b"user_id,segment\nu,1\n")
    admin.put_object(Bucket=BUCKET, Key="export/b1/_SUCCESS", Body=b"")
    try:
        yield mgmt, s3
    finally:
        for obj in admin.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            admin.delete_object(Bucket=BUCKET, Key=obj["Key"])
        admin.delete_bucket(Bucket=BUCKET)
        s3.stop()
        mgmt.stop()


def _session(
    mgmt: MgmtApiStandIn, state_dir: Path, spacing: float = 1.0, deadline: float = 10.0
) -> KeyRotationSession:
    return KeyRotationSession(
        KeyRotationClient(mgmt.url, PLATFORM, API_KEY),
        RotationLock(state_dir, spacing),
        activation_deadline_s=deadline,
    )


def test_rotate_wait_for_propagation_then_read(dkr_world, tmp_path, caplog):
    """MCM-DKR: the new key answers 403 while it propagates; we retry until it works, then
    list and stage; the key and secret appear in no log line and no repr."""
    mgmt, s3 = dkr_world
    caplog.set_level(logging.DEBUG)
    session = _session(mgmt, tmp_path / "state")
    with session.open(s3.url, BUCKET) as (key, client):
        store = S3Store(client, BUCKET, (key.secret_key,))
        batches = group_batches(list(store.iter_objects("export")), "export")
        report = stage_batch(store, "export", "b1", batches["b1"], tmp_path / "stage")
        assert report.downloaded == ["part-0.csv"]
        assert key.secret_key not in repr(key) and key.key_id not in repr(key)
    assert "propagating" in s3.refused  # 403 was seen, and waited out
    assert session.waited_for_activation_s > 0.3
    secret = mgmt.issued_secrets()[0]
    text = caplog.text
    assert secret not in text and API_KEY not in text


def test_spacing_is_waited_not_failed_and_old_keys_die(dkr_world, tmp_path):
    """MCM-DKR: two sessions back to back are ≥ spacing apart (from the state file, no 429),
    and the first key stops working once the second is issued."""
    mgmt, s3 = dkr_world
    session = _session(mgmt, tmp_path / "state")
    with session.open(s3.url, BUCKET) as (_k1, client1):
        pass
    with session.open(s3.url, BUCKET) as (_k2, client2):
        client2.list_objects_v2(Bucket=BUCKET)
        with pytest.raises(Exception, match="InvalidAccessKeyId"):
            client1.list_objects_v2(Bucket=BUCKET)
    assert mgmt.rotations[1] - mgmt.rotations[0] >= 1.0
    assert [s for _, s in mgmt.calls] == [200, 200]


def test_429_from_a_rotation_we_did_not_record_is_waited_out(dkr_world, tmp_path):
    """Someone else rotated (no shared state file): the API answers 429; we wait, then go."""
    mgmt, s3 = dkr_world
    with _session(mgmt, tmp_path / "other-host").open(s3.url, BUCKET):
        pass
    with _session(mgmt, tmp_path / "state").open(s3.url, BUCKET) as (_key, client):
        client.list_objects_v2(Bucket=BUCKET)
    assert 429 in [s for _, s in mgmt.calls]


def test_key_never_active_is_a_credential_error(tmp_path):
    with (
        MgmtApiStandIn(PLATFORM, API_KEY, spacing_s=0, propagation_s=30) as mgmt,
        HmacS3StandIn(mgmt) as s3,
    ):
        session = _session(mgmt, tmp_path / "s", deadline=0.8)
        with pytest.raises(KeyNotActiveError) as err, session.open(s3.url, "any-bucket"):
            pass
        assert mgmt.issued_secrets()[0] not in str(err.value)


def test_wrong_api_key_is_a_credential_error(dkr_world, tmp_path):
    mgmt, s3 = dkr_world
    client = KeyRotationClient(mgmt.url, PLATFORM, "wrong-api-key-value")
    session = KeyRotationSession(client, RotationLock(tmp_path, 0))
    with pytest.raises(CredentialError) as err, session.open(s3.url, BUCKET):
        pass
    assert "wrong-api-key-value" not in str(err.value)


_CHILD = r"""
import json, sys, time
from mm_assets.clients.moloco_export.key_rotation import (
    KeyRotationClient, KeyRotationSession, RotationLock)
api, platform, key, state, endpoint, bucket = sys.argv[1:7]
session = KeyRotationSession(KeyRotationClient(api, platform, key), RotationLock(state, 1.0),
                             activation_deadline_s=10)
with session.open(endpoint, bucket) as (_k, client):
    start = time.time()
    for _ in range(5):  # use the key for a while: a rival rotation would break these calls
        client.list_objects_v2(Bucket=bucket)
        time.sleep(0.1)
    end = time.time()
print(json.dumps({"start": start, "end": end}))
"""


def test_two_processes_take_turns(dkr_world, tmp_path):
    """MCM-DKR across processes: the flock serialises rotate+use, the state file keeps the
    spacing, and neither process's key is deleted under it (no 429, no 403 after activation)."""
    mgmt, s3 = dkr_world
    args = [mgmt.url, PLATFORM, API_KEY, str(tmp_path / "state"), s3.url, BUCKET]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert API_KEY not in out + err
        results.append(json.loads(out))
    first, second = sorted(results, key=lambda r: r["start"])
    assert first["end"] <= second["start"]  # one holder at a time
    assert len(mgmt.rotations) == 2
    assert mgmt.rotations[1] - mgmt.rotations[0] >= 1.0
    assert all(status == 200 for _, status in mgmt.calls)
    assert "unknown" not in s3.refused  # no request ever used a deleted key
    assert time.time() - mgmt.rotations[0] < 30


def test_dkr_discovery_lists_in_a_run_and_the_sensor_never_rotates(dkr_world, tmp_path):
    """MCM-DKR: a sensor tick never rotates a key nor waits for one to activate; the
    discovery run does both and leaves a listing the next tick turns into a build request."""
    import dagster as dg

    from mm_assets.defs.moloco_source.resources import MolocoExportSource
    from mm_assets.defs.moloco_source.sensors import moloco_export_batches
    from mm_assets.defs.moloco_source.transfer import moloco_export_discovery
    from mm_assets.defs.resources import BatchStorage

    mgmt, s3 = dkr_world
    source = MolocoExportSource(
        method="dkr",
        bucket=BUCKET,
        prefix="export",
        api_base=mgmt.url,
        platform_id=PLATFORM,
        api_key=API_KEY,
        s3_endpoint=s3.url,
        state_dir=str(tmp_path / "moloco"),
        rotation_spacing="1",
        key_activation_deadline="10",
    )
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"), work_dir=str(tmp_path / "w"), outbox_dir=str(tmp_path)
    )
    resources = {"moloco_source": source, "storage": storage}
    with dg.instance_for_test() as instance:

        def tick():
            return moloco_export_batches(
                dg.build_sensor_context(instance=instance, resources=resources)
            )

        assert isinstance(tick(), dg.SkipReason)  # no listing yet, and no rotation for it
        assert mgmt.rotations == []
        assert moloco_export_discovery.execute_in_process(
            instance=instance, resources=resources
        ).success
        assert len(mgmt.rotations) == 1
        found = tick()
        assert [r.partition_key for r in found.run_requests] == ["b1"]
        assert len(mgmt.rotations) == 1  # the tick read the run's listing
