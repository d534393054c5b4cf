"""Fixtures for the Moloco export source: a WIF world (Google STS stand-in + guarded GCS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mm_assets.sandbox.moloco.gcs_emulator import GcsEmulator
from mm_assets.sandbox.moloco.google_sts import GoogleStsStandIn

BUCKET = "mcm-export-sandbox"
AUDIENCE = (
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/mcm/providers/aws"
)
AWS_KEY = "AKIASANDBOXWIF00001"
AWS_SECRET = "wif-aws-secret-never-logged-0001"
AWS_TOKEN = "wif-aws-session-token-never-logged"
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ENDPOINT_URL_STS",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@dataclass
class WifWorld:
    sts: GoogleStsStandIn
    gcs: GcsEmulator
    config: Path


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def wif_world(tmp_path: Path) -> Iterator[WifWorld]:
    sts = GoogleStsStandIn(AUDIENCE, expected_aws_key_id=AWS_KEY).start()
    gcs = GcsEmulator([BUCKET], require_token=sts.token_ok).start()
    config = tmp_path / "gcp-creds.json"
    config.write_text(json.dumps(sts.credential_config()))
    try:
        yield WifWorld(sts, gcs, config)
    finally:
        gcs.stop()
        sts.stop()


@pytest.fixture
def aws_env_keys(clean_aws_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", AWS_KEY)
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    clean_aws_env.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)
    clean_aws_env.setenv("AWS_REGION", "us-east-1")
    return clean_aws_env
