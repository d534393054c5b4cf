"""MediaMath CFT transport against the local CFT stand-in (moto + guard) over real sockets."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from mm_assets.clients.mediamath_cft import CftCredentialsClient, MediaMathCft
from mm_assets.clients.transport import (
    AuthenticationFailed,
    DeliveryError,
    FileRefused,
    OutgoingFile,
    TransientDeliveryError,
)
from mm_assets.sandbox.cft_server import SandboxCft

INTEGRATION = "acme_partner"


@pytest.fixture
def sandbox() -> Iterator[SandboxCft]:
    with SandboxCft(integration=INTEGRATION) as sb:
        yield sb


def make_transport(sb: SandboxCft, **overrides: Any) -> MediaMathCft:
    settings: dict[str, Any] = {
        "credentials_url": sb.credentials_url,
        "username": sb.username,
        "password": sb.password,
        "integration": sb.integration,
        "bucket": sb.bucket,
        "endpoint_url": sb.s3_endpoint_url,
        "max_attempts": 3,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
    }
    settings.update(overrides)
    return MediaMathCft(**settings)


class MovableClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


def make_file(tmp_path: Path, name: str, size: int) -> OutgoingFile:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return OutgoingFile(name=name, path=path, size=size, md5_hex=hashlib.md5(data).hexdigest())


def raw_credentials(sb: SandboxCft) -> dict[str, str]:
    answer = requests.post(
        sb.credentials_url, json={"username": sb.username, "password": sb.password}, timeout=10
    )
    answer.raise_for_status()
    return answer.json()


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def test_upload_lands_single_part_with_md5_etag_under_prefix(
    sandbox: SandboxCft, tmp_path: Path
) -> None:
    # Above boto3's 8 MiB multipart threshold: upload_file would have gone multipart here.
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 9 * 1024 * 1024)
    with make_transport(sandbox) as cft:
        result = cft.upload(file)
        key = f"{INTEGRATION}/{file.name}"
        assert result.remote_path == f"s3://{sandbox.bucket}/{key}"
        assert (result.size, result.attempts) == (file.size, 1)

        assert sandbox.list_objects() == {key: file.size}
        data, etag = sandbox.get_object_bytes(key)
        assert data == file.path.read_bytes()
        assert etag == file.md5_hex

        assert cft.remote_size(file.name) == file.size
        assert cft.remote_size("Acme_Partner_20260101000001.log.gz") is None
        assert cft.list_names() == [file.name]

    puts = [r for r in sandbox.seen if r.method == "PUT" and r.path.endswith(file.name)]
    assert len(puts) == 1 and puts[0].content_length == file.size
    assert not any("uploads" in r.query or "uploadId" in r.query for r in sandbox.seen)
    assert sandbox.multipart_refusals == 0


def test_guard_refuses_multipart_initiation(sandbox: SandboxCft) -> None:
    s3 = sandbox.partner_s3(raw_credentials(sandbox))
    with pytest.raises(ClientError) as caught:
        s3.create_multipart_upload(Bucket=sandbox.bucket, Key=f"{INTEGRATION}/big.log.gz")
    assert error_code(caught.value) == "AccessDenied"
    assert sandbox.multipart_refusals == 1
    # The same credentials may put single objects: only multipart is refused.
    s3.put_object(Bucket=sandbox.bucket, Key=f"{INTEGRATION}/small.log.gz", Body=b"x")


def test_etag_mismatch_after_put_is_retried(sandbox: SandboxCft, tmp_path: Path) -> None:
    sandbox.tamper_next_head_etags = 1
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 2048)
    with make_transport(sandbox) as cft:
        result = cft.upload(file)
    assert result.attempts == 2
    assert len([r for r in sandbox.seen if r.method == "PUT"]) == 2
    assert sandbox.get_object_bytes(f"{INTEGRATION}/{file.name}")[1] == file.md5_hex


def test_etag_mismatch_on_every_attempt_gives_up(sandbox: SandboxCft, tmp_path: Path) -> None:
    sandbox.tamper_next_head_etags = 10
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 2048)
    with make_transport(sandbox, max_attempts=2) as cft, pytest.raises(TransientDeliveryError):
        cft.upload(file)
    assert len([r for r in sandbox.seen if r.method == "PUT"]) == 2


def test_client_refuses_oversize_file_before_sending(sandbox: SandboxCft, tmp_path: Path) -> None:
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 2000)
    with (
        make_transport(sandbox, max_file_bytes=1000) as cft,
        pytest.raises(FileRefused, match="CFT-PUT"),
    ):
        cft.upload(file)
    # Not even credentials were asked for.
    assert sandbox.credentials_requests == 0
    assert sandbox.seen == []


def test_guard_refuses_put_above_limit(sandbox: SandboxCft, tmp_path: Path) -> None:
    sandbox.max_put_bytes = 32 * 1024
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 64 * 1024)
    # The client's own limit is set higher so the request reaches the guard.
    with (
        make_transport(sandbox, max_file_bytes=10**6) as cft,
        pytest.raises(FileRefused, match="EntityTooLarge"),
    ):
        cft.upload(file)
    assert sandbox.oversize_refusals == 1  # final: not retried
    assert sandbox.list_objects() == {}


def test_credentials_expiring_between_files_are_refreshed(
    sandbox: SandboxCft, tmp_path: Path
) -> None:
    sandbox.lifetime_seconds = 2.0
    first = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 1024)
    second = make_file(tmp_path, "Acme_Partner_20260101000001.log.gz", 1024)
    with make_transport(sandbox, refresh_margin_seconds=0.5) as cft:
        assert cft.upload(first).attempts == 1
        time.sleep(2.2)  # past the lifetime: the first credentials are now refused
        assert cft.upload(second).attempts == 1
    assert sandbox.credentials_requests == 2
    # Renewed before use, not after a refusal.
    assert sandbox.expired_refusals == 0
    keys = {r.access_key_id for r in sandbox.seen if r.method == "PUT"}
    assert len(keys) == 2
    assert set(sandbox.list_objects()) == {
        f"{INTEGRATION}/{first.name}",
        f"{INTEGRATION}/{second.name}",
    }


def test_refresh_refused_mid_run_is_authentication_failed(
    sandbox: SandboxCft, tmp_path: Path
) -> None:
    # Time comes from an injected clock: the credentials "expire" when the test says so, never
    # by sleeping against the wall clock on a busy machine.
    clock = MovableClock(datetime.now(UTC))
    first = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 100)
    second = make_file(tmp_path, "Acme_Partner_20260101000001.log.gz", 100)
    with make_transport(sandbox, refresh_margin_seconds=600, clock=clock) as cft:
        cft.upload(first)
        # A slow first upload (busy CI) may already have refreshed once: count from here.
        before = sandbox.credentials_requests
        sandbox.password = "rotated-by-mediamath"
        clock.advance(timedelta(seconds=sandbox.lifetime_seconds + 1))
        # botocore's own refresh asks the endpoint, which now refuses: final, not retried.
        with pytest.raises(AuthenticationFailed):
            cft.upload(second)
    assert sandbox.credentials_requests == before + 1
    assert set(sandbox.list_objects()) == {f"{INTEGRATION}/{first.name}"}


def test_expired_token_refusal_forces_one_refresh(sandbox: SandboxCft, tmp_path: Path) -> None:
    first = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 1024)
    second = make_file(tmp_path, "Acme_Partner_20260101000001.log.gz", 1024)
    with make_transport(sandbox) as cft:
        cft.upload(first)
        sandbox.revoke_issued()  # the server expires them although the client thinks not
        result = cft.upload(second)
    assert result.attempts == 2
    assert sandbox.expired_refusals == 1
    assert sandbox.credentials_requests == 2


def test_wrong_password_is_authentication_failed_without_retry(
    sandbox: SandboxCft, tmp_path: Path
) -> None:
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 100)
    with (
        make_transport(sandbox, password="not-the-password") as cft,
        pytest.raises(AuthenticationFailed) as caught,
    ):
        cft.upload(file)
    assert "not-the-password" not in str(caught.value)
    assert sandbox.credentials_requests == 1
    assert sandbox.list_objects() == {}


def test_access_outside_the_integration_prefix_is_denied(
    sandbox: SandboxCft, tmp_path: Path
) -> None:
    credentials = raw_credentials(sandbox)
    s3 = sandbox.partner_s3(credentials)
    for probe in (
        lambda: s3.put_object(Bucket=sandbox.bucket, Key="other_partner/x.log.gz", Body=b"x"),
        lambda: s3.get_object(Bucket=sandbox.bucket, Key="other_partner/x.log.gz"),
        lambda: s3.list_objects_v2(Bucket=sandbox.bucket),
        lambda: s3.list_objects_v2(Bucket=sandbox.bucket, Prefix="other_partner/"),
        lambda: s3.delete_object(Bucket=sandbox.bucket, Key=f"{INTEGRATION}/x.log.gz"),
    ):
        with pytest.raises(ClientError) as caught:
            probe()
        assert error_code(caught.value) == "AccessDenied"

    forged = dict(credentials, sessionToken=credentials["sessionToken"][:-4] + "AAAA")
    with pytest.raises(ClientError) as caught:
        sandbox.partner_s3(forged).put_object(
            Bucket=sandbox.bucket, Key=f"{INTEGRATION}/x.log.gz", Body=b"x"
        )
    assert error_code(caught.value) == "InvalidToken"

    # Our client pointed at someone else's prefix: one refresh, then a final refusal.
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 100)
    with (
        make_transport(sandbox, integration="other_partner") as cft,
        pytest.raises(AuthenticationFailed, match="AccessDenied"),
    ):
        cft.upload(file)
    assert sandbox.list_objects() == {}
    assert sandbox.credentials_requests == 3  # the raw probe's, ours, and the forced refresh


def test_transient_credentials_endpoint_errors_are_retried(
    sandbox: SandboxCft, tmp_path: Path
) -> None:
    sandbox.fail_credentials_requests = 2
    client = CftCredentialsClient(
        sandbox.credentials_url,
        sandbox.username,
        sandbox.password,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
    )
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 100)
    with make_transport(sandbox, credentials_client=client) as cft:
        assert cft.upload(file).attempts == 1
    assert sandbox.credentials_requests == 3


def test_expiry_comes_from_the_answer_or_the_configured_lifetime(sandbox: SandboxCft) -> None:
    sandbox.lifetime_seconds = 120
    client = CftCredentialsClient(
        sandbox.credentials_url, sandbox.username, sandbox.password, credentials_lifetime=30
    )
    before = datetime.now(UTC)
    reported = client.fetch()
    assert 110 <= (reported.expiry - before).total_seconds() <= 130

    sandbox.report_expiration = False
    assumed = client.fetch()
    assert 25 <= (assumed.expiry - before).total_seconds() <= 35
    client.close()


def test_no_secret_in_errors_or_debug_logs(
    sandbox: SandboxCft, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    file = make_file(tmp_path, "Acme_Partner_20260101000000.log.gz", 4096)
    with make_transport(sandbox) as cft:
        cft.upload(file)
        sandbox.revoke_issued()
        cft.upload(make_file(tmp_path, "Acme_Partner_20260101000001.log.gz", 10))
        texts += [repr(cft), repr(cft.credentials), repr(cft.credentials.fetch())]

    failures: list[DeliveryError] = []
    with (
        make_transport(sandbox, password="wrong-" + sandbox.password) as cft,
        pytest.raises(AuthenticationFailed) as caught,
    ):
        cft.upload(file)
        failures.append(caught.value)
    with (
        make_transport(sandbox, integration="other_partner") as cft,
        pytest.raises(AuthenticationFailed) as caught,
    ):
        cft.upload(file)
        failures.append(caught.value)
    sandbox.max_put_bytes = 100
    with make_transport(sandbox) as cft, pytest.raises(FileRefused) as caught:
        cft.upload(file)
        failures.append(caught.value)
    texts += [str(e) for e in failures] + [repr(e) for e in failures]
    texts.append(caplog.text)

    secrets = [sandbox.password]
    for issued in sandbox.issued_credentials:
        secrets += [issued["secretAccessKey"], issued["sessionToken"]]
    assert len(sandbox.issued_credentials) >= 4
    # The logs did see the requests (so the check is not vacuous).
    assert "x-amz-security-token" in caplog.text.lower()
    for text in texts:
        for secret in secrets:
            assert secret not in text
