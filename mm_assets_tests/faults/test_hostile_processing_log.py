"""The processing-log client against hostile servers (issue 10, invariant 5 and 4): every call
is bounded in time, size and pages, breaches are transient (`ProcessingLogUnavailable`: the
files stay pending), and nothing a server echoes puts a credential into a message or a log."""

from __future__ import annotations

import base64
import logging
import time

import pytest

from mm_assets.clients.mediamath_processing_log import (
    ProcessingLogClient,
    ProcessingLogError,
    ProcessingLogUnavailable,
)
from mm_assets_tests.faults.hostile_http import HostileLog

USER = "mm_partner"
PASSWORD = "s3cret-Sftp-Password-42"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _client(url: str, **bounds: float) -> ProcessingLogClient:
    return ProcessingLogClient(
        url, USER, PASSWORD, timeout=10.0, max_attempts=1, sleep=lambda _: None, **bounds
    )


def test_a_trickling_server_is_cut_at_the_call_bound() -> None:
    started = time.monotonic()
    with (
        HostileLog("trickle") as server,
        _client(server.url, max_call_seconds=1.0) as client,
        pytest.raises(ProcessingLogUnavailable, match="not complete within"),
    ):
        client.outcome("A_ExamplePartner_20261201000000.log.gz")
        # A loose bound: without the fix the call takes 2,000 s (10,000 bytes at 5/s).
    assert time.monotonic() - started < 120


def test_a_huge_answer_is_cut_at_the_size_bound() -> None:
    limit = 1024 * 1024
    with (
        HostileLog("huge") as server,
        _client(server.url, max_response_bytes=limit) as client,
        pytest.raises(ProcessingLogUnavailable, match="byte bound"),
    ):
        client.outcome("A_ExamplePartner_20261201000000.log.gz")
    # The client read at most the bound plus a chunk; the server could not push gigabytes.
    assert server.bytes_sent < 64 * limit


def test_a_server_ignoring_offset_is_stopped_at_the_page_bound() -> None:
    with (
        HostileLog("ignore_offset") as server,
        _client(server.url, max_pages=5) as client,
        pytest.raises(ProcessingLogUnavailable, match="more than 5 pages"),
    ):
        client.outcome("A_ExamplePartner_20261201000000.log.gz")
    assert server.requests == 5


def test_an_echoed_authorization_header_reaches_no_message_or_log(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with (
        HostileLog("echo_auth") as server,
        _client(server.url) as client,
        pytest.raises(ProcessingLogError) as caught,
    ):
        client.outcome("A_ExamplePartner_20261201000000.log.gz")
    assert server.requests == 1  # a 400 is final
    message = str(caught.value)
    assert "HTTP 400" in message and "<redacted>" in message
    out = capsys.readouterr()
    for text in (message, repr(caught.value), caplog.text, out.out, out.err):
        assert PASSWORD not in text and BASIC not in text
