"""Client for the Moloco MCM data export (002): list the export, stage a batch locally.

Access methods (`MM_MOLOCO_METHOD`): `local` (a folder, the default), `wif` (MCM-WIF, the
official GCS client with a federated credential configuration), `dkr` (MCM-DKR, an HMAC pair
from the Management API per session, S3-compatible), `sts` (MCM-STS, Storage Transfer Service
into the customer's own bucket). Static HMAC keys and service-account key files are refused
(MCM-LEGACY). No Dagster import here.
"""

from __future__ import annotations

import json
from pathlib import Path

from mm_assets.clients.moloco_export.errors import (
    SUPPORTED_METHODS,
    CredentialError,
    LegacyCredentialsRefused,
    MolocoExportError,
    TransientSourceError,
)
from mm_assets.clients.moloco_export.listing import (
    ExportObject,
    batch_fingerprint,
    batch_of,
    group_batches,
)
from mm_assets.clients.moloco_export.staging import StageReport, stage_batch

METHODS = ("local", "wif", "dkr", "sts")
LEGACY_METHODS = ("hmac", "static", "static_hmac", "hmac_static", "service_account", "sa_key")

__all__ = [
    "LEGACY_METHODS",
    "METHODS",
    "SUPPORTED_METHODS",
    "CredentialError",
    "ExportObject",
    "LegacyCredentialsRefused",
    "MolocoExportError",
    "StageReport",
    "TransientSourceError",
    "batch_fingerprint",
    "batch_of",
    "check_access_config",
    "group_batches",
    "stage_batch",
]


def check_access_config(method: str, credentials_file: str = "") -> str:
    """The normalised method, or an error naming the supported methods.

    MCM-LEGACY: static HMAC keys and service-account key files are refused here, at load time,
    whatever method they are combined with.
    """
    method = (method or "local").strip().lower()
    if method in LEGACY_METHODS:
        raise LegacyCredentialsRefused(
            f"MM_MOLOCO_METHOD={method}: static HMAC keys and service-account keys are no "
            "longer supported for the Moloco export (MCM-LEGACY, after 2026-10-01). Use "
            f"{SUPPORTED_METHODS}."
        )
    if method not in METHODS:
        raise CredentialError(f"MM_MOLOCO_METHOD={method!r} is not known. Use {SUPPORTED_METHODS}.")
    if credentials_file:
        path = Path(credentials_file)
        try:
            kind = json.loads(path.read_text()).get("type") if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind == "service_account":
            raise LegacyCredentialsRefused(
                f"MM_MOLOCO_CREDENTIALS_FILE={credentials_file} is a service-account key file: "
                "no longer supported for the Moloco export (MCM-LEGACY, after 2026-10-01). Use "
                f"{SUPPORTED_METHODS}."
            )
    if method == "wif" and not credentials_file:
        raise CredentialError(
            "MM_MOLOCO_METHOD=wif needs MM_MOLOCO_CREDENTIALS_FILE (the "
            "gcp-creds.json credential configuration MOLOCO provides)"
        )
    return method
