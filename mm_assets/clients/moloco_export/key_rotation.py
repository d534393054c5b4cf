"""MCM-DKR: Dynamic Key Rotation: a fresh HMAC pair from the MCM Management API per session.

Rules from the export document and how they are kept:

* Call RotateDataExportKey before every access session, and each call deletes all earlier
  keys. So rotate + use happen inside one cross-process lock (`fcntl.flock` on a lock file,
  or a lease row in the shared database when one is configured, `DatabaseRotationLock`):
  no other run or sensor can rotate (and so invalidate our key) while we read. In Dagster the
  staging asset also sits in the concurrency pool `moloco_key_rotation` (limit 1); the file lock
  covers what the pool does not (sensors, other code locations, `dagster asset materialize`).
* At least one minute between calls: the time of the last rotation is kept next to the lock
  (a small file, or a row), and the next holder waits out the rest of the spacing. A 429 from
  the API
  (someone rotated outside our lock) is waited out too, never turned into a failure.
* New keys may take up to 60 s to become active: a probe (list one object) is retried while it
  answers 403 until it works or the activation deadline passes.
* The secret is returned once: it lives in memory only, in `HmacKey`, whose repr hides it, and
  is never logged, written to a file or quoted in an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from mm_assets.clients.moloco_export.errors import (
    CredentialError,
    KeyNotActiveError,
    TransientSourceError,
)
from mm_assets.clients.redaction import redact
from mm_assets.clients.retry import Backoff, retry
from mm_assets.state.leases import Lease, last_time, record_time

logger = logging.getLogger(__name__)

DEFAULT_S3_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_SPACING_S = 60.0  # MCM-DKR: at least 1 minute between calls
DEFAULT_ACTIVATION_DEADLINE_S = 90.0  # MCM-DKR: up to 60 s to propagate, plus margin
# Probes of a new key: from 0.2 s, doubling up to 5 s between them, until the deadline; no
# jitter: one prober at a time (it holds the rotation lock).
ACTIVATION_BACKOFF = Backoff(0.2, 5.0, jitter=False)
MAX_TRIES = 10_000  # a ceiling for loops that a deadline ends
LOCK_FILE = "moloco_key_rotation.lock"
LAST_ROTATION_FILE = "moloco_key_rotation.last"


@dataclass(frozen=True)
class HmacKey:
    key_id: str
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"HmacKey(key_id={self.key_id[:4]}…)"

    __str__ = __repr__


class KeyRotationClient:
    """RotateDataExportKey: `POST {base}/rmp/mgmt/v1/platforms/{id}/data-export/key`."""

    def __init__(
        self,
        api_base: str,
        platform_id: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        if not api_base or not platform_id or not api_key:
            raise CredentialError(
                "Dynamic Key Rotation needs MM_MOLOCO_API_BASE, "
                "MM_MOLOCO_PLATFORM_ID and MM_MOLOCO_API_KEY"
            )
        self.url = (
            f"{api_base.rstrip('/')}/rmp/mgmt/v1/platforms/"
            f"{requests.utils.quote(platform_id, safe='')}/data-export/key"
        )
        self._api_key = api_key
        self.timeout = timeout
        self.session = session or requests.Session()

    def rotate_once(self) -> HmacKey | float:
        """One call: the new key, or the seconds to wait when the API answers 429."""
        try:
            resp = self.session.post(
                self.url,
                headers={"x-api-key": self._api_key, "Content-Type": "application/json"},
                data=b"{}",
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TransientSourceError(
                redact(f"key rotation: {type(exc).__name__}: {exc}", [self._api_key])
            ) from None
        if resp.status_code == 429:
            try:
                return max(float(resp.headers.get("Retry-After", "1")), 0.1)
            except ValueError:
                return 1.0
        if resp.status_code in (401, 403):
            raise CredentialError(
                f"key rotation refused with HTTP {resp.status_code}: check "
                "MM_MOLOCO_API_KEY (ADMIN permission) and MM_MOLOCO_PLATFORM_ID"
            )
        if resp.status_code >= 500:
            raise TransientSourceError(f"key rotation: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise CredentialError(f"key rotation: HTTP {resp.status_code}")
        try:
            data = resp.json()
            return HmacKey(key_id=str(data["key_id"]), secret_key=str(data["secret_key"]))
        except (ValueError, KeyError, TypeError):
            # The body may hold the secret: it is not quoted.
            raise TransientSourceError("key rotation: answer without key_id/secret_key") from None


class RotationLock:
    """Cross-process lock + last-rotation time, in `state_dir` (shared by every process)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        spacing_s: float = DEFAULT_SPACING_S,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dir = Path(state_dir)
        self.spacing_s = spacing_s
        self.clock = clock
        self.sleep = sleep

    @contextlib.contextmanager
    def held(self, wait_timeout_s: float = 3600.0) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a+") as f:
            deadline = time.monotonic() + wait_timeout_s
            while True:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _lock_timeout(wait_timeout_s, None) from None
                    self.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def last_rotation(self) -> float:
        try:
            return float((self.dir / LAST_ROTATION_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def record_rotation(self, when: float) -> None:
        tmp = self.dir / f"{LAST_ROTATION_FILE}.partial"
        tmp.write_text(f"{when:.6f}\n")
        os.replace(tmp, self.dir / LAST_ROTATION_FILE)

    def wait_for_spacing(self) -> float:
        """Sleep until `spacing_s` has passed since the last rotation; returns seconds slept."""
        wait = self.last_rotation() + self.spacing_s - self.clock()
        if wait > 0:
            logger.info(
                "waiting %.1f s: at most one key rotation per %.0f s (MCM-DKR)",
                wait,
                self.spacing_s,
            )
            self.sleep(wait)
            return wait
        return 0.0


def _lock_timeout(wait_timeout_s: float, holder: str | None) -> TransientSourceError:
    who = f" ({holder})" if holder else ""
    return TransientSourceError(
        f"another process{who} has held the key-rotation lock for {wait_timeout_s:.0f} s"
    )


class DatabaseRotationLock(RotationLock):
    """The same lock and last-rotation time as rows of the shared database (`mm_assets.state`),
    so workers on several machines rotate one at a time and at most once per spacing
    (MCM-DKR). A killed holder's lease expires (`leases.lease_seconds()`)."""

    LEASE = "moloco_key_rotation"

    def __init__(
        self,
        url: str,
        spacing_s: float = DEFAULT_SPACING_S,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        lease_s: float | None = None,
    ) -> None:
        super().__init__("", spacing_s, clock=clock, sleep=sleep)
        self.url = url
        self.lease_s = lease_s

    @contextlib.contextmanager
    def held(self, wait_timeout_s: float = 3600.0) -> Iterator[None]:
        lease = Lease(self.url, self.LEASE, ttl_s=self.lease_s, clock=self.clock)
        timeout = functools.partial(_lock_timeout, wait_timeout_s)
        with lease.held(wait_timeout_s, on_timeout=timeout, sleep=self.sleep):
            yield

    def last_rotation(self) -> float:
        return last_time(self.url, self.LEASE)

    def record_rotation(self, when: float) -> None:
        record_time(self.url, self.LEASE, when)


def rotation_lock(
    state_dir: str | os.PathLike[str], spacing_s: float, database_url: str | None
) -> RotationLock:
    """The rotation lock of this deployment: in the shared database when one is configured,
    else files in `state_dir`."""
    if database_url:
        return DatabaseRotationLock(database_url, spacing_s)
    return RotationLock(state_dir, spacing_s)


def is_not_yet_active(exc: Exception) -> bool:
    """403-like answers a new key gives while it propagates (MCM-DKR: up to 60 s)."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = exc.response.get("Error", {}).get("Code", "")
    return status in (401, 403) or code in (
        "InvalidAccessKeyId",
        "AccessDenied",
        "SignatureDoesNotMatch",
    )


def s3_client(key: HmacKey, endpoint: str = DEFAULT_S3_ENDPOINT, *, timeout: float = 60.0) -> Any:
    """boto3 against GCS's S3-compatible endpoint with the rotated pair (HMAC mode)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="auto",
        aws_access_key_id=key.key_id,
        aws_secret_access_key=key.secret_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # Newer botocore sends CRC checksum headers GCS rejects (PEERS.md).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


@contextlib.contextmanager
def botocore_debug_muted() -> Iterator[None]:
    """botocore logs request headers (the access key id) and response bodies at DEBUG: while
    an HMAC pair is in use its DEBUG output is held back, whatever logging the host set up."""
    muted = []
    for name in ("botocore", "boto3", "urllib3"):
        log = logging.getLogger(name)
        if log.getEffectiveLevel() < logging.INFO:
            muted.append((log, log.level))
            log.setLevel(logging.INFO)
    try:
        yield
    finally:
        for log, level in muted:
            log.setLevel(level)


class _RateLimited(Exception):
    """RotateDataExportKey answered 429; `retry_after_s` is the server's wait."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate-limited for {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class KeyRotationSession:
    """`with session.open() as key:` rotate (spaced, locked), wait until active, use, release."""

    def __init__(
        self,
        client: KeyRotationClient,
        lock: RotationLock,
        *,
        activation_deadline_s: float = DEFAULT_ACTIVATION_DEADLINE_S,
        rate_limit_deadline_s: float = 600.0,
    ) -> None:
        self.client = client
        self.lock = lock
        self.activation_deadline_s = activation_deadline_s
        self.rate_limit_deadline_s = rate_limit_deadline_s
        self.rotations = 0
        self.waited_for_spacing_s = 0.0
        self.waited_for_activation_s = 0.0

    def _rotate(self) -> HmacKey:
        self.waited_for_spacing_s += self.lock.wait_for_spacing()
        deadline = time.monotonic() + self.rate_limit_deadline_s

        def call(_: int) -> HmacKey:
            result = self.client.rotate_once()
            if not isinstance(result, HmacKey):
                raise _RateLimited(result)
            return result

        def wait_out_429(_: int, exc: Exception, _delay: float) -> float:
            # 429: a rotation we did not record (another host, another tool) is too recent.
            wait = exc.retry_after_s if isinstance(exc, _RateLimited) else 0.0
            self.lock.record_rotation(self.lock.clock())
            if time.monotonic() + wait > deadline:
                raise TransientSourceError(
                    "key rotation still rate-limited (429) after "
                    f"{self.rate_limit_deadline_s:.0f} s"
                )
            logger.info("key rotation answered 429: waiting %.1f s (MCM-DKR spacing)", wait)
            self.waited_for_spacing_s += wait
            return wait

        key = retry(
            call,
            attempts=MAX_TRIES,  # the deadline stops it first
            backoff=Backoff(0.0),  # the server's Retry-After is the wait
            retryable=lambda exc: isinstance(exc, _RateLimited),
            before_retry=wait_out_429,
            sleep=self.lock.sleep,
        )
        self.lock.record_rotation(self.lock.clock())
        self.rotations += 1
        logger.info("rotated the data-export key (new key %s)", key)
        return key

    def wait_until_active(self, probe: Callable[[], object], secrets: tuple[str, ...]) -> None:
        start = time.monotonic()

        def until_the_deadline(_: int, _exc: Exception, delay: float) -> float:
            if time.monotonic() - start > self.activation_deadline_s:
                raise KeyNotActiveError(
                    "the rotated key was still refused (403) after "
                    f"{self.activation_deadline_s:.0f} s: MCM-DKR allows up to 60 s to "
                    "propagate; check the bucket name and that MOLOCO enabled the "
                    "platform's export"
                )
            logger.info("new key not active yet (403): retrying in %.1f s", delay)
            return delay

        try:
            retry(
                lambda _: probe(),
                attempts=MAX_TRIES,  # the deadline stops it first
                backoff=ACTIVATION_BACKOFF,
                retryable=is_not_yet_active,
                before_retry=until_the_deadline,
                sleep=self.lock.sleep,
            )
        except KeyNotActiveError:
            raise
        except Exception as exc:
            from mm_assets.clients.moloco_export.listing import s3_error

            raise s3_error(exc, "probing the export bucket", secrets) from None
        self.waited_for_activation_s = time.monotonic() - start

    @contextlib.contextmanager
    def open(
        self, endpoint: str, bucket: str, lock_timeout_s: float = 3600.0
    ) -> Iterator[tuple[HmacKey, Any]]:
        """Rotate, wait until active, yield (key, boto3 client); the lock is held throughout."""
        with self.lock.held(lock_timeout_s), botocore_debug_muted():
            key = self._rotate()
            client = s3_client(key, endpoint)
            self.wait_until_active(
                lambda: client.list_objects_v2(Bucket=bucket, MaxKeys=1),
                (key.secret_key, key.key_id),
            )
            yield key, client
