"""ProcessingLogClient against the sandbox processing log over real sockets (S2S-LOG).

The sandbox validates what landed in its drop folder with the independent validator and
answers as MediaMath documents it; faults (429, 5xx, slow answers) are injected server-side.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mm_assets.clients.mediamath_processing_log import (
    FileOutcome,
    LogRecord,
    Outcome,
    ProcessingLogClient,
    ProcessingLogCredentialsError,
    ProcessingLogError,
    ProcessingLogUnavailable,
    classify,
    extract_records,
    outcome_of,
    parse_timestamp,
    to_record,
)
from mm_assets.sandbox.processing_log_server import SandboxProcessingLog

USER = "mm_partner"
# Distinctive, so a leak into a message or a log line cannot hide behind a common substring.
PASSWORD = "Pw-" + "l0g-s3cr3t-Qz8RtW"
WRONG_PASSWORD = "Pw-" + "wr0ng-Jk4LmN"
NAMESPACE = "ep"
INTEGRATION = "sandbox_partner"


def s2s_text(
    name: str,
    *,
    namespace: str = NAMESPACE,
    rows: list[str] | None = None,
    header: list[str] | None = None,
) -> bytes:
    """A small S2S file body (S2S-FMT, S2S-HDR) written by hand, not by the project's writer."""
    lines = (
        header
        if header is not None
        else [
            "Version: 3",
            f"FileIdentifier: {name}",
            "DateCreated: 1763640000",
            "UserNamespace: mm",
            f"SegmentNamespace: {namespace}",
            "Mobile: 0",
        ]
    )
    body = (
        rows
        if rows is not None
        else [
            "2c3753c5-9a67-4600-f044-a5d7e0c5f6d7 10001:0 10003:0",
            "3d3353c3-9a67-4651-a443-a6d7e1c4fde8 10002:-1",
        ]
    )
    return ("\n".join(lines) + "\n\n" + "".join(r + "\n" for r in body)).encode()


def file_name(i: int, agency: str = "") -> str:
    stamp = (datetime(2026, 11, 20, 12, tzinfo=UTC) + timedelta(seconds=i)).strftime("%Y%m%d%H%M%S")
    return f"{agency + '_' if agency else ''}ExamplePartner_{stamp}.log.gz"


# What each broken file looks like, and what MediaMath says about it (S2S-LOG).
BROKEN: dict[str, tuple[bytes | None, str]] = {
    # S2S-FMT: gzip-compressed
    "not_gzip": (b"Version: 3\n", "File is not in GZIP format"),
    "zero_bytes": (b"", "File is empty"),
    "gzip_of_nothing": (gzip.compress(b""), "File is empty"),
    # S2S-HDR: Version must come first
    "bad_header": (None, "Invalid headers"),
    "namespace": (None, f"Integration {INTEGRATION} is not authorized to write into namespaces zz"),
    # S2S-EFF: the same user on two lines
    "repeated_user": (None, "File is invalid"),
    "no_rows": (None, "File is empty"),
}


def broken_bytes(kind: str, name: str) -> bytes:
    data, _ = BROKEN[kind]
    if data is not None:
        return data
    if kind == "bad_header":
        return gzip.compress(
            s2s_text(
                name,
                header=[
                    f"FileIdentifier: {name}",
                    "Version: 3",
                    "DateCreated: 1763640000",
                    "UserNamespace: mm",
                    f"SegmentNamespace: {NAMESPACE}",
                    "Mobile: 0",
                ],
            )
        )
    if kind == "namespace":
        return gzip.compress(s2s_text(name, namespace="zz"))
    if kind == "repeated_user":
        return gzip.compress(s2s_text(name, rows=["u1 10001:0", "u2 10002:0", "u1 10003:0"]))
    if kind == "no_rows":
        return gzip.compress(s2s_text(name, rows=[]))
    raise KeyError(kind)


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "sftp_drop"
    folder.mkdir()
    return folder


@pytest.fixture
def server(drop: Path) -> Iterator[SandboxProcessingLog]:
    with SandboxProcessingLog(
        [drop], USER, PASSWORD, page_size=2, allowed_namespaces=[NAMESPACE], integration=INTEGRATION
    ) as srv:
        yield srv


