"""Fixtures for the production-instance tests: moto's S3 for the compute logs and a
DAGSTER_HOME holding `dagster.production.yaml` pointed at the test PostgreSQL server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
import sqlalchemy as sa
from moto.server import ThreadedMotoServer

from mm_assets_tests.postgres.server import DB_USER, LocalPostgres

PROJECT = Path(__file__).resolve().parents[2]
LOG_BUCKET = "mm-assets-dagster-logs"
LOG_PREFIX = "compute-logs"


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


@dataclass(frozen=True)
class ProductionHome:
    home: Path  # DAGSTER_HOME, holding dagster.production.yaml as dagster.yaml
    database_url: str  # the database Dagster's storage is in


@pytest.fixture
def production_home(
    tmp_path: Path,
    postgres_server: LocalPostgres,
    moto_s3: str,
    monkeypatch: pytest.MonkeyPatch,
) -> ProductionHome:
    """A DAGSTER_HOME as a deployment has it, its variables pointing at a fresh database on the
    test server and at a log bucket in moto (set in os.environ, so subprocesses see them)."""
    db_url = postgres_server.new_database()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT / "dagster.production.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_DB": str(sa.engine.make_url(db_url).database),
        "DAGSTER_PG_USERNAME": DB_USER,
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_COMPUTE_LOG_BUCKET": LOG_BUCKET,
        "DAGSTER_COMPUTE_LOG_PREFIX": LOG_PREFIX,
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket=LOG_BUCKET)
    return ProductionHome(home, db_url)
