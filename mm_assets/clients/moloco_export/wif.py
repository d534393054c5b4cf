"""MCM-WIF: Workload Identity Federation: the credential configuration file MOLOCO provides.

The file (`gcp-creds.json`, `"type": "external_account"`) is loaded with google-auth WITHOUT
scopes (scopes at load time make google-auth look the project up at cloudresourcemanager), and
the credentials and project are handed to `google.cloud.storage.Client` explicitly (left to
itself the client would read GOOGLE_APPLICATION_CREDENTIALS and do the same lookup).

AWS as the identity source: google-auth reads AWS keys from the environment
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`) and from the EC2 metadata
server. On ECS and EKS neither exists: `ContainerAwsCredentialsSupplier` adds the container
credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`, optional
`AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`) and IRSA web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`
+ `AWS_ROLE_ARN` via STS AssumeRoleWithWebIdentity), through google-auth's
`aws.AwsSecurityCredentialsSupplier` hook. It is used only when those variables are set and
static keys are not, so EC2 and environment keys keep google-auth's own behaviour.

MCM-LEGACY: a service-account key file is refused here, before anything is sent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from mm_assets.clients.moloco_export.errors import (
    SUPPORTED_METHODS,
    CredentialError,
    LegacyCredentialsRefused,
)
from mm_assets.clients.redaction import redact

logger = logging.getLogger(__name__)

ECS_CONTAINER_HOST = "http://169.254.170.2"
_REFRESH_MARGIN_S = 300.0


def read_credentials_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The credential configuration as a dict; refuses legacy key files (MCM-LEGACY)."""
    try:
        info = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CredentialError(
            f"cannot read the credential configuration {path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise CredentialError(f"{path} is not a JSON credential configuration") from None
    if not isinstance(info, dict):
        raise CredentialError(f"{path} is not a JSON credential configuration")
    kind = info.get("type")
    if kind == "service_account":
        raise LegacyCredentialsRefused(
            f"{path} is a service-account key file: MCM-LEGACY service-account keys and static "
            "HMAC keys are no longer supported for the Moloco export (after 2026-10-01). Use "
            f"{SUPPORTED_METHODS}."
        )
    if kind != "external_account":
        raise CredentialError(
            f"{path} has type {kind!r}; Workload Identity Federation "
            "(MCM-WIF) needs the 'external_account' configuration MOLOCO "
            "provides"
        )
    return info


def _uses_aws(info: dict[str, Any]) -> bool:
    source = info.get("credential_source") or {}
    return str(source.get("environment_id", "")).startswith("aws")


def container_credentials_available(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """ECS/EKS sources are present and static keys (which google-auth reads itself) are not."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return False
    return bool(
        env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        or (env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"))
    )


def _aws_supplier_base() -> type:
    from google.auth import aws

    return aws.AwsSecurityCredentialsSupplier


class ContainerAwsCredentialsSupplier(_aws_supplier_base()):  # type: ignore[misc]
    """AWS credentials on ECS (container endpoint) and EKS (IRSA web identity), cached until
    shortly before they expire (google-auth does not cache supplier answers)."""

    def __init__(
        self,
        *,
        region: str | None = None,
        sts_endpoint: str | None = None,
        timeout: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self._env = env if env is not None else os.environ
        self._region = region
        self._sts_endpoint = sts_endpoint
        self._timeout = timeout
        self._cached: Any = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def get_aws_region(self, context: Any, request: Any) -> str:
        region = self._region or self._env.get("AWS_REGION") or self._env.get("AWS_DEFAULT_REGION")
        if not region:
            raise CredentialError("AWS region unknown: set AWS_REGION (ECS and EKS set it)")
        return region

    def get_aws_security_credentials(self, context: Any, request: Any) -> Any:
        with self._lock:
            if self._cached is None or time.time() > self._expires - _REFRESH_MARGIN_S:
                self._cached, self._expires = self._fetch()
            return self._cached

    def _fetch(self) -> tuple[Any, float]:
        from google.auth import aws
        from google.auth import exceptions as gexc

        env = self._env
        try:
            if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or env.get(
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
            ):
                key, secret, token, expires = self._from_container_endpoint()
            else:
                key, secret, token, expires = self._from_web_identity()
        except CredentialError as exc:
            # google-auth expects RefreshError from suppliers; the text is already redacted.
            raise gexc.RefreshError(str(exc)) from None
        return aws.AwsSecurityCredentials(key, secret, token), expires

    def _from_container_endpoint(self) -> tuple[str, str, str | None, float]:
        env = self._env
        url = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or (
            ECS_CONTAINER_HOST + env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "")
        )
        headers = {}
        auth = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        if env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
            auth = Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text().strip()
        if auth:
            headers["Authorization"] = auth
        try:
            resp = requests.get(url, headers=headers, timeout=self._timeout)
        except requests.RequestException as exc:
            raise CredentialError(
                redact(
                    f"AWS container credentials endpoint unreachable: {type(exc).__name__}", [auth]
                )
            ) from None
        if resp.status_code != 200:
            raise CredentialError(
                f"AWS container credentials endpoint answered HTTP {resp.status_code}"
            )
        try:
            data = resp.json()
            return (
                data["AccessKeyId"],
                data["SecretAccessKey"],
                data.get("Token"),
                _parse_expiry(data.get("Expiration")),
            )
        except (ValueError, KeyError, TypeError):
            raise CredentialError("AWS container credentials endpoint: unexpected answer") from None

    def _from_web_identity(self) -> tuple[str, str, str | None, float]:
        env = self._env
        token = Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"]).read_text().strip()
        region = self.get_aws_region(None, None)
        endpoint = (
            self._sts_endpoint
            or env.get("AWS_ENDPOINT_URL_STS")
            or f"https://sts.{region}.amazonaws.com"
        )
        form = {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": "2011-06-15",
            "RoleArn": env["AWS_ROLE_ARN"],
            "RoleSessionName": env.get("AWS_ROLE_SESSION_NAME") or "mm-assets-moloco-wif",
            "WebIdentityToken": token,
        }
        # Unsigned on purpose (the web identity token is the credential) and not through
        # boto3, whose DEBUG logging would print the returned secret.
        try:
            resp = requests.post(endpoint, data=form, timeout=self._timeout)
        except requests.RequestException as exc:
            raise CredentialError(
                redact(f"AWS STS unreachable: {type(exc).__name__}", [token])
            ) from None
        if resp.status_code != 200:
            raise CredentialError(
                f"AWS STS AssumeRoleWithWebIdentity answered HTTP "
                f"{resp.status_code} for role {env['AWS_ROLE_ARN']}"
            )
        try:
            root = ET.fromstring(resp.content)
            found = {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in root.iter()}
            return (
                found["AccessKeyId"],
                found["SecretAccessKey"],
                found.get("SessionToken"),
                _parse_expiry(found.get("Expiration")),
            )
        except (ET.ParseError, KeyError):
            raise CredentialError("AWS STS AssumeRoleWithWebIdentity: unexpected answer") from None


def _parse_expiry(value: str | None) -> float:
    if not value:
        return time.time() + 900
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def load_wif_credentials(path: str | os.PathLike[str], *, aws_supplier: Any | None = None) -> Any:
    """MCM-WIF: the federated credentials of the configuration file, without scopes.

    With an AWS source on ECS/EKS (or when `aws_supplier` is given) the credential source of the
    file is replaced by the container supplier; otherwise google-auth loads the file itself.
    """
    import google.auth
    from google.auth import aws
    from google.auth import exceptions as gexc

    info = read_credentials_file(path)
    try:
        if _uses_aws(info) and (aws_supplier is not None or container_credentials_available()):
            info = {k: v for k, v in info.items() if k != "credential_source"}
            supplier = aws_supplier or ContainerAwsCredentialsSupplier()
            return aws.Credentials.from_info(info, aws_security_credentials_supplier=supplier)
        credentials, _project = google.auth.load_credentials_from_file(str(path))
        return credentials
    except gexc.GoogleAuthError as exc:
        raise CredentialError(f"invalid credential configuration {path}: {exc}") from None


def gcs_client(
    credentials: Any,
    project: str | None = None,
    *,
    api_endpoint: str | None = None,
    universe_domain: str | None = None,
) -> Any:
    """`google.cloud.storage.Client` with explicit credentials and project (no ADC lookup)."""
    from google.cloud import storage

    options: dict[str, str] = {}
    if api_endpoint:
        options["api_endpoint"] = api_endpoint
    domain = universe_domain or getattr(credentials, "universe_domain", None)
    if domain and domain != "googleapis.com":
        # Must match the credentials' universe; a non-Google universe also keeps google-auth
        # from starting its background lookup at iamcredentials.googleapis.com (tests).
        options["universe_domain"] = domain
    return storage.Client(project=project, credentials=credentials, client_options=options or None)
