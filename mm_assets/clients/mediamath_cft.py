"""Delivery into MediaMath Cloud File Transfer: S3 with temporary credentials (CFT-CRED, CFT-PUT).

The credentials endpoint trades the SFTP username/password for one-hour STS credentials. The
S3 client gets them through a botocore `RefreshableCredentials`, so the SDK renews them before
they expire, also in the middle of a long run; static keys would start failing after an hour.

CFT permits only list, put and get under `s3://prod-default-cft/<integration>/`, at most 5 GB
per object and no multipart upload. So every file goes up in one `put_object` with
`Content-MD5`, is checked with `head_object`, and boto3's managed transfers (`upload_file`,
`upload_fileobj`), which switch to multipart above 8 MiB, are never used.

No secret (password, secret key, session token) may reach an exception message or a log line:
errors are re-raised as our own types with messages built from error codes only, and a logging
filter redacts the session token botocore writes into its DEBUG logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

import botocore.session
import requests
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.loaders import create_loader

from mm_assets.clients.redaction import SecretRedactingFilter
from mm_assets.clients.retry import Backoff, RetriesExhausted, retry
from mm_assets.clients.transport import (
    AuthenticationFailed,
    DeliveryError,
    FileRefused,
    OutgoingFile,
    ServiceDown,
    Sighting,
    TransientDeliveryError,
    UploadResult,
)
from mm_assets.core.clock import utc_now

logger = logging.getLogger(__name__)

DEFAULT_BUCKET = "prod-default-cft"
DEFAULT_REGION = "us-east-1"
# CFT-PUT: 5 GB strict limit per object, read as decimal (the smaller meaning, as the quotas)
DEFAULT_MAX_FILE_BYTES = 5 * 10**9
DEFAULT_CREDENTIALS_LIFETIME = 3600.0  # CFT-CRED: credentials expire after one hour

_T = TypeVar("_T")

_INTEGRATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MD5_HEX_RE = re.compile(r"^[0-9a-fA-F]{32}$")

# Error codes meaning "these credentials are not (or no longer) good": one forced refresh
# may cure them (early revocation, clock skew); a second refusal is final.
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "Forbidden",
        "403",
    }
)
# HEAD answers carry no body, so botocore only sees the status (AWS answers 400 to HEAD with
# an expired token).
_HEAD_AUTH_CODES = frozenset({"400", "BadRequest"})
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "BadDigest",  # the body was damaged on the way; the local file has the right md5
        "IncompleteBody",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_TOKEN_HEADER_RE = re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=,]\s*b?['\"]?)[^\s'\",;&]+")
# At DEBUG botocore.endpoint logs each request's headers, botocore.auth the canonical request
# and botocore.parsers error bodies (SignatureDoesNotMatch echoes the canonical request): all
# three can carry the session token.
_BOTOCORE_LOGGERS = (
    "botocore.endpoint",
    "botocore.auth",
    "botocore.parsers",
    "urllib3.connectionpool",
)


_REDACTOR = SecretRedactingFilter(patterns=(_TOKEN_HEADER_RE,))


@dataclass(frozen=True)
class CftCredentials:
    """Temporary S3 credentials from the CFT credentials endpoint (CFT-CRED)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiry: datetime  # timezone-aware UTC

    def botocore_metadata(self) -> dict[str, str]:
        """The dict `RefreshableCredentials` expects from its refresh function."""
        return {
            "access_key": self.access_key_id,
            "secret_key": self.secret_access_key,
            "token": self.session_token,
            "expiry_time": self.expiry.isoformat(),
        }


def _parse_expiry(raw: object) -> datetime | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        seconds = raw / 1000 if raw > 1e12 else raw  # epoch milliseconds or seconds
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            return None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None


