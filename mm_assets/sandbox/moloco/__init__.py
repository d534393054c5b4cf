"""Local stand-ins for the Moloco MCM export (002): GCS, Google STS + IAM Credentials, the MCM
Management API's key rotation, an S3-compatible HMAC endpoint and the Storage Transfer API.

Each serves its real protocol on a real socket on 127.0.0.1; timings are parameters so tests
run in seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ThreadedWsgi:
    """A werkzeug server on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, app: WsgiApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            daemon=True,
            name=f"sandbox-{self.port}",
        )

    def start(self) -> ThreadedWsgi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class WsgiStandIn:
    """Start/stop and `with` support for a stand-in that serves `self._app` on `self._server`.

    Subclasses call `self._serve()` in `__init__`, after their own state is set up.
    """

    url: str

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        raise NotImplementedError

    def _serve(self) -> None:
        self._server = ThreadedWsgi(self._app)
        self.url = self._server.url

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
