"""`dagster.production.yaml` loads as a user installs it (copied as `dagster.yaml` into
DAGSTER_HOME, values from the environment) against a real PostgreSQL server, keeps its runs
there, and ships step logs to S3 (dagster-aws) -- here moto's S3 on 127.0.0.1."""

from __future__ import annotations

import boto3
import dagster as dg
import sqlalchemy as sa
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_postgres import (
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)

from mm_assets_tests.postgres.conftest import LOG_BUCKET, LOG_PREFIX, ProductionHome

STEP_OUTPUT = "staged 3 objects for batch_20261120"


@dg.asset(pool="moloco_key_rotation")
def staged_batch() -> int:
    print(STEP_OUTPUT)
    return 3


def test_production_instance_keeps_runs_in_postgres_and_step_logs_in_s3(
    production_home: ProductionHome,
) -> None:
    s3 = boto3.client("s3")
    with dg.DagsterInstance.from_config(str(production_home.home)) as instance:
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
    engine = sa.create_engine(production_home.database_url)
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
