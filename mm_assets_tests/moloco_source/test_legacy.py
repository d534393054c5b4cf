"""MCM-LEGACY: static HMAC keys and service-account key files are refused at load time."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from mm_assets.clients.moloco_export import check_access_config
from mm_assets.clients.moloco_export.errors import CredentialError, LegacyCredentialsRefused
from mm_assets.defs.moloco_source.resources import MolocoExportSource, default_moloco_source

SUPPORTED = ("Workload Identity Federation", "Dynamic Key Rotation", "Storage Transfer Service")


@pytest.mark.parametrize("method", ["hmac", "static", "HMAC"])
def test_legacy_methods_are_refused_naming_the_supported_ones(method):
    with pytest.raises(LegacyCredentialsRefused) as err:
        check_access_config(method)
    assert all(name in str(err.value) for name in SUPPORTED)
    assert "MCM-LEGACY" in str(err.value)


@pytest.mark.parametrize("method", ["wif", "dkr", "sts", "local"])
def test_service_account_key_file_is_refused_with_any_method(method, tmp_path):
    key = tmp_path / "sa.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "private_key_id": "abc123",
                "private_key": "-----BEGIN PRIVATE KEY-----\nxyz\n",
            }
        )
    )
    with pytest.raises(LegacyCredentialsRefused) as err:
        check_access_config(method, str(key))
    assert "xyz" not in str(err.value) and "abc123" not in str(err.value)
    assert all(name in str(err.value) for name in SUPPORTED)


def test_refused_when_the_definitions_load(monkeypatch):
    """`default_moloco_source()` runs when the code location loads: legacy config stops it."""
    monkeypatch.setenv("MM_MOLOCO_METHOD", "static")
    with pytest.raises(LegacyCredentialsRefused):
        default_moloco_source()


def test_refused_before_a_run_uses_the_resource(tmp_path):
    """Set in code (not from the environment): the resource refuses when it is set up."""

    @dg.asset
    def uses_source(moloco_source: MolocoExportSource) -> None:
        pass

    with pytest.raises(dg.DagsterResourceFunctionError) as err:
        dg.materialize(
            [uses_source], resources={"moloco_source": MolocoExportSource(method="hmac")}
        )
    assert isinstance(err.value.__cause__, LegacyCredentialsRefused)


def test_unknown_method_and_missing_wif_file_are_errors():
    with pytest.raises(CredentialError, match="not known"):
        check_access_config("ftp")
    with pytest.raises(CredentialError, match="MM_MOLOCO_CREDENTIALS_FILE"):
        check_access_config("wif")
    assert check_access_config("") == "local"
