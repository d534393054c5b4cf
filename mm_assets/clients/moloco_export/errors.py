"""Errors of the Moloco MCM export client, sorted by what the caller should do about them.

`TransientSourceError`: try again later (a sensor skips its tick). `CredentialError`: a person has
to fix configuration or access (a sensor fails loudly). Messages never carry a key, secret or
token: `redact` is applied wherever text from a remote system or a library is quoted.
"""

from __future__ import annotations

SUPPORTED_METHODS = (
    "Workload Identity Federation (MM_MOLOCO_METHOD=wif), "
    "Dynamic Key Rotation (MM_MOLOCO_METHOD=dkr), "
    "GCP Storage Transfer Service (MM_MOLOCO_METHOD=sts), "
    "or a local export folder (MM_MOLOCO_METHOD=local)"
)


class MolocoExportError(Exception):
    """Base class of every error the Moloco export client raises."""


class TransientSourceError(MolocoExportError):
    """The export bucket or an API could not be reached or answered 5xx/429: retry later."""


class CredentialError(MolocoExportError):
    """Credentials are missing, invalid, refused or not (yet) allowed to read the export."""


class LegacyCredentialsRefused(CredentialError):
    """MCM-LEGACY: static HMAC keys and service-account key files are no longer supported."""


class KeyNotActiveError(CredentialError):
    """MCM-DKR: a freshly rotated key was still refused when the activation deadline passed."""


class TransferAccessDenied(CredentialError):
    """MCM-STS: the transfer service agent may not read the export bucket (or write the sink)."""

    def __init__(self, message: str, service_agent: str) -> None:
        super().__init__(message)
        self.service_agent = service_agent


class TransferFailed(MolocoExportError):
    """MCM-STS: the transfer operation ended with an error that is not about access."""


class ChecksumMismatch(MolocoExportError):
    """A downloaded object's bytes do not match the checksum the store listed for it."""


class UnsafeObjectName(MolocoExportError):
    """An object name that would escape the staging folder (`..`, absolute paths)."""
