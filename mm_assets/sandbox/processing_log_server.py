"""Local stand-in for MediaMath's S2S processing-log API (S2S-LOG).

    GET /logs?filename=...&start_date=...&end_date=...&offset=...   (HTTP Basic auth)

It looks at the files that arrived in the sandbox (SFTP drop folders, and CFT buckets through
callables returning `{name: bytes}`), validates each as MediaMath would with the project's
independent validator, and once `processing_delay_seconds` have passed since the file landed
answers `OK` or the matching documented message:

    not gzip                              -> File is not in GZIP format
    no rows                               -> File is empty
    S2S-HDR                               -> Invalid headers
    SegmentNamespace not allowed          -> Integration X is not authorized to write into
                                             namespaces Y
    any other S2S-* violation             -> File is invalid

Records are served oldest first, `page_size` per page, from `offset`. Faults for tests:
`fail_next` (status codes answered before any real answer; 429 carries `Retry-After`),
`slow_seconds` (+ `slow_next`: how many requests; None = all).

The answer's JSON shape is the sandbox's own guess (the document gives none):
`{"logs": [...], "offset": n, "count": k, "total": t}`, or a bare list with
`response_shape="list"`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from mm_assets.core.s2s_validator import RULE_HDR, FileReport, validate_file

logger = logging.getLogger(__name__)

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MESSAGE_OK = "OK"
MESSAGE_EMPTY = "File is empty"
MESSAGE_INVALID = "File is invalid"
MESSAGE_NOT_GZIP = "File is not in GZIP format"
MESSAGE_INVALID_HEADERS = "Invalid headers"
_GZIP_MAGIC = b"\x1f\x8b"

BucketSource = Callable[[], dict[str, bytes]]


@dataclass
class _Landed:
    """A file the sandbox has seen, and its verdict once decided."""

    name: str
    source: str  # "sftp" or "cft"
    landed_at: float
    size: int
    fingerprint: str
    message: str | None = None
    processed_at: float | None = None
    seq: int = 0


def mediamath_message(
    report: FileReport,
    size: int,
    gzip_magic: bool,
    integration: str,
    allowed_namespaces: Iterable[str],
) -> str:
    """The S2S-LOG message MediaMath would give a file with these validator findings."""
    if size == 0:
        return MESSAGE_EMPTY
    if not gzip_magic:
        return MESSAGE_NOT_GZIP
    texts = {v.message for v in report.violations}
    # A file with neither header nor rows is empty before it is anything else.
    if "File is empty" in texts and not report.header:
        return MESSAGE_EMPTY
    if report.violation_counts.get(RULE_HDR):
        return MESSAGE_INVALID_HEADERS
    namespace = report.header.get("SegmentNamespace", "")
    allowed = list(allowed_namespaces)
    if namespace not in allowed:
        return f"Integration {integration} is not authorized to write into namespaces {namespace}"
    if "File is empty" in texts:
        return MESSAGE_EMPTY
    if not report.ok:
        return MESSAGE_INVALID
    return MESSAGE_OK


def cft_bucket_source(cft: Any) -> BucketSource:
    """A bucket source over a running `SandboxCft`: the objects under its integration prefix,
    by file name. Objects are downloaded once per key and size, not on every request."""
    cache: dict[tuple[str, int], bytes] = {}
    prefix = f"{cft.integration}/"

    def objects() -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for key, size in cft.list_objects(prefix).items():
            if (key, size) not in cache:
                cache[(key, size)] = cft.get_object_bytes(key)[0]
            found[key.rsplit("/", 1)[-1]] = cache[(key, size)]
        return found

    return objects


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, self.path.split("?")[0], code)


class SandboxProcessingLog:
    """The processing-log API on 127.0.0.1, served by werkzeug in a background thread."""

    def __init__(
        self,
        drop_dirs: Sequence[Path | str],
        username: str,
        password: str,
        *,
        processing_delay_seconds: float = 0.0,
        page_size: int = 100,
        allowed_namespaces: Iterable[str] = ("ep",),
        integration: str = "sandbox_partner",
        host: str = "127.0.0.1",
        port: int = 0,
        bucket_sources: Sequence[BucketSource] = (),
        response_shape: str = "object",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if response_shape not in ("object", "list"):
            raise ValueError("response_shape must be 'object' or 'list'")
        self.drop_dirs = [Path(d) for d in drop_dirs]
        self.username = username
        self._password = password
        self.processing_delay_seconds = processing_delay_seconds
        self.page_size = page_size
        self.allowed_namespaces = list(allowed_namespaces)
        self.integration = integration
        self.host = host
        self.port = port
        self.response_shape = response_shape
        self._clock = clock
        self._bucket_sources: list[BucketSource] = list(bucket_sources)
        self._lock = threading.Lock()
        self._landed: dict[str, _Landed] = {}
        self._seq = 0
        # Fault switches, read and written under the lock by tests and the server thread.
        self.fail_next: list[int] = []
        self.retry_after: str = "1"
        self.slow_seconds: float = 0.0
        self.slow_next: int | None = None
        self.requests_seen: list[dict[str, str]] = []
        self.auth_failures = 0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SandboxProcessingLog(url={self.url!r}, username={self.username!r})"

    @property
    def url(self) -> str:
        """The base URL (the client appends `/logs`)."""
        return f"http://{self.host}:{self.port}"

    def add_bucket_source(self, source: BucketSource) -> None:
        """Also watch a CFT bucket: `source()` returns the integration's objects by name."""
        with self._lock:
            self._bucket_sources.append(source)

    # -- what MediaMath has received ----------------------------------------------------------

    def _judge(self, name: str, data_path: Path) -> str:
        with data_path.open("rb") as f:
            magic = f.read(2)
        size = data_path.stat().st_size
        report = validate_file(data_path)
        return mediamath_message(
            report, size, magic == _GZIP_MAGIC, self.integration, self.allowed_namespaces
        )

    def _see(self, name: str, source: str, landed_at: float, size: int, fingerprint: str) -> None:
        known = self._landed.get(name)
        if known is not None and known.fingerprint == fingerprint:
            return
        if known is not None and known.processed_at is not None:
            # MediaMath processes a name once (FileIdentifier is unique); a re-upload under the
            # same name does not get a second record.
            return
        self._landed[name] = _Landed(name, source, landed_at, size, fingerprint)

    def _scan(self) -> None:
        now = self._clock()
        for folder in self.drop_dirs:
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                # Hidden names are uploads in progress (temp name, then rename).
                if path.name.startswith(".") or not path.is_file():
                    continue
                stat = path.stat()
                self._see(
                    path.name,
                    "sftp",
                    min(stat.st_mtime, now),
                    stat.st_size,
                    f"{stat.st_size}:{stat.st_mtime_ns}",
                )
        for source in self._bucket_sources:
            for name, data in source().items():
                if name.startswith("."):
                    continue
                self._see(name, "cft", now, len(data), hashlib.md5(data).hexdigest())
        due = [
            f
            for f in self._landed.values()
            if f.processed_at is None and now >= f.landed_at + self.processing_delay_seconds
        ]
        for landed in sorted(due, key=lambda f: (f.landed_at, f.name)):
            landed.message = self._process(landed)
            landed.processed_at = max(now, landed.landed_at)
            self._seq += 1
            landed.seq = self._seq

    def _process(self, landed: _Landed) -> str:
        if landed.source == "sftp":
            for folder in self.drop_dirs:
                path = folder / landed.name
                if path.is_file():
                    return self._judge(landed.name, path)
            return MESSAGE_INVALID  # gone before MediaMath read it
        for source in self._bucket_sources:
            data = source().get(landed.name)
            if data is not None:
                with tempfile.TemporaryDirectory(prefix="mm-log-") as tmp:
                    path = Path(tmp) / landed.name
                    path.write_bytes(data)
                    return self._judge(landed.name, path)
        return MESSAGE_INVALID

    def records(self) -> list[dict[str, Any]]:
        """Every processed file's record, oldest first (what /logs pages through)."""
        with self._lock:
            self._scan()
            done = sorted(
                (f for f in self._landed.values() if f.processed_at is not None),
                key=lambda f: f.seq,
            )
            return [self._record(f) for f in done]

    @staticmethod
    def _record(f: _Landed) -> dict[str, Any]:
        assert f.processed_at is not None and f.message is not None
        return {
            "id": f.seq,
            "filename": f.name,
            "status": "success" if f.message == MESSAGE_OK else "error",
            "message": f.message,
            "size": f.size,
            "date_received": datetime.fromtimestamp(f.landed_at, UTC).strftime(DATE_FORMAT),
            "date_processed": datetime.fromtimestamp(f.processed_at, UTC).strftime(DATE_FORMAT),
        }

    # -- HTTP ---------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(
            user.encode(), self.username.encode()
        ) and secrets.compare_digest(password.encode(), self._password.encode())

    def _fault(self) -> Response | None:
        with self._lock:
            slow = 0.0
            if self.slow_seconds and (self.slow_next is None or self.slow_next > 0):
                slow = self.slow_seconds
                if self.slow_next is not None:
                    self.slow_next -= 1
            code = self.fail_next.pop(0) if self.fail_next else None
            retry_after = self.retry_after
        if slow:
            time.sleep(slow)
        if code is None:
            return None
        headers = {"Retry-After": retry_after} if code in (429, 503) and retry_after else {}
        return Response(
            json.dumps({"error": f"sandbox fault {code}"}),
            status=code,
            headers=headers,
            mimetype="application/json",
        )

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return Response(
            json.dumps({"error": message}),
            status=status,
            headers=headers,
            mimetype="application/json",
        )

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        with self._lock:
            self.requests_seen.append(dict(request.args))
        response = self._fault()
        if response is None:
            response = self._answer(request)
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        if request.path.rstrip("/") != "/logs":
            return self._error(404, "not found")
        if request.method != "GET":
            return self._error(405, "method not allowed")
        if not self._authorised(request):
            with self._lock:
                self.auth_failures += 1
            return self._error(401, "unauthorized", {"WWW-Authenticate": 'Basic realm="s2s-api"'})
        args = request.args
        try:
            offset = int(args.get("offset", "0"))
            start = (
                datetime.strptime(args["start_date"], DATE_FORMAT) if "start_date" in args else None
            )
            end = datetime.strptime(args["end_date"], DATE_FORMAT) if "end_date" in args else None
        except ValueError as exc:
            return self._error(400, f"bad parameter: {exc}")
        if offset < 0:
            return self._error(400, "offset must not be negative")
        rows = self.records()
        if "filename" in args:
            rows = [r for r in rows if r["filename"] == args["filename"]]
        if start is not None:
            rows = [r for r in rows if r["date_processed"] >= start.strftime(DATE_FORMAT)]
        if end is not None:
            rows = [r for r in rows if r["date_processed"] <= end.strftime(DATE_FORMAT)]
        page = rows[offset : offset + self.page_size]
        body: Any = (
            page
            if self.response_shape == "list"
            else {"logs": page, "offset": offset, "count": len(page), "total": len(rows)}
        )
        return Response(json.dumps(body), status=200, mimetype="application/json")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = make_server(
            self.host, self.port, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.port = self._server.server_port
        server = self._server
        # A short poll interval keeps stop() (and every test's teardown) fast.
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05),
            name="sandbox-processing-log",
            daemon=True,
        )
        self._thread.start()
        logger.info("sandbox processing log on %s", self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
