"""MCM-WIF over real sockets: AWS identity -> Google STS -> IAM Credentials -> the bucket."""

from __future__ import annotations

import json

import pytest

from mm_assets.clients.moloco_export.errors import CredentialError, LegacyCredentialsRefused
from mm_assets.clients.moloco_export.listing import GcsStore, group_batches
from mm_assets.clients.moloco_export.staging import stage_batch
from mm_assets.clients.moloco_export.wif import (
    ContainerAwsCredentialsSupplier,
    gcs_client,
    load_wif_credentials,
)
from mm_assets.sandbox.moloco.gcs_emulator import GcsEmulator
from mm_assets.sandbox.moloco.google_sts import AwsCredentialsStandIn
from mm_assets_tests.moloco_source.conftest import (
    AWS_KEY,
    AWS_SECRET,
    AWS_TOKEN,
    BUCKET,
    WifWorld,
)


def _seed(gcs: GcsEmulator) -> None:
    gcs.put(BUCKET, "export/batch_1/part-0.csv", b"user_id,segment\nu1,1\n")
    gcs.put(BUCKET, "export/batch_1/_SUCCESS", b"")
    gcs.put(BUCKET, "export/batch_2/part-0.csv", b"user_id,segment\nu2,2\n")


def test_wif_end_to_end_with_aws_environment_keys(wif_world: WifWorld, aws_env_keys, tmp_path):
    """MCM-WIF: env AWS keys sign GetCallerIdentity; the federated, impersonated token is the
    only thing the (guarded) bucket accepts; listing, grouping and staging work through it."""
    sts, gcs, config = wif_world.sts, wif_world.gcs, wif_world.config
    _seed(gcs)
    credentials = load_wif_credentials(config)
    assert not getattr(credentials, "_scopes", None)  # no scopes at load time (PEERS.md)
    store = GcsStore(gcs_client(credentials, None, api_endpoint=gcs.url), BUCKET)
    objects = list(store.iter_objects("export", page_size=2))
    batches = group_batches(objects, "export")
    assert sorted(batches) == ["batch_1", "batch_2"]
    report = stage_batch(store, "export", "batch_1", batches["batch_1"], tmp_path / "stage")
    assert report.downloaded == ["part-0.csv"]
    assert (tmp_path / "stage" / "part-0.csv").read_bytes() == b"user_id,segment\nu1,1\n"
    assert sts.exchanges and sts.exchanges[0]["aws_key_id"] == AWS_KEY
    assert sts.impersonations >= 1
    assert gcs.refused == 0
    # An unauthenticated client is refused by the same bucket: the token is really checked.
    from google.auth.credentials import AnonymousCredentials

    anonymous = GcsStore(gcs_client(AnonymousCredentials(), None, api_endpoint=gcs.url), BUCKET)
    with pytest.raises(CredentialError):
        list(anonymous.iter_objects("export"))


def test_wif_on_ecs_uses_the_container_credentials_endpoint(wif_world, clean_aws_env):
    """ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI` + auth token, no env keys (google-auth alone
    cannot do this; our supplier does)."""
    sts, gcs, config = wif_world.sts, wif_world.gcs, wif_world.config
    _seed(gcs)
    with AwsCredentialsStandIn(AWS_KEY, AWS_SECRET, AWS_TOKEN, auth_token="ecs-auth") as aws:
        clean_aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{aws.url}/v2/credentials/x")
        clean_aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth")
        clean_aws_env.setenv("AWS_REGION", "eu-west-1")
        credentials = load_wif_credentials(config)
        store = GcsStore(gcs_client(credentials, None, api_endpoint=gcs.url), BUCKET)
        assert len(list(store.iter_objects("export"))) == 3
        assert aws.calls == ["container"]  # cached: one call for listing and paging
    assert sts.exchanges[0]["aws_key_id"] == AWS_KEY


def test_wif_on_eks_uses_web_identity(wif_world, clean_aws_env, tmp_path):
    """EKS (IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` via AssumeRoleWithWebIdentity."""
    gcs, config = wif_world.gcs, wif_world.config
    _seed(gcs)
    token_file = tmp_path / "token"
    token_file.write_text("eks-oidc-token\n")
    with AwsCredentialsStandIn(
        AWS_KEY, AWS_SECRET, AWS_TOKEN, web_identity_token="eks-oidc-token"
    ) as aws:
        clean_aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
        clean_aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/mcm-export")
        clean_aws_env.setenv("AWS_REGION", "us-east-1")
        clean_aws_env.setenv("AWS_ENDPOINT_URL_STS", aws.url)
        credentials = load_wif_credentials(config)
        store = GcsStore(gcs_client(credentials, None, api_endpoint=gcs.url), BUCKET)
        assert len(list(store.iter_objects("export"))) == 3
        assert aws.calls == ["web_identity"]


def test_wif_supplier_errors_are_credential_errors(wif_world, clean_aws_env):
    gcs, config = wif_world.gcs, wif_world.config
    with AwsCredentialsStandIn(AWS_KEY, AWS_SECRET, AWS_TOKEN, auth_token="right") as aws:
        clean_aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{aws.url}/v2/credentials/x")
        clean_aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong-token-value")
        clean_aws_env.setenv("AWS_REGION", "us-east-1")
        store = GcsStore(
            gcs_client(load_wif_credentials(config), None, api_endpoint=gcs.url), BUCKET
        )
        with pytest.raises(CredentialError) as err:
            list(store.iter_objects("export"))
        assert "wrong-token-value" not in str(err.value)
    assert isinstance(ContainerAwsCredentialsSupplier(region="x").get_aws_region(None, None), str)


def test_wif_refuses_service_account_key_file(tmp_path):
    """MCM-LEGACY: a service-account key file is refused before anything is sent."""
    path = tmp_path / "key.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "private_key": "-----BEGIN x",
                "client_email": "a@b.iam.gserviceaccount.com",
            }
        )
    )
    with pytest.raises(LegacyCredentialsRefused, match="Workload Identity Federation"):
        load_wif_credentials(path)
