"""In-process stand-in for MediaMath Cloud File Transfer (CFT-CRED, CFT-PUT).

One werkzeug server on a real socket serves three things:

* moto's S3/STS/IAM WSGI app, with moto's IAM enforcement switched on, so issued credentials
  only reach `s3://<bucket>/<integration>/*`, a wrong session token is refused (`InvalidToken`)
  and a path outside the prefix is `AccessDenied`;
* a thin guard in front of moto for the CFT rules moto does not know: multipart initiation is
  refused (403 `AccessDenied`), a PUT above `max_put_bytes` is refused (400 `EntityTooLarge`),
  listing outside the prefix is refused (moto ignores the policy's `s3:prefix` condition), and
  a request signed with an issued key past its lifetime gets 403 `ExpiredToken` (moto never
  expires session tokens);
* the credentials endpoint `POST /cft/credentials` (JSON in/out, username/password checked).

How issuing works with enforcement on: moto's `reset-auth` switch is process-wide and, once on,
checks every API request, including STS calls. The endpoint therefore issues credentials by
calling moto's STS backend (`assume_role`) in-process: the very model behind the AssumeRole API,
but no API request to authorise, so credentials can be issued at any time and no pool has to be
pre-issued. (Calling AssumeRole over HTTP also works with the keys of an IAM user created before
enforcement; it was not used because botocore logs the issued secret key at DEBUG when it parses
the answer, and this server runs inside the test process.)

Because moto keeps its state and its enforcement switch per process, only one `SandboxCft` may
run in a process at a time; `stop()` restores the previous enforcement setting and resets moto.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import re
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import boto3
import requests
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sts.models import sts_backends
from werkzeug.serving import BaseWSGIServer, make_server

logger = logging.getLogger(__name__)

DEFAULT_BUCKET = "prod-default-cft"
CREDENTIALS_PATH = "/cft/credentials"
DEFAULT_MAX_PUT_BYTES = 5 * 1024**3  # CFT-PUT: 5 GB strict limit per file
_REGION = "us-east-1"
_ACCOUNT_ID = "123456789012"  # moto's default account
_ROLE_NAME = "mediamath-cft-partner"
_ADMIN_USER = "sandbox-admin"
# moto refuses session durations below 15 minutes like AWS; the short test lifetimes are
# enforced by the guard instead.
_MIN_STS_DURATION = 900
_DRAIN_CHUNK = 1024 * 1024
_MAX_CREDENTIALS_BODY = 64 * 1024

_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]
_WsgiApp = Callable[[_Environ, _StartResponse], Iterable[bytes]]

_CREDENTIAL_RE = re.compile(r"Credential=([A-Za-z0-9]+)/")
_TOKEN_RE = re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=,]\s*b?['\"]?)[^\s'\",;&]+")


class _RedactSessionTokens(logging.Filter):
    """moto logs every authorised request's headers at DEBUG, session token included."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken log call is not ours to fix
            return True
        redacted = _TOKEN_RE.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT_FILTER = _RedactSessionTokens()
_MOTO_LOGGERS_WITH_HEADERS = ("moto.iam.access_control",)


@dataclass(frozen=True)
class SeenRequest:
    """One request the guard saw (before deciding), for tests to assert on."""

    method: str
    path: str
    query: str
    access_key_id: str | None
    content_length: int | None


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, self.path, code)


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()


def _content_length(environ: _Environ) -> int | None:
    raw = environ.get("CONTENT_LENGTH")
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


