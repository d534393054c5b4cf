"""The MCM Management API's RotateDataExportKey (MCM-DKR), with the document's semantics:

* `POST /rmp/mgmt/v1/platforms/{platform_id}/data-export/key`, `x-api-key` checked (401),
  `Content-Type: application/json` required (415);
* a call within `spacing_s` of the previous one is answered 429 (the document's 1 minute);
* each call deletes every earlier key of the platform: only the newest pair works;
* a new key is refused (403) for `propagation_s` after it was issued (the document: up to 60 s).

`key_state(key_id)` is what the S3-compatible stand-in (`hmac_s3`) asks to authorise a request.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from mm_assets.sandbox.moloco import WsgiStandIn

_PATH = re.compile(r"^/rmp/mgmt/v1/platforms/([^/]+)/data-export/key$")


@dataclass
class IssuedKey:
    key_id: str
    secret_key: str
    platform_id: str
    issued_at: float
    active_at: float


class MgmtApiStandIn(WsgiStandIn):
    def __init__(
        self, platform_id: str, api_key: str, *, spacing_s: float = 60.0, propagation_s: float = 0.0
    ) -> None:
        self.platform_id = platform_id
        self.api_key = api_key
        self.spacing_s = spacing_s
        self.propagation_s = propagation_s
        self.keys: dict[str, IssuedKey] = {}  # only the newest survives
        self.calls: list[tuple[float, int]] = []  # (time, status)
        self.rotations: list[float] = []
        self._all_secrets: list[str] = []
        self._lock = threading.Lock()
        self._serve()

    def key_state(self, key_id: str) -> str:
        """`active`, `propagating`, or `unknown` (never issued or deleted by a later call)."""
        with self._lock:
            key = self.keys.get(key_id)
        if key is None:
            return "unknown"
        return "active" if time.time() >= key.active_at else "propagating"

    def secret_of(self, key_id: str) -> str | None:
        with self._lock:
            key = self.keys.get(key_id)
        return key.secret_key if key else None

    def issued_secrets(self) -> list[str]:
        """Every secret handed out so far is kept for the no-secrets scans of the tests."""
        return list(self._all_secrets)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._handle(Request(environ))(environ, start_response)

    def _handle(self, request: Request) -> Response:
        match = _PATH.match(request.path)
        if request.method != "POST" or not match:
            return _error(404, "NOT_FOUND")
        status, resp = self._rotate(request, match.group(1))
        with self._lock:
            self.calls.append((time.time(), status))
        return resp

    def _rotate(self, request: Request, platform_id: str) -> tuple[int, Response]:
        if not secrets.compare_digest(request.headers.get("x-api-key", ""), self.api_key):
            return 401, _error(401, "UNAUTHENTICATED")
        if platform_id != self.platform_id:
            return 403, _error(403, "PERMISSION_DENIED")
        if request.mimetype != "application/json":
            return 415, _error(415, "content type must be application/json")
        with self._lock:
            now = time.time()
            if self.rotations and now - self.rotations[-1] < self.spacing_s:
                wait = self.spacing_s - (now - self.rotations[-1])
                resp = _error(429, "RESOURCE_EXHAUSTED: at most one call per minute")
                resp.headers["Retry-After"] = f"{max(wait, 0.1):.2f}"
                return 429, resp
            key = IssuedKey(
                key_id="GOOG1E" + secrets.token_hex(14).upper(),
                secret_key=secrets.token_urlsafe(30),
                platform_id=platform_id,
                issued_at=now,
                active_at=now + self.propagation_s,
            )
            self.keys = {key.key_id: key}  # every earlier key is deleted
            self.rotations.append(now)
            self._all_secrets.append(key.secret_key)
        body = json.dumps({"key_id": key.key_id, "secret_key": key.secret_key})
        return 200, Response(body, 200, content_type="application/json")


def _error(status: int, message: str) -> Response:
    return Response(
        json.dumps({"code": status, "message": message}), status, content_type="application/json"
    )
