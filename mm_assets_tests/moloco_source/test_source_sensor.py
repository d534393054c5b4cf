"""The new-batch sensor over a real (emulated) export bucket, through MCM-WIF."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest

from mm_assets.clients.moloco_export.errors import CredentialError
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.moloco_source.sensors import load_cursor, moloco_export_batches
from mm_assets.defs.resources import BatchStorage
from mm_assets_tests.moloco_source.conftest import BUCKET, WifWorld

PREFIX = "mcm/export"
CSV = b"user_id,segment\nu1,1\n"


def _source(world: WifWorld, **overrides: object) -> MolocoExportSource:
    values: dict[str, object] = dict(
        method="wif",
        bucket=BUCKET,
        prefix=PREFIX,
        credentials_file=str(world.config),
        gcs_endpoint=world.gcs.url,
        quiet_period="3600",
        max_runs_per_tick=20,
        list_page_size=100,
    )
    values.update(overrides)
    return MolocoExportSource(**values)  # type: ignore[arg-type]


def _tick(
    source: MolocoExportSource, tmp_path: Path, cursor: str | None, instance: dg.DagsterInstance
) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    storage = BatchStorage(
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "w"),
        outbox_dir=str(tmp_path / "o"),
    )
    context = dg.build_sensor_context(
        cursor=cursor, instance=instance, resources={"moloco_source": source, "storage": storage}
    )
    result = moloco_export_batches(context)
    if isinstance(result, dg.SensorResult):
        return result, result.cursor
    return result, context.cursor


def _runs(result: object) -> list[tuple[str, str]]:
    if not isinstance(result, dg.SensorResult):
        return []
    return [(r.partition_key, r.run_key) for r in result.run_requests or []]


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_new_batch_relisted_rewritten_and_cursor_object_deleted(
    wif_world: WifWorld, aws_env_keys, tmp_path, instance
):
    gcs = wif_world.gcs
    gcs.put(BUCKET, f"{PREFIX}/b1/part-0.csv", CSV)
    gcs.put(BUCKET, f"{PREFIX}/b1/part-1.csv", CSV)
    gcs.put(BUCKET, f"{PREFIX}/b1/_SUCCESS", b"")
    gcs.put(BUCKET, f"{PREFIX}/b2/part-0.csv", CSV)  # no marker, not quiet yet
    source = _source(wif_world)

    # New complete batch: one run, partition added; the incomplete one waits.
    result, cursor = _tick(source, tmp_path, None, instance)
    runs = _runs(result)
    assert [b for b, _ in runs] == ["b1"]
    assert isinstance(result, dg.SensorResult)
    assert instance.get_dynamic_partitions("export_batches") == ["b1"]
    first_key = runs[0][1]

    # Same batch re-listed: nothing.
    result, cursor = _tick(source, tmp_path, cursor, instance)
    assert isinstance(result, dg.SkipReason) and "b2" in (result.skip_message or "")

    # An object rewritten in place (new generation): a new run with a new run key.
    gcs.put(BUCKET, f"{PREFIX}/b1/part-1.csv", CSV + b"u2,2\n")
    result, cursor = _tick(source, tmp_path, cursor, instance)
    runs = _runs(result)
    assert [b for b, _ in runs] == ["b1"] and runs[0][1] != first_key
    assert instance.get_dynamic_partitions("export_batches") == ["b1"]  # known already

    # The cursor's objects deleted (the marker, then the newest object): no replay.
    gcs.delete(BUCKET, f"{PREFIX}/b1/_SUCCESS")
    result, cursor = _tick(source, tmp_path, cursor, instance)
    assert _runs(result) == []
    gcs.delete(BUCKET, f"{PREFIX}/b1/part-1.csv")
    result, cursor = _tick(source, tmp_path, cursor, instance)
    assert _runs(result) == []
    assert len(cursor or "") < 1000  # compact: per batch a fingerprint, not object lists


def test_a_new_batch_whose_partition_a_command_added_already_is_requested_once(
    wif_world, aws_env_keys, tmp_path, instance
):
    # `mm-assets build` of the batch registered its partition first (or at the same moment:
    # the sensor adds it through the same insert that tolerates the other's).
    wif_world.gcs.put(BUCKET, f"{PREFIX}/b4/part-0.csv", CSV)
    wif_world.gcs.put(BUCKET, f"{PREFIX}/b4/_SUCCESS", b"")
    instance.add_dynamic_partitions("export_batches", ["b4"])
    result, _ = _tick(_source(wif_world), tmp_path, None, instance)
    assert [b for b, _ in _runs(result)] == ["b4"]
    assert instance.get_dynamic_partitions("export_batches") == ["b4"]


def test_quiet_period_completes_a_batch_without_marker(wif_world, aws_env_keys, tmp_path, instance):
    wif_world.gcs.put(BUCKET, f"{PREFIX}/b3/part-0.csv", CSV)
    source = _source(wif_world, quiet_period="1")
    result, cursor = _tick(source, tmp_path, None, instance)
    assert _runs(result) == []
    assert "b3" in load_cursor(cursor)["pending"]
    time.sleep(1.1)
    result, cursor = _tick(source, tmp_path, cursor, instance)
    assert [b for b, _ in _runs(result)] == ["b3"]


def test_a_thousand_objects_with_a_small_bound_per_tick(
    wif_world, aws_env_keys, tmp_path, instance
):
    bucket = wif_world.gcs.admin_client().bucket(BUCKET)
    for i in range(1000):
        batch = f"batch_{i // 25:03d}"  # 40 batches of 25 objects (24 files + marker)
        name = "_SUCCESS" if i % 25 == 24 else f"part-{i % 25:02d}.csv"
        bucket.blob(f"{PREFIX}/{batch}/{name}").upload_from_string(CSV)
    source = _source(wif_world, max_runs_per_tick=7, list_page_size=100)
    cursor = None
    started: list[str] = []
    ticks = 0
    while True:
        result, cursor = _tick(source, tmp_path, cursor, instance)
        runs = _runs(result)
        assert len(runs) <= 7
        if not runs:
            break
        started += [b for b, _ in runs]
        ticks += 1
    assert ticks == 6  # ceil(40 / 7)
    assert sorted(started) == [f"batch_{i:03d}" for i in range(40)]
    assert len(set(started)) == 40  # each batch exactly one run
    assert len(cursor or "") < 8000


def test_transient_listing_error_skips_the_tick(wif_world, aws_env_keys, tmp_path, instance):
    # Nothing listens on port 9; the client's retries are bounded by the setting.
    source = _source(wif_world, gcs_endpoint="http://127.0.0.1:9", retry_deadline="1")
    result, _ = _tick(source, tmp_path, None, instance)
    assert isinstance(result, dg.SkipReason)
    assert "retrying next tick" in (result.skip_message or "")


def test_credential_error_fails_the_tick(wif_world, clean_aws_env, tmp_path, instance):
    # AWS keys the Google STS does not trust: the token exchange is refused.
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAUNTRUSTED0000001")
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "untrusted-secret-value-0001")
    clean_aws_env.setenv("AWS_REGION", "us-east-1")
    source = _source(wif_world)
    with pytest.raises(CredentialError) as err:
        _tick(source, tmp_path, None, instance)
    assert "untrusted-secret-value-0001" not in str(err.value)


def test_cursor_survives_garbage_and_stays_json(tmp_path):
    assert load_cursor("not json")["seen"] == {}
    assert json.loads(json.dumps(load_cursor(None)))["v"] == 1
