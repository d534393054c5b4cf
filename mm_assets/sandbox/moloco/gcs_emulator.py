"""The Moloco export bucket: gcp-storage-emulator in-process, optionally behind a token guard.

The emulator accepts any request; with `require_token` a small proxy in front answers 401 unless
the request carries `Authorization: Bearer <token>` with a token the callable accepts, so a test
proves the federated token (MCM-WIF) is what reaches the bucket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

import requests
from werkzeug.wrappers import Request, Response

from mm_assets.sandbox.moloco import ThreadedWsgi

logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)

_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "content-length",
    "host",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """`with GcsEmulator(buckets=["mcm-export-x"]) as gcs: gcs.url ...`"""

    def __init__(
        self,
        buckets: tuple[str, ...] | list[str] = (),
        require_token: Callable[[str], bool] | None = None,
    ) -> None:
        from gcp_storage_emulator.server import create_server

        self._direct_port = _free_port()
        self._server = create_server("127.0.0.1", self._direct_port, in_memory=True)
        self.direct_url = f"http://127.0.0.1:{self._direct_port}"
        self._buckets = list(buckets)
        self._require_token = require_token
        self._proxy: ThreadedWsgi | None = None
        self.refused = 0
        self.url = self.direct_url

    def start(self) -> GcsEmulator:
        self._server.start()
        if self._require_token is not None:
            self._proxy = ThreadedWsgi(self._guard).start()
            self.url = self._proxy.url
        admin = self.admin_client()
        for name in self._buckets:
            admin.create_bucket(name)
        return self

    def stop(self) -> None:
        if self._proxy:
            self._proxy.stop()
        self._server.stop()

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guard(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        assert self._require_token is not None
        if not token or not self._require_token(token):
            self.refused += 1
            body = b'{"error": {"code": 401, "message": "Invalid Credentials"}}'
            return Response(body, 401, content_type="application/json")(environ, start_response)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        upstream = requests.request(
            request.method,
            self.direct_url + request.full_path.rstrip("?"),
            headers=headers,
            data=request.get_data(),
            timeout=30,
            stream=True,
        )
        out = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP]
        return Response(upstream.raw.read(decode_content=False), upstream.status_code, headers=out)(
            environ, start_response
        )

    # -- test helpers (straight to the emulator, no auth) -------------------------------------

    def admin_client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="sandbox",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.direct_url},
        )

    def put(self, bucket: str, name: str, data: bytes) -> int:
        """Write an object; returns its generation."""
        blob = self.admin_client().bucket(bucket).blob(name)
        blob.upload_from_string(data)
        return int(blob.generation)

    def delete(self, bucket: str, name: str) -> None:
        self.admin_client().bucket(bucket).blob(name).delete()

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.admin_client().list_blobs(bucket, prefix=prefix))

    def read(self, bucket: str, name: str) -> bytes:
        return self.admin_client().bucket(bucket).blob(name).download_as_bytes()

    def updated(self, bucket: str, name: str) -> datetime | None:
        blob = self.admin_client().bucket(bucket).get_blob(name)
        return blob.updated if blob else None