class Sleeps:
    """Records the client's backoff sleeps and sleeps for real only briefly."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(min(seconds, 0.01))


def make_client(server: SandboxProcessingLog, **overrides: object) -> ProcessingLogClient:
    kwargs: dict[str, object] = {
        "timeout": 5.0,
        "max_attempts": 4,
        "backoff": 0.05,
        "max_total_wait": 5.0,
    }
    kwargs.update(overrides)
    password = str(kwargs.pop("password", PASSWORD))
    return ProcessingLogClient(server.url, USER, password, **kwargs)  # type: ignore[arg-type]


def land(drop: Path, name: str, data: bytes) -> Path:
    path = drop / name
    path.write_bytes(data)
    return path


# -- outcomes over the wire -----------------------------------------------------------------


def test_a_valid_file_is_accepted_with_its_raw_record(
    server: SandboxProcessingLog, drop: Path
) -> None:
    name = file_name(0)
    land(drop, name, gzip.compress(s2s_text(name)))
    with make_client(server) as client:
        outcome = client.outcome(name)
    assert outcome == FileOutcome(name, Outcome.ACCEPTED, "OK", outcome.raw_records)
    [raw] = outcome.raw_records
    assert raw["filename"] == name and raw["message"] == "OK"  # kept as MediaMath sent it
    assert server.requests_seen[-1] == {"filename": name}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_rejection_carries_mediamaths_message(
    server: SandboxProcessingLog, drop: Path, kind: str
) -> None:
    name = file_name(1)
    land(drop, name, broken_bytes(kind, name))
    with make_client(server) as client:
        outcome = client.outcome(name)
    assert outcome.status is Outcome.REJECTED
    assert outcome.message == BROKEN[kind][1]


def test_pending_until_processed_then_accepted(drop: Path) -> None:
    name = file_name(2)
    with (
        SandboxProcessingLog([drop], USER, PASSWORD, processing_delay_seconds=0.6) as server,
        make_client(server) as client,
    ):
        land(drop, name, gzip.compress(s2s_text(name)))
        first = client.outcome(name)
        assert (first.status, first.message, first.raw_records) == (Outcome.PENDING, "", [])
        time.sleep(0.7)
        assert client.outcome(name).status is Outcome.ACCEPTED


def test_hidden_upload_temp_names_are_not_processed(
    server: SandboxProcessingLog, drop: Path
) -> None:
    name = file_name(3)
    land(drop, f".{name}.part", gzip.compress(s2s_text(name)))
    with make_client(server) as client:
        assert client.outcome(name).status is Outcome.PENDING
        assert client.records_between(datetime(2000, 1, 1)) == []


def test_cft_bucket_objects_are_processed_too(server: SandboxProcessingLog) -> None:
    good, bad = file_name(4), file_name(5)
    bucket = {good: gzip.compress(s2s_text(good)), bad: b"not gzip at all"}
    server.add_bucket_source(lambda: dict(bucket))
    with make_client(server) as client:
        assert client.outcome(good).status is Outcome.ACCEPTED
        assert client.outcome(bad).message == "File is not in GZIP format"


def test_objects_in_the_cft_sandbox_bucket_are_judged(drop: Path) -> None:
    from mm_assets.sandbox.cft_server import SandboxCft
    from mm_assets.sandbox.processing_log_server import cft_bucket_source

    good, bad = file_name(6), file_name(7)
    with SandboxCft(integration=INTEGRATION) as cft:
        s3 = cft.admin_s3()
        s3.put_object(
            Bucket=cft.bucket, Key=f"{INTEGRATION}/{good}", Body=gzip.compress(s2s_text(good))
        )
        s3.put_object(
            Bucket=cft.bucket,
            Key=f"{INTEGRATION}/{bad}",
            Body=gzip.compress(s2s_text(bad, namespace="zz")),
        )
        s3.put_object(Bucket=cft.bucket, Key=f"elsewhere/{file_name(8)}", Body=b"x")
        with (
            SandboxProcessingLog(
                [drop],
                USER,
                PASSWORD,
                integration=INTEGRATION,
                bucket_sources=[cft_bucket_source(cft)],
            ) as server,
            make_client(server) as client,
        ):
            assert client.outcome(good).status is Outcome.ACCEPTED
            assert client.outcome(bad).message == BROKEN["namespace"][1]
            assert client.outcome(file_name(8)).status is Outcome.PENDING


# -- pagination (S2S-LOG: offset) -----------------------------------------------------------


def test_records_between_reads_every_page(server: SandboxProcessingLog, drop: Path) -> None:
    names = [file_name(10 + i) for i in range(5)]
    for name in names:
        land(drop, name, gzip.compress(s2s_text(name)))
    start = datetime.now(UTC) - timedelta(hours=1)
    with make_client(server) as client:
        records = client.records_between(start, datetime.now(UTC) + timedelta(hours=1))
    assert sorted(r.filename for r in records) == names
    offsets = [q.get("offset") for q in server.requests_seen]
    assert offsets == [None, "2", "4"]  # the answer's total ends it without an empty page
    assert server.requests_seen[0]["start_date"] == start.strftime("%Y-%m-%d %H:%M:%S")


def test_bare_list_answers_are_paged_until_a_short_or_empty_page(drop: Path) -> None:
    names = [file_name(20 + i) for i in range(4)]
    for name in names:
        land(drop, name, gzip.compress(s2s_text(name)))
    with SandboxProcessingLog([drop], USER, PASSWORD, page_size=2, response_shape="list") as server:
        with make_client(server) as client:
            assert len(client.records_between(datetime(2000, 1, 1))) == 4
        # No total in a bare list: the client asks until an empty page.
        assert [q.get("offset") for q in server.requests_seen] == [None, "2", "4"]
        server.requests_seen.clear()
        with make_client(server, page_size=2) as client:
            assert len(client.records_between(datetime(2000, 1, 1))) == 4
        assert [q.get("offset") for q in server.requests_seen] == [None, "2", "4"]


# -- retries (S2S-LOG: exponential backoff) -------------------------------------------------


@pytest.mark.parametrize("codes", [[429], [500, 502, 503], [503, 429]])
def test_transient_answers_are_retried_then_succeed(
    server: SandboxProcessingLog, drop: Path, codes: list[int]
) -> None:
    name = file_name(30)
    land(drop, name, gzip.compress(s2s_text(name)))
    server.fail_next = list(codes)
    server.retry_after = "0.2"
    sleeps = Sleeps()
    with make_client(server, sleep=sleeps) as client:
        assert client.outcome(name).status is Outcome.ACCEPTED
    assert len(sleeps.calls) == len(codes)
    assert len(server.requests_seen) == len(codes) + 1
    for code, delay in zip(codes, sleeps.calls, strict=True):
        if code in (429, 503):
            assert delay >= 0.2  # Retry-After honoured


def test_backoff_grows_exponentially_with_jitter(server: SandboxProcessingLog) -> None:
    server.fail_next = [500, 500, 500]
    server.retry_after = ""
    sleeps = Sleeps()
    with make_client(server, sleep=sleeps, backoff=1.0, max_total_wait=100.0) as client:
        client.outcome(file_name(31))
    for delay, base in zip(sleeps.calls, [1.0, 2.0, 4.0], strict=True):
        assert base / 2 <= delay <= base


def test_a_slow_answer_times_out_and_is_retried(server: SandboxProcessingLog, drop: Path) -> None:
    name = file_name(32)
    land(drop, name, gzip.compress(s2s_text(name)))
    server.slow_seconds, server.slow_next = 1.0, 1
    sleeps = Sleeps()
    with make_client(server, timeout=0.3, sleep=sleeps) as client:
        assert client.outcome(name).status is Outcome.ACCEPTED
    assert len(sleeps.calls) == 1 and client.requests_made == 2


def test_retries_stop_at_max_attempts(server: SandboxProcessingLog) -> None:
    server.fail_next = [503] * 10
    server.retry_after = ""
    with (
        make_client(server, sleep=Sleeps(), max_attempts=3) as client,
        pytest.raises(ProcessingLogUnavailable, match=r"after 3 request\(s\): HTTP 503"),
    ):
        client.outcome(file_name(33))
    assert len(server.requests_seen) == 3


def test_total_wait_is_bounded_even_when_retry_after_asks_for_more(
    server: SandboxProcessingLog,
) -> None:
    server.fail_next = [429] * 5
    server.retry_after = "30"
    sleeps = Sleeps()
    started = time.monotonic()
    with (
        make_client(server, sleep=sleeps, max_total_wait=5.0) as client,
        pytest.raises(ProcessingLogUnavailable, match="wait budget"),
    ):
        client.outcome(file_name(34))
    assert sleeps.calls == [] and time.monotonic() - started < 2


def test_connection_refused_is_unavailable(tmp_path: Path) -> None:
    with SandboxProcessingLog([tmp_path], USER, PASSWORD) as srv:
        url = srv.url  # a port nobody listens on once the server stopped
    client = ProcessingLogClient(url, USER, PASSWORD, max_attempts=2, backoff=0.01, sleep=Sleeps())
    with pytest.raises(ProcessingLogUnavailable, match="connection failed"):
        client.outcome(file_name(35))


# -- credentials (never retried, never shown) ------------------------------------------------


def test_wrong_credentials_fail_at_once_without_showing_the_password(
    server: SandboxProcessingLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    with make_client(server, password=WRONG_PASSWORD, sleep=sleeps) as client:
        with pytest.raises(ProcessingLogCredentialsError, match="HTTP 401") as info:
            client.outcome(file_name(36))
        text = f"{info.value!s} {info.value!r} {client!r}"
    assert server.auth_failures == 1 and sleeps.calls == []
    assert USER in text
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in text and secret not in caplog.text


def test_other_client_errors_are_not_retried(server: SandboxProcessingLog) -> None:
    client = ProcessingLogClient(server.url + "/nothing-here", USER, PASSWORD, sleep=Sleeps())
    with pytest.raises(ProcessingLogError, match="HTTP 404"):
        client.outcome(file_name(37))
    assert len(server.requests_seen) == 1


# -- tolerant parsing (the JSON shape is undocumented) ---------------------------------------


@pytest.mark.parametrize(
    "body, count",
    [
        ([{"filename": "a", "message": "OK"}], 1),
        ({"logs": [{"filename": "a"}, {"filename": "b"}]}, 2),
        ({"Data": {"Results": [{"file_name": "a"}]}}, 1),
        ({"page": 1, "items_here": [{"fileName": "a"}]}, 1),
        ({"filename": "a", "message": "OK"}, 1),
        ({}, 0),
        (None, 0),
        ({"logs": []}, 0),
    ],
)
def test_records_are_found_in_lists_and_objects(body: object, count: int) -> None:
    records, _ = extract_records(body)
    assert len(records) == count


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"FileName": "/drop/x.log.gz", "Status": "error", "Message": "Invalid headers"},
            ("x.log.gz", "error", "Invalid headers"),
        ),
        ({"file": "x", "msg": "OK", "processed_at": "2026-11-20 12:00:00"}, ("x", None, "OK")),
        ({"name": "x", "result": {"message": "File is empty"}}, ("x", "File is empty", None)),
        ("OK", (None, None, "OK")),
    ],
)
def test_record_fields_under_likely_names(raw: object, expected: tuple) -> None:
    record = to_record(raw)
    assert (record.filename, record.status, record.message) == expected
    assert record.raw == raw


@pytest.mark.parametrize(
    "text, outcome",
    [
        ("OK", Outcome.ACCEPTED),
        ("ok", Outcome.ACCEPTED),
        ("success", Outcome.ACCEPTED),
        ("File is empty", Outcome.REJECTED),
        ("File is invalid", Outcome.REJECTED),
        ("File is not in GZIP format", Outcome.REJECTED),
        ("Invalid headers", Outcome.REJECTED),
        ("Integration acme is not authorized to write into namespaces zz", Outcome.REJECTED),
        ("Some new failure nobody documented", Outcome.REJECTED),
        ("Processing", Outcome.PENDING),
        ("", Outcome.PENDING),
        ("something unexpected", Outcome.PENDING),
    ],
)
def test_messages_map_to_outcomes(text: str, outcome: Outcome) -> None:
    assert classify(text) is outcome


def test_the_latest_final_record_decides() -> None:
    def rec(message: str, when: str | None) -> LogRecord:
        return to_record({"filename": "f", "message": message, "timestamp": when})

    records = [
        rec("OK", "2026-11-20T12:05:00Z"),
        rec("File is invalid", "2026-11-20T12:00:00Z"),
        rec("Processing", "2026-11-20T12:10:00Z"),
        rec("OK", None),
    ]
    result = outcome_of("f", records)
    assert (result.status, result.message) == (Outcome.ACCEPTED, "OK")
    assert len(result.raw_records) == 4
    other = outcome_of("g", [to_record({"filename": "f", "message": "OK"})])
    assert other.status is Outcome.PENDING and other.raw_records == []


@pytest.mark.parametrize(
    "value, expected",
    [
        (1763640000, datetime(2025, 11, 20, 12, 0, tzinfo=UTC)),
        (1763640000000, datetime(2025, 11, 20, 12, 0, tzinfo=UTC)),
        ("2025-11-20 12:00:00", datetime(2025, 11, 20, 12, 0, tzinfo=UTC)),
        ("2025-11-20T13:00:00+01:00", datetime(2025, 11, 20, 12, 0, tzinfo=UTC)),
        ("yesterday", None),
    ],
)
def test_timestamps_are_read_leniently(value: object, expected: datetime | None) -> None:
    assert parse_timestamp(value) == expected