class SandboxCft:
    """Local CFT: S3 (moto + guard) and the credentials endpoint on one port."""

    _running_lock: ClassVar[threading.Lock] = threading.Lock()
    _running: ClassVar[bool] = False

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bucket: str = DEFAULT_BUCKET,
        integration: str = "sandbox_partner",
        username: str = "cft_partner",
        password: str | None = None,
        lifetime_seconds: float = 3600.0,
        max_put_bytes: int = DEFAULT_MAX_PUT_BYTES,
        enforce_auth: bool = True,
        report_expiration: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.bucket = bucket
        self.integration = integration
        self.username = username
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self.lifetime_seconds = lifetime_seconds
        self.max_put_bytes = max_put_bytes
        self.enforce_auth = enforce_auth
        self.report_expiration = report_expiration
        # Fault injection: answer the next N credential requests with 503; report a wrong
        # ETag on the next N object HEADs (as if the stored object were not what was sent).
        self.fail_credentials_requests = 0
        self.tamper_next_head_etags = 0

        self.credentials_requests = 0
        self.credentials_issued = 0
        self.multipart_refusals = 0
        self.oversize_refusals = 0
        self.expired_refusals = 0
        self.seen: list[SeenRequest] = []
        # Everything handed out, so tests can prove none of it leaks into logs or errors.
        self.issued_credentials: list[dict[str, str]] = []

        self._lock = threading.Lock()
        self._expiry_by_key: dict[str, float] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._role_arn = ""
        self._admin_key: tuple[str, str] | None = None
        self._previous_auth_count = "inf"
        self._owns_process_slot = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("SandboxCft is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def s3_endpoint_url(self) -> str:
        return self.base_url

    @property
    def credentials_url(self) -> str:
        return self.base_url + CREDENTIALS_PATH

    def start(self) -> Self:
        with SandboxCft._running_lock:
            if SandboxCft._running:
                raise RuntimeError("moto state is per process: only one SandboxCft at a time")
            SandboxCft._running = True
            self._owns_process_slot = True
        try:
            moto_app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(
                self.host,
                self.port,
                self._guard(moto_app),
                threaded=True,
                request_handler=_QuietHandler,
            )
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="sandbox-cft", daemon=True
            )
            self._thread.start()
            for name in _MOTO_LOGGERS_WITH_HEADERS:
                logging.getLogger(name).addFilter(_REDACT_FILTER)
            self._setup_moto()
            with self._lock:
                self.seen.clear()  # tests look at their own traffic, not the setup's
        except BaseException:
            self.stop()
            raise
        logger.info("sandbox CFT on %s (bucket %s)", self.base_url, self.bucket)
        return self

    def _setup_moto(self) -> None:
        # Leftovers of an earlier sandbox or mock in this process would make setup fail.
        requests.post(self.base_url + "/moto-api/reset", timeout=10).raise_for_status()
        answer = requests.post(self.base_url + "/moto-api/reset-auth", data=b"inf", timeout=10)
        answer.raise_for_status()
        self._previous_auth_count = answer.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

        # Enforcement is off: moto accepts any static keys for the setup calls.
        setup = {"aws_access_key_id": "sandboxsetup", "aws_secret_access_key": "sandboxsetup"}
        s3 = self._boto("s3", **setup)
        iam = self._boto("iam", **setup)
        s3.create_bucket(Bucket=self.bucket)
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
            ],
        }
        role = iam.create_role(RoleName=_ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
        self._role_arn = role["Role"]["Arn"]
        iam.put_role_policy(
            RoleName=_ROLE_NAME,
            PolicyName="cft-partner",
            PolicyDocument=json.dumps(self.partner_policy()),
        )
        # The admin principal lets tests inspect the bucket while enforcement is on.
        iam.create_user(UserName=_ADMIN_USER)
        iam.put_user_policy(
            UserName=_ADMIN_USER,
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName=_ADMIN_USER)["AccessKey"]
        self._admin_key = (key["AccessKeyId"], key["SecretAccessKey"])
        s3.close()
        iam.close()
        if self.enforce_auth:
            requests.post(
                self.base_url + "/moto-api/reset-auth", data=b"0", timeout=10
            ).raise_for_status()

    def partner_policy(self) -> dict[str, Any]:
        """The IAM policy of issued credentials (CFT-PUT: list, put, get under the prefix)."""
        prefix = f"{self.integration}/"
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": f"arn:aws:s3:::{self.bucket}",
                    # moto ignores this condition; the guard enforces it.
                    "Condition": {"StringLike": {"s3:prefix": [prefix, prefix + "*"]}},
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject"],
                    "Resource": f"arn:aws:s3:::{self.bucket}/{prefix}*",
                },
            ],
        }

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            base = "http://{}:{}".format(*server.server_address[:2])
            try:
                # Enforcement and moto's state are process-wide: hand the process back as found.
                requests.post(
                    base + "/moto-api/reset-auth",
                    data=str(self._previous_auth_count).encode(),
                    timeout=10,
                )
                requests.post(base + "/moto-api/reset", timeout=10)
            except requests.RequestException:
                logger.warning("sandbox CFT: could not reset moto on stop")
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for name in _MOTO_LOGGERS_WITH_HEADERS:
            logging.getLogger(name).removeFilter(_REDACT_FILTER)
        if self._owns_process_slot:
            with SandboxCft._running_lock:
                SandboxCft._running = False
            self._owns_process_slot = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------

    def _boto(self, service: str, **credentials: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.base_url,
            region_name=_REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
            **credentials,
        )

    def admin_s3(self) -> Any:
        """An S3 client with full access (the sandbox's admin user), for inspection."""
        if self._admin_key is None:
            raise RuntimeError("SandboxCft is not started")
        return self._boto(
            "s3", aws_access_key_id=self._admin_key[0], aws_secret_access_key=self._admin_key[1]
        )

    def partner_s3(self, credentials: dict[str, str]) -> Any:
        """A plain boto3 S3 client signed with credentials from the endpoint (for raw probes)."""
        return self._boto(
            "s3",
            aws_access_key_id=credentials["accessKeyID"],
            aws_secret_access_key=credentials["secretAccessKey"],
            aws_session_token=credentials["sessionToken"],
        )

    def list_objects(self, prefix: str = "") -> dict[str, int]:
        """All objects in the bucket: {key: size}."""
        client = self.admin_s3()
        try:
            found: dict[str, int] = {}
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    found[item["Key"]] = item["Size"]
            return found
        finally:
            client.close()

    def get_object_bytes(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (quotes stripped)."""
        client = self.admin_s3()
        try:
            answer = client.get_object(Bucket=self.bucket, Key=key)
            return answer["Body"].read(), answer["ETag"].strip('"')
        finally:
            client.close()

    def issue_credentials(self) -> dict[str, str]:
        """What the credentials endpoint hands out, without going through HTTP."""
        with self._lock:
            n = self.credentials_issued + 1
            self.credentials_issued = n
        role = sts_backends[_ACCOUNT_ID]["aws"].assume_role(
            region_name=_REGION,
            role_session_name=f"cft-{n}",
            role_arn=self._role_arn,
            policy=None,
            duration=max(_MIN_STS_DURATION, int(self.lifetime_seconds) + 1),
            external_id=None,
        )
        expires_at = time.time() + self.lifetime_seconds
        with self._lock:
            self._expiry_by_key[role.access_key_id] = expires_at
        answer = {
            "accessKeyID": role.access_key_id,
            "secretAccessKey": role.secret_access_key,
            "sessionToken": role.session_token,
        }
        if self.report_expiration:
            answer["expiration"] = datetime.fromtimestamp(expires_at, UTC).isoformat()
        with self._lock:
            self.issued_credentials.append(dict(answer))
        return answer

    def revoke_issued(self) -> None:
        """Expire every credential issued so far, now (as if the server's clock ran ahead)."""
        with self._lock:
            now = time.time()
            for key in self._expiry_by_key:
                self._expiry_by_key[key] = now - 1

    # -- the WSGI guard --------------------------------------------------------------------

    def _guard(self, moto_app: _WsgiApp) -> _WsgiApp:
        def app(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == CREDENTIALS_PATH:
                return self._credentials_endpoint(environ, start_response)
            if path.startswith("/moto-api/"):
                return moto_app(environ, start_response)
            refusal = self._check(environ, path)
            if refusal is not None:
                status, code, message = refusal
                _drain(environ)
                body = _error_xml(code, message)
                start_response(
                    status,
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                return [body]
            if environ.get("REQUEST_METHOD") == "HEAD" and self._take_head_tamper():
                return moto_app(environ, _with_bogus_etag(start_response))
            return moto_app(environ, start_response)

        return app

    def _take_head_tamper(self) -> bool:
        with self._lock:
            if self.tamper_next_head_etags <= 0:
                return False
            self.tamper_next_head_etags -= 1
            return True

    def _check(self, environ: _Environ, path: str) -> tuple[str, str, str] | None:
        method = environ.get("REQUEST_METHOD", "")
        query_string = environ.get("QUERY_STRING", "")
        query = parse_qs(query_string, keep_blank_values=True)
        length = _content_length(environ)
        access_key = _access_key_id(environ, query)
        with self._lock:
            self.seen.append(SeenRequest(method, path, query_string, access_key, length))
            expires_at = self._expiry_by_key.get(access_key or "")
            issued = expires_at is not None
            if issued and time.time() >= expires_at:
                self.expired_refusals += 1
                return "403 Forbidden", "ExpiredToken", "The provided token has expired."
            if method == "POST" and "uploads" in query:
                self.multipart_refusals += 1
                return "403 Forbidden", "AccessDenied", "Multipart uploads are not permitted."
            if method == "PUT" and length is not None and length > self.max_put_bytes:
                self.oversize_refusals += 1
                return (
                    "400 Bad Request",
                    "EntityTooLarge",
                    "Your proposed upload exceeds the maximum allowed size",
                )
        if issued and method == "GET" and path.strip("/") == self.bucket:
            prefix = query.get("prefix", [""])[0]
            if not prefix.startswith(f"{self.integration}/"):
                return "403 Forbidden", "AccessDenied", "Access Denied"
        return None

    def _credentials_endpoint(
        self, environ: _Environ, start_response: _StartResponse
    ) -> Iterable[bytes]:
        def answer(status: str, payload: dict[str, Any]) -> list[bytes]:
            body = json.dumps(payload).encode()
            start_response(
                status,
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]

        with self._lock:
            self.credentials_requests += 1
            fail = self.fail_credentials_requests > 0
            if fail:
                self.fail_credentials_requests -= 1
        if environ.get("REQUEST_METHOD") != "POST":
            _drain(environ)
            return answer("405 Method Not Allowed", {"message": "POST only"})
        length = _content_length(environ) or 0
        if length > _MAX_CREDENTIALS_BODY:
            _drain(environ)
            return answer("413 Request Entity Too Large", {"message": "body too large"})
        raw = environ["wsgi.input"].read(length) if length else b""
        if fail:
            return answer("503 Service Unavailable", {"message": "try again"})
        try:
            body = json.loads(raw)
            username, password = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            return answer("400 Bad Request", {"message": "expected JSON username and password"})
        ok_user = hmac.compare_digest(username.encode(), self.username.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        if not (ok_user and ok_password):
            return answer("401 Unauthorized", {"message": "invalid credentials"})
        return answer("200 OK", self.issue_credentials())


def _access_key_id(environ: _Environ, query: dict[str, list[str]]) -> str | None:
    match = _CREDENTIAL_RE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(1)
    presigned = query.get("X-Amz-Credential")
    if presigned:
        return presigned[0].split("/", 1)[0]
    return None


def _with_bogus_etag(start_response: _StartResponse) -> _StartResponse:
    def patched(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        headers = [(k, '"' + "0" * 32 + '"' if k.lower() == "etag" else v) for k, v in headers]
        return start_response(status, headers, *args)

    return patched


def _drain(environ: _Environ) -> None:
    # Replying before the body is read makes the kernel reset the connection, and the client
    # then sees a broken pipe instead of our error.
    remaining = _content_length(environ) or 0
    stream = environ["wsgi.input"]
    while remaining > 0:
        chunk = stream.read(min(remaining, _DRAIN_CHUNK))
        if not chunk:
            break
        remaining -= len(chunk)


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox CFT in the foreground for the local demo."""
    from mm_assets.sandbox.run_sandbox import SandboxPorts

    parser = argparse.ArgumentParser(description="Local stand-in for MediaMath CFT (S3 + STS)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=SandboxPorts.from_environment().cft)
    parser.add_argument("--integration", default="sandbox_partner")
    parser.add_argument("--username", default="cft_partner")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="credential lifetime, s")
    parser.add_argument("--max-put-bytes", type=int, default=DEFAULT_MAX_PUT_BYTES)
    parser.add_argument(
        "--state-dir", required=True, type=Path, help="keeps the password file here"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    password_file = state / "cft_password"
    # Reuse the password across restarts so the demo's configuration stays valid.
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(18)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)

    sandbox = SandboxCft(
        host=args.host,
        port=args.port,
        integration=args.integration,
        username=args.username,
        password=password,
        lifetime_seconds=args.lifetime,
        max_put_bytes=args.max_put_bytes,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with sandbox:
        print(f"S3 endpoint:          {sandbox.s3_endpoint_url}")
        print(f"credentials endpoint: {sandbox.credentials_url}")
        print(f"bucket/prefix:        s3://{sandbox.bucket}/{sandbox.integration}/")
        print(f"username:             {sandbox.username}")
        print(f"password file:        {password_file}")
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
