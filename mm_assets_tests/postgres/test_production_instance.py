"""`dagster.production.yaml` loads as a user installs it (copied as `dagster.yaml` into
DAGSTER_HOME, values from the environment) against a real PostgreSQL server, keeps its runs
there, and ships step logs to S3 (dagster-aws) -- here moto's S3 on 127.0.0.1."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
import requests
import sqlalchemy as sa
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres import (
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from moto.server import ThreadedMotoServer

from mm_assets_tests.postgres.server import DB_USER, LocalPostgres

PROJECT = Path(__file__).resolve().parents[2]
LOG_BUCKET = "mm-assets-dagster-logs"
LOG_PREFIX = "compute-logs"
STEP_OUTPUT = "staged 3 objects for batch_20261120"


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # boto3's own endpoint setting: the yaml stays exactly as deployed.
        "AWS_ENDPOINT_URL_S3": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    try:
        yield endpoint
    finally:
        requests.post(f"{endpoint}/moto-api/reset", timeout=30)
        server.stop()


def production_home(
    tmp_path: Path, server: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    """A DAGSTER_HOME holding the production yaml, its variables pointing at a fresh database
    on `server`; returns the folder and the database's URL."""
    db_url = server.new_database()
    database = sa.engine.make_url(db_url).database
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT / "dagster.production.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_DB": str(database),
        "DAGSTER_PG_USERNAME": DB_USER,
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_COMPUTE_LOG_BUCKET": LOG_BUCKET,
        "DAGSTER_COMPUTE_LOG_PREFIX": LOG_PREFIX,
    }.items():
        monkeypatch.setenv(name, value)
    return home, db_url


@dg.asset(pool="moloco_key_rotation")
def staged_batch() -> int:
    print(STEP_OUTPUT)
    return 3


def test_production_instance_keeps_runs_in_postgres_and_step_logs_in_s3(
    tmp_path: Path,
    postgres_server: LocalPostgres,
    moto_s3: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, db_url = production_home(tmp_path, postgres_server, monkeypatch)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=LOG_BUCKET)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1

        result = dg.materialize([staged_batch], instance=instance)
        assert result.success
        run_id = result.run_id

    # Read back with nothing of Dagster's: the run and its materialisation are rows in
    # PostgreSQL, the step's stdout is an object in the bucket.
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            status = conn.execute(
                sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}
            ).scalar_one()
            materialized = conn.execute(
                sa.text(
                    "SELECT count(*) FROM event_logs WHERE run_id = :r "
                    "AND dagster_event_type = 'ASSET_MATERIALIZATION'"
                ),
                {"r": run_id},
            ).scalar_one()
    finally:
        engine.dispose()
    assert (status, materialized) == ("SUCCESS", 1)
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=LOG_BUCKET, Prefix=LOG_PREFIX).get("Contents", [])
    ]
    logs = [s3.get_object(Bucket=LOG_BUCKET, Key=k)["Body"].read().decode() for k in keys]
    assert any(STEP_OUTPUT in text for text in logs), keys
