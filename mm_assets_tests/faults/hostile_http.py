"""Hostile stand-ins for MediaMath's processing-log API, over real sockets (port 0)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class HostileLog:
    """`mode`: "trickle" (1 byte per `trickle_interval`), "huge" (an endless body),
    "ignore_offset" (a new full page on every request, whatever the offset), "echo_auth"
    (HTTP 400 whose body echoes the request headers, Authorization included)."""

    def __init__(self, mode: str, *, trickle_interval: float = 0.2) -> None:
        self.mode = mode
        self.trickle_interval = trickle_interval
        self.requests = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                # The client may stop reading: what a bounded client does.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    getattr(outer, f"_{outer.mode}")(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def _send(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.bytes_sent += len(data)

    def _trickle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"logs": []}).encode() + b" " * 10_000
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for i in range(len(body)):
            if self._stop.wait(self.trickle_interval):
                return
            self._send(handler, body[i : i + 1])

    def _huge(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()  # no length: the body runs until the connection closes
        self._send(handler, b'{"logs": [')
        record = json.dumps({"filename": "x.log.gz", "message": "OK"}).encode() + b","
        block = record * (65536 // len(record))
        while not self._stop.is_set() and self.bytes_sent < 2 * 1024**3:
            self._send(handler, block)

    def _ignore_offset(self, handler: BaseHTTPRequestHandler) -> None:
        page = [{"filename": f"f{self.requests}-{i}.log.gz", "message": "OK"} for i in range(10)]
        body = json.dumps({"logs": page}).encode()  # no total: only an empty page would end it
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        self._send(handler, body)

    def _echo_auth(self, handler: BaseHTTPRequestHandler) -> None:
        auth = handler.headers.get("Authorization", "")
        user_password = base64.b64decode(auth.split()[-1]).decode() if auth else ""
        body = json.dumps(
            {
                "error": f"bad request from {auth}",
                "credentials": user_password,
                "you sent": dict(handler.headers.items()),
            }
        ).encode()
        handler.send_response(400)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("X-Echo-Authorization", handler.headers.get("Authorization", ""))
        handler.end_headers()
        self._send(handler, body)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        time.sleep(0)  # let handler threads see the stop flag
