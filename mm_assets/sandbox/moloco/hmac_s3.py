"""GCS's S3-compatible XML endpoint in HMAC mode (MCM-DKR): moto's S3 behind a key guard.

The guard reads the access key id of each SigV4 request (header or presigned query) and lets it
through only when the Management API stand-in says it is the newest key and active; a deleted
key gets 403 `InvalidAccessKeyId`, a key still propagating 403 `AccessDenied`, like GCS. One
admin key (for seeding) is always accepted. Signatures themselves are not verified (moto does
not, with enforcement off); the key-id rule is what the rotation semantics need.

moto keeps S3 state per process: use a bucket name no other test uses.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from mm_assets.sandbox.moloco import WsgiStandIn
from mm_assets.sandbox.moloco.mgmt_api import MgmtApiStandIn

_KEY_RE = re.compile(r"Credential=([A-Za-z0-9]+)/")
_QUERY_KEY_RE = re.compile(r"X-Amz-Credential=([A-Za-z0-9]+)(?:/|%2F)")


class HmacS3StandIn(WsgiStandIn):
    def __init__(self, mgmt: MgmtApiStandIn) -> None:
        self.mgmt = mgmt
        self.admin_key_id = "GOOG1ESANDBOXADMIN"
        self._admin_secret = secrets.token_urlsafe(24)
        self.refused: list[str] = []  # reason per refused request (no key ids)
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._serve()

    def admin(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.admin_key_id,
            aws_secret_access_key=self._admin_secret,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        match = _KEY_RE.search(auth) or _QUERY_KEY_RE.search(environ.get("QUERY_STRING", ""))
        key_id = match.group(1) if match else ""
        if key_id != self.admin_key_id:
            state = self.mgmt.key_state(key_id) if key_id else "unknown"
            if state != "active":
                code = "AccessDenied" if state == "propagating" else "InvalidAccessKeyId"
                self.refused.append(state)
                body = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    "<Message>Access denied.</Message></Error>"
                ).encode()
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self._moto(environ, start_response)