class CftCredentialsClient:
    """Trades the SFTP username/password for temporary S3 credentials (CFT-CRED)."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        ca_bundle: str | Path | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 10.0,
        credentials_lifetime: float = DEFAULT_CREDENTIALS_LIFETIME,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Configure (no network I/O until `fetch`).

        `credentials_lifetime` is assumed when the answer carries no `expiration`.
        `ca_bundle` replaces the system trust store for the endpoint's TLS certificate.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if credentials_lifetime <= 0:
            raise ValueError("credentials_lifetime must be positive")
        self.url = url
        self.username = username
        self._password = password
        self._verify: str | bool = str(ca_bundle) if ca_bundle is not None else True
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.credentials_lifetime = credentials_lifetime
        self.fetch_count = 0
        # What "now" is for expiry decisions, here and in botocore's refresh.
        self.clock: Callable[[], datetime] = clock or utc_now
        self._session = requests.Session()
        _REDACTOR.add(password)

    def __repr__(self) -> str:
        return f"CftCredentialsClient(url={self.url!r}, username={self.username!r})"

    def fetch(self) -> CftCredentials:
        """New credentials; retries connection errors and 5xx, never 401/403."""

        def log_retry(attempt: int, exc: Exception, delay: float) -> float:
            logger.warning(
                "CFT credentials attempt %d/%d failed (%s); retrying in %.1f s",
                attempt,
                self.max_attempts,
                exc,
                delay,
            )
            return delay

        try:
            return retry(
                lambda _: self._fetch_once(),
                attempts=self.max_attempts,
                backoff=Backoff(self.backoff_base_seconds, self.backoff_max_seconds),
                retryable=lambda exc: isinstance(exc, TransientDeliveryError),
                before_retry=log_retry,
            )
        except RetriesExhausted as exhausted:
            raise ServiceDown(
                f"CFT credentials endpoint down ({exhausted.attempts} attempts; last: "
                f"{exhausted.last}); no file can be sent until it answers"
            ) from None

    def _fetch_once(self) -> CftCredentials:
        self.fetch_count += 1
        try:
            response = self._session.post(
                self.url,
                data=json.dumps({"username": self.username, "password": self._password}),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self.timeout,
                verify=self._verify,
            )
        except requests.exceptions.SSLError:
            # A certificate problem does not heal by retrying.
            raise DeliveryError("CFT credentials endpoint: TLS verification failed") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            # requests' own message carries the URL; the type name is enough to act on.
            raise TransientDeliveryError(
                f"CFT credentials endpoint unreachable ({type(exc).__name__})"
            ) from None
        except requests.RequestException as exc:
            raise DeliveryError(f"CFT credentials request failed ({type(exc).__name__})") from None
        status = response.status_code
        if status in (401, 403):
            raise AuthenticationFailed(
                f"CFT credentials endpoint refused user {self.username!r} (HTTP {status})"
            )
        if status == 429 or status >= 500:
            raise TransientDeliveryError(f"CFT credentials endpoint answered HTTP {status}")
        if status != 200:
            raise DeliveryError(f"CFT credentials endpoint answered HTTP {status}")
        return self._parse(response)

    def _parse(self, response: requests.Response) -> CftCredentials:
        try:
            body = response.json()
            access_key = body["accessKeyID"]
            secret_key = body["secretAccessKey"]
            token = body["sessionToken"]
        except (ValueError, KeyError, TypeError):
            # Never echo the body: it may hold a secret in an unexpected shape.
            raise DeliveryError(
                "CFT credentials endpoint answered without accessKeyID, secretAccessKey "
                "and sessionToken"
            ) from None
        if not all(isinstance(v, str) and v for v in (access_key, secret_key, token)):
            raise DeliveryError("CFT credentials endpoint answered empty credentials")
        _REDACTOR.add(secret_key, token)

        now = self.clock()
        raw_expiry = body.get("expiration", body.get("Expiration"))
        expiry = _parse_expiry(raw_expiry) if raw_expiry is not None else None
        if raw_expiry is not None and expiry is None:
            logger.warning("CFT credentials: unreadable expiration; assuming the lifetime")
        elif expiry is not None and expiry <= now:
            logger.warning("CFT credentials: expiration in the past (clock skew?); ignoring it")
            expiry = None
        if expiry is None:
            expiry = now + timedelta(seconds=self.credentials_lifetime)
        logger.debug("fetched CFT credentials %s, valid until %s", access_key, expiry.isoformat())
        return CftCredentials(access_key, secret_key, token, expiry)

    def close(self) -> None:
        self._session.close()


class _CftCredentialProvider(CredentialProvider):
    """Gives a botocore session our refreshable credentials and nothing else (no env, no IMDS)."""

    METHOD = "mediamath-cft"
    CANONICAL_NAME = "MediaMathCft"

    def __init__(self, credentials: RefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


class _CredentialsRefused(Exception):
    """S3 refused the credentials; one forced refresh may help (internal)."""


class MediaMathCft:
    """`Transport` into MediaMath's CFT bucket (CFT-CRED, CFT-PUT)."""

    name = "cft"
    delivered_files_stay_visible = True  # objects stay in the bucket (CFT-PUT)

    def __init__(
        self,
        *,
        credentials_url: str,
        username: str,
        password: str,
        integration: str,
        bucket: str = DEFAULT_BUCKET,
        endpoint_url: str | None = None,
        region: str = DEFAULT_REGION,
        credentials_lifetime: float = DEFAULT_CREDENTIALS_LIFETIME,
        refresh_margin_seconds: float = 600.0,
        max_attempts: int = 5,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        connect_timeout: float = 30.0,
        read_timeout: float = 300.0,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        ca_bundle: str | Path | None = None,
        credentials_client: CftCredentialsClient | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Configure (no network I/O until the first call).

        `endpoint_url` None means AWS S3. `refresh_margin_seconds` is how long before expiry
        botocore must renew the credentials (it starts trying at 1.5 times that); keep it well
        below the lifetime. `credentials_client` replaces the one built from url/user/password.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not _INTEGRATION_RE.match(integration):
            raise ValueError("integration must be a plain name (letters, digits, . _ -)")
        if refresh_margin_seconds < 0:
            raise ValueError("refresh_margin_seconds must not be negative")
        self.integration = integration
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.refresh_margin_seconds = refresh_margin_seconds
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_file_bytes = max_file_bytes
        self._ca_bundle = str(ca_bundle) if ca_bundle is not None else None
        self.credentials = credentials_client or CftCredentialsClient(
            credentials_url,
            username,
            password,
            ca_bundle=ca_bundle,
            credentials_lifetime=credentials_lifetime,
            clock=clock,
            # Its retries run inside one of our attempts (and inside botocore's refresh),
            # so they stay short; our own loop does the long waits.
            backoff_base_seconds=min(backoff_base_seconds, 1.0),
        )
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Our loop retries, so the attempt count is ours and every try reopens the file.
            retries={"total_max_attempts": 1, "mode": "standard"},
            # Content-MD5 already guards the body; no aws-chunked trailer, plain single PUT.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self._loader = create_loader()  # shared so a rebuilt client does not reload models
        self._lock = threading.RLock()
        self._client: Any = None
        self._closed = False
        # One credentials outage per transport life: later calls fail at once (CFT-CRED).
        self._outage: ServiceDown | None = None
        _REDACTOR.install(_BOTOCORE_LOGGERS)

    def __repr__(self) -> str:
        return (
            f"MediaMathCft(bucket={self.bucket!r}, integration={self.integration!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- client and credentials ------------------------------------------------------------

    def _s3(self) -> Any:
        with self._lock:
            if self._closed:
                raise DeliveryError("CFT transport is closed")
            if self._outage is not None:
                raise ServiceDown(str(self._outage))
            if self._client is None:
                try:
                    self._client = self._build_client()
                except ServiceDown as exc:
                    self._outage = exc
                    raise
            return self._client

    def _build_client(self) -> Any:
        margin = self.refresh_margin_seconds
        fresh = self.credentials.fetch()
        credentials = RefreshableCredentials(
            access_key=fresh.access_key_id,
            secret_key=fresh.secret_access_key,
            token=fresh.session_token,
            expiry_time=fresh.expiry,
            refresh_using=self._refresh_metadata,
            method=_CftCredentialProvider.METHOD,
            # The expiry is judged on the injected clock (tests move it, never sleep).
            time_fetcher=self.credentials.clock,
            advisory_timeout=margin * 1.5,
            mandatory_timeout=margin,
        )
        session = botocore.session.Session()
        session.register_component("data_loader", self._loader)
        session.register_component(
            "credential_provider", CredentialResolver([_CftCredentialProvider(credentials)])
        )
        return session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            verify=self._ca_bundle,
            config=self._config,
        )

    def _refresh_metadata(self) -> dict[str, str]:
        logger.info("refreshing CFT credentials before they expire")
        return self.credentials.fetch().botocore_metadata()

    def _force_refresh(self) -> None:
        # botocore offers no public "refresh now"; a new client with freshly fetched
        # credentials is the supported way, and it is rare (early revocation, clock skew).
        with self._lock:
            old, self._client = self._client, None
            if old is not None:
                old.close()
            self._client = self._build_client()

    # -- retry loop ------------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[Any], _T]) -> tuple[_T, int]:
        """Run `operation(s3_client)` with retries (`clients.retry`); returns its result and
        the attempts used. Refused credentials get one forced refresh, without a wait."""
        refreshed = False
        used = 0

        def attempt(number: int) -> _T:
            nonlocal used
            used = number
            try:
                return operation(self._s3())
            except ServiceDown as exc:
                self._outage = exc
                raise

        def retryable(exc: Exception) -> bool:
            if isinstance(exc, _CredentialsRefused):
                return not refreshed
            return isinstance(exc, TransientDeliveryError) and not isinstance(exc, ServiceDown)

        def before_retry(number: int, exc: Exception, delay: float) -> float:
            nonlocal refreshed
            if isinstance(exc, _CredentialsRefused):
                logger.warning("%s: %s; fetching new credentials", what, exc)
                refreshed = True
                self._force_refresh()
                return 0.0
            logger.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                what,
                number,
                self.max_attempts,
                exc,
                delay,
            )
            return delay

        try:
            result = retry(
                attempt,
                attempts=self.max_attempts,
                backoff=Backoff(self.backoff_base_seconds, self.backoff_max_seconds),
                retryable=retryable,
                before_retry=before_retry,
            )
        except (_CredentialsRefused, RetriesExhausted) as failed:
            last = failed.last if isinstance(failed, RetriesExhausted) else failed
            if isinstance(last, _CredentialsRefused):
                raise AuthenticationFailed(
                    f"{what}: CFT refused the credentials after a refresh ({last})"
                ) from None
            raise TransientDeliveryError(
                f"{what}: gave up after {used} attempts; last: {last}"
            ) from None
        return result, used

    def _translate(self, exc: Exception, operation: str, key: str) -> Exception:
        """Our error for a botocore one; the message names codes, never request details."""
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            # Only the code and status: S3's SignatureDoesNotMatch body echoes the canonical
            # request, session token included.
            text = f"{operation} {key}: {code} (HTTP {status})"
            if code in _AUTH_CODES or (operation == "HeadObject" and code in _HEAD_AUTH_CODES):
                return _CredentialsRefused(text)
            if code == "EntityTooLarge":
                return FileRefused(f"{text}: larger than CFT accepts (CFT-PUT)")
            if code in _TRANSIENT_CODES or status >= 500:
                return TransientDeliveryError(text)
            return DeliveryError(text)
        if isinstance(exc, HTTPClientError | BotoConnectionError):
            return TransientDeliveryError(f"{operation} {key}: {type(exc).__name__}")
        return DeliveryError(f"{operation} {key}: {type(exc).__name__}")

    def _call(self, operation: str, key: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except DeliveryError:
            raise  # from the credentials endpoint, already clean
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, operation, key) from None

    # -- Transport -------------------------------------------------------------------------

    def key_for(self, name: str) -> str:
        """The object key of remote file `name`: `<integration>/<name>`."""
        if not name or "/" in name or name in (".", ".."):
            raise FileRefused(f"remote name {name!r} is not a plain file name")
        return f"{self.integration}/{name}"

    def upload(self, file: OutgoingFile) -> UploadResult:
        """One single-part PUT with Content-MD5, then HEAD to check size and ETag (CFT-PUT)."""
        key = self.key_for(file.name)
        if file.size > self.max_file_bytes:
            raise FileRefused(
                f"{file.name}: {file.size} bytes is above the CFT limit of "
                f"{self.max_file_bytes} bytes (CFT-PUT); not sent"
            )
        if not _MD5_HEX_RE.match(file.md5_hex):
            raise FileRefused(f"{file.name}: md5 {file.md5_hex!r} is not 32 hex digits")
        try:
            local_size = file.path.stat().st_size
        except OSError as exc:
            raise DeliveryError(f"{file.name}: local file unreadable ({exc.strerror})") from None
        if local_size != file.size:
            raise FileRefused(
                f"{file.name}: local file has {local_size} bytes, expected {file.size}; not sent"
            )
        content_md5 = base64.b64encode(binascii.unhexlify(file.md5_hex)).decode()

        def attempt(s3: Any) -> None:
            with file.path.open("rb") as body:
                # A file object, not bytes: botocore streams it; the file may be gigabytes.
                self._call(
                    "PutObject",
                    key,
                    lambda: s3.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        ContentLength=file.size,
                        ContentMD5=content_md5,
                    ),
                )
            head = self._call(
                "HeadObject", key, lambda: s3.head_object(Bucket=self.bucket, Key=key)
            )
            remote_size = head.get("ContentLength")
            etag = str(head.get("ETag", "")).strip('"').lower()
            if remote_size != file.size or etag != file.md5_hex.lower():
                raise TransientDeliveryError(
                    f"{key}: after upload the object has {remote_size} bytes and ETag {etag}, "
                    f"expected {file.size} and {file.md5_hex.lower()}"
                )

        _, attempts = self._run(f"upload {file.name}", attempt)
        remote_path = f"s3://{self.bucket}/{key}"
        logger.info("uploaded %s (%d bytes) in %d attempt(s)", remote_path, file.size, attempts)
        return UploadResult(remote_path=remote_path, size=file.size, attempts=attempts)

    def remote_size(self, name: str) -> int | None:
        """Size of `name` under the integration prefix, or None when it is not there."""
        return self.lookup(name).size

    def lookup(self, name: str) -> Sighting:
        """HEAD of the object: size and LastModified; objects stay, so absence is proof."""
        key = self.key_for(name)

        def head(s3: Any) -> Sighting:
            try:
                answer = s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES:
                    return Sighting(name, None, None, absent_is_proof=True)
                raise self._translate(exc, "HeadObject", key) from None
            except BotoCoreError as exc:
                raise self._translate(exc, "HeadObject", key) from None
            landed = answer.get("LastModified")
            landed = landed.astimezone(UTC) if isinstance(landed, datetime) else None
            return Sighting(name, int(answer["ContentLength"]), landed, absent_is_proof=True)

        sighting, _ = self._run(f"look up {name}", head)
        return sighting

    def list_names(self) -> list[str]:
        """Names (without the prefix) of all objects under `<integration>/`, sorted."""
        prefix = f"{self.integration}/"

        def listing(s3: Any) -> list[str]:
            names: list[str] = []

            def collect() -> None:
                for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                ):
                    names.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))

            self._call("ListObjectsV2", prefix, collect)
            return sorted(names)

        names, _ = self._run("list", listing)
        return names

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self.credentials.close()
