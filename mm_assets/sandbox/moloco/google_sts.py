"""Google STS (`POST /v1/token`) and IAM Credentials (`...:generateAccessToken`) for MCM-WIF.

google-auth's `external_account` credentials send the subject token (for AWS: a serialized,
SigV4-signed GetCallerIdentity request) to `token_url`, then impersonate the service account at
`service_account_impersonation_url`. Both URLs are taken from the credential configuration, so
`credential_config()` writes one that points here, with a non-Google `universe_domain` (matched by
the storage client's options) so google-auth starts no background lookup at Google.

The stand-in checks what the real ones check that matters for us: the grant and token types, the
audience, that the AWS subject token is signed with the expected access key id (so a test shows
which AWS credentials were used), and that impersonation carries the federated token.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from mm_assets.sandbox.moloco import WsgiStandIn

UNIVERSE = "sandbox.test"
AWS_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
_KEY_RE = re.compile(r"Credential=([A-Za-z0-9]+)/")


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(data), status, content_type="application/json")


class GoogleStsStandIn(WsgiStandIn):
    def __init__(
        self,
        audience: str,
        service_account: str = "mcm-export@moloco.iam.gserviceaccount.com",
        expected_aws_key_id: str | None = None,
    ) -> None:
        self.audience = audience
        self.service_account = service_account
        self.expected_aws_key_id = expected_aws_key_id
        self.federated_tokens: set[str] = set()
        self.access_tokens: set[str] = set()
        self.exchanges: list[dict[str, str]] = []  # no secrets: key id, audience, types
        self.impersonations = 0
        self._lock = threading.Lock()
        self._serve()

    def token_ok(self, token: str) -> bool:
        return token in self.access_tokens

    def credential_config(self, credential_source: dict[str, Any] | None = None) -> dict[str, Any]:
        """An AWS `external_account` configuration like the one MOLOCO hands out."""
        return {
            "type": "external_account",
            "audience": self.audience,
            "subject_token_type": AWS_TOKEN_TYPE,
            "token_url": f"{self.url}/v1/token",
            "service_account_impersonation_url": (
                f"{self.url}/v1/projects/-/serviceAccounts/{self.service_account}"
                ":generateAccessToken"
            ),
            "credential_source": credential_source
            or {
                "environment_id": "aws1",
                "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
                "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
                "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            },
            "universe_domain": UNIVERSE,
        }

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.method == "POST" and request.path == "/v1/token":
            resp = self._token(request)
        elif request.method == "POST" and request.path.endswith(":generateAccessToken"):
            resp = self._impersonate(request)
        else:
            resp = _json({"error": {"code": 404, "message": "not found"}}, 404)
        return resp(environ, start_response)

    def _token(self, request: Request) -> Response:
        form = request.form
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
            return _json({"error": "invalid_grant"}, 400)
        if form.get("audience") != self.audience:
            return _json({"error": "invalid_target", "error_description": "bad audience"}, 400)
        if form.get("subject_token_type") != AWS_TOKEN_TYPE:
            return _json({"error": "invalid_request"}, 400)
        try:
            subject = json.loads(unquote(form.get("subject_token", "")))
            headers = {h["key"].lower(): h["value"] for h in subject["headers"]}
            match = _KEY_RE.search(headers["authorization"])
            key_id = match.group(1) if match else ""
        except (ValueError, KeyError, TypeError):
            return _json({"error": "invalid_grant", "error_description": "bad subject"}, 400)
        if "GetCallerIdentity" not in subject.get("url", "") or not key_id:
            return _json({"error": "invalid_grant"}, 400)
        if self.expected_aws_key_id and key_id != self.expected_aws_key_id:
            return _json({"error": "invalid_grant", "error_description": "unknown identity"}, 400)
        token = "fed-" + secrets.token_urlsafe(24)
        with self._lock:
            self.federated_tokens.add(token)
            self.exchanges.append({"aws_key_id": key_id, "audience": form["audience"]})
        return _json(
            {
                "access_token": token,
                "expires_in": 3600,
                "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            }
        )

    def _impersonate(self, request: Request) -> Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.federated_tokens:
            return _json({"error": {"code": 401, "message": "unauthenticated"}}, 401)
        if self.service_account not in request.path:
            return _json({"error": {"code": 403, "message": "permission denied"}}, 403)
        token = "ya29.sandbox-" + secrets.token_urlsafe(24)
        with self._lock:
            self.access_tokens.add(token)
            self.impersonations += 1
        return _json({"accessToken": token, "expireTime": "2099-01-01T00:00:00Z"})


class AwsCredentialsStandIn(WsgiStandIn):
    """ECS container credentials endpoint and AWS STS AssumeRoleWithWebIdentity, for the
    ECS/EKS supplier (`ContainerAwsCredentialsSupplier`)."""

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        session_token: str,
        auth_token: str | None = None,
        web_identity_token: str | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.auth_token = auth_token
        self.web_identity_token = web_identity_token
        self.calls: list[str] = []
        self._serve()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.method == "GET" and request.path.startswith("/v2/credentials"):
            self.calls.append("container")
            if self.auth_token and request.headers.get("Authorization") != self.auth_token:
                return Response("denied", 401)(environ, start_response)
            return _json(
                {
                    "AccessKeyId": self.access_key_id,
                    "SecretAccessKey": self.secret_access_key,
                    "Token": self.session_token,
                    "Expiration": "2099-01-01T00:00:00Z",
                }
            )(environ, start_response)
        if request.method == "POST" and request.form.get("Action") == "AssumeRoleWithWebIdentity":
            self.calls.append("web_identity")
            if request.form.get("WebIdentityToken") != self.web_identity_token:
                return Response(
                    "<ErrorResponse><Error><Code>InvalidIdentityToken</Code>"
                    "</Error></ErrorResponse>",
                    400,
                )(environ, start_response)
            body = (
                "<AssumeRoleWithWebIdentityResponse "
                'xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                "<AssumeRoleWithWebIdentityResult><Credentials>"
                f"<AccessKeyId>{self.access_key_id}</AccessKeyId>"
                f"<SecretAccessKey>{self.secret_access_key}</SecretAccessKey>"
                f"<SessionToken>{self.session_token}</SessionToken>"
                "<Expiration>2099-01-01T00:00:00Z</Expiration>"
                "</Credentials></AssumeRoleWithWebIdentityResult>"
                "</AssumeRoleWithWebIdentityResponse>"
            )
            return Response(body, 200, content_type="text/xml")(environ, start_response)
        return Response("not found", 404)(environ, start_response)
