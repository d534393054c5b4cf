"""The ledger and deliver_batch against a folder-backed fake transport.

A fake peer is enough here: these tests are about receipts, reconciliation and quota
bookkeeping. The real SFTP/CFT clients are tested against real protocol peers elsewhere.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mm_assets.clients.transport import (
    AuthenticationFailed,
    DeliveryError,
    HostKeyRejected,
    OutgoingFile,
    Sighting,
    TransientDeliveryError,
    UploadResult,
)
from mm_assets.core.quota import QuotaLimits
from mm_assets.delivery.deliver import Status, deliver_batch
from mm_assets.delivery.ledger import AlreadyTracked, Ledger

T0 = datetime(2025, 3, 15, 10, 20, tzinfo=UTC)
BATCH = "batch_20250315"


class FolderTransport:
    """Implements the Transport protocol by writing into a local folder (temp + rename)."""

    def __init__(self, root: Path, name: str = "sftp", max_file_bytes: int = 4 * 10**9) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_file_bytes = max_file_bytes
        # Like the real clients: a CFT bucket keeps delivered objects, an SFTP drop does not.
        self.delivered_files_stay_visible = name == "cft"
        self.uploads: Counter[str] = Counter()
        self.fail: dict[str, DeliveryError] = {}
        self.fail_after_rename: dict[str, DeliveryError] = {}

    def upload(self, file: OutgoingFile) -> UploadResult:
        self.uploads[file.name] += 1
        if file.name in self.fail:
            raise self.fail[file.name]
        temp = self.root / f".{file.name}.part"
        shutil.copyfile(file.path, temp)
        os.replace(temp, self.root / file.name)
        if file.name in self.fail_after_rename:
            raise self.fail_after_rename[file.name]
        return UploadResult(f"/drop/{file.name}", file.size, 1)

    def remote_size(self, name: str) -> int | None:
        path = self.root / name
        return path.stat().st_size if path.exists() else None

    def lookup(self, name: str) -> Sighting:
        # Like an SFTP drop: MediaMath empties it, so absence proves nothing, unless it is a
        # bucket ("cft") that keeps every file.
        return Sighting(name, self.remote_size(name), None, absent_is_proof=self.name == "cft")

    def take_away(self, name: str) -> None:
        """What MediaMath does to an SFTP file once it has read it."""
        (self.root / name).unlink()

    def close(self) -> None:
        pass


class Clock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current


def make_files(
    outbox: Path, count: int, size: int = 100, prefix: str = "Partner"
) -> list[OutgoingFile]:
    outbox.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        name = f"{prefix}_2025031510{i:04d}.log.gz"
        data = os.urandom(size)
        path = outbox / name
        path.write_bytes(data)
        files.append(OutgoingFile(name, path, size, hashlib.md5(data).hexdigest()))
    return files


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """The ledger on SQLite and on PostgreSQL (`database_url` is parametrized)."""
    with Ledger(database_url) as opened:
        yield opened


@pytest.fixture
def sftp(tmp_path: Path) -> FolderTransport:
    return FolderTransport(tmp_path / "drop")


def statuses(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(e.status) for e in report.entries]


# -- basic delivery and idempotence --------------------------------------------------------


def test_delivers_each_file_and_a_rerun_sends_nothing(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    files = make_files(tmp_path / "outbox", 3)
    report = deliver_batch(files, BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(report) == ["delivered"] * 3
    assert report.done
    first = report.entries[0]
    assert first.remote_path == f"/drop/{files[0].name}"
    assert first.md5 == files[0].md5_hex and first.bytes == 100 and first.uploaded_at == T0
    assert [r.file_name for r in ledger.receipts(BATCH)] == sorted(f.name for f in files)
    assert ledger.in_flight(BATCH) == []

    again = deliver_batch(files, BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(again) == ["already_delivered"] * 3
    assert again.done
    assert again.entries[0].remote_path == f"/drop/{files[0].name}"
    assert sum(sftp.uploads.values()) == 3

    assert report.counts["delivered"] == 3 and again.counts["already_delivered"] == 3
    assert report.usage.files_this_hour == 3 and report.usage.bytes_today == 300
    rows = report.to_rows()
    assert rows[0]["status"] == "delivered" and rows[0]["uploaded_at"] == T0.isoformat()
    assert set(rows[0]) == {
        "name",
        "status",
        "transport",
        "remote_path",
        "bytes",
        "md5",
        "attempts",
        "uploaded_at",
        "not_before",
        "message",
    }


def test_a_rebuilt_file_under_a_delivered_name_is_not_sent(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    [file] = make_files(tmp_path / "outbox", 1)
    deliver_batch([file], BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    rebuilt = OutgoingFile(file.name, file.path, file.size, "f" * 32)
    report = deliver_batch([rebuilt], BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert report.entries[0].status is Status.NEEDS_ATTENTION  # other bytes under a delivered name
    assert "differs" in report.entries[0].message
    assert sftp.uploads[file.name] == 1


def test_duplicate_names_in_a_batch_are_an_error(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    [file] = make_files(tmp_path / "outbox", 1)
    with pytest.raises(ValueError, match="more than once"):
        deliver_batch([file, file], BATCH, sftp, ledger, QuotaLimits())


# -- quotas --------------------------------------------------------------------------------


def test_hour_quota_defers_the_rest_to_the_next_hour_then_sends_them_once(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    limits = QuotaLimits(files_per_hour=3)
    files = make_files(tmp_path / "outbox", 5)
    clock = Clock(T0)

    first = deliver_batch(files, BATCH, sftp, ledger, limits, now=clock)
    assert statuses(first) == ["delivered"] * 3 + ["deferred"] * 2
    next_hour = datetime(2025, 3, 15, 11, tzinfo=UTC)
    assert [e.not_before for e in first.entries[3:]] == [next_hour, next_hour]
    assert first.next_not_before == next_hour
    assert "hourly" in first.entries[3].message
    assert not first.done
    assert first.usage.files_left_this_hour == 0
    assert ledger.in_flight(BATCH) == []  # deferred files leave no state behind

    clock.current = T0 + timedelta(minutes=30)  # same hour: still nothing
    same_hour = deliver_batch(files, BATCH, sftp, ledger, limits, now=clock)
    assert statuses(same_hour) == ["already_delivered"] * 3 + ["deferred"] * 2

    clock.current = next_hour + timedelta(seconds=5)
    second = deliver_batch(files, BATCH, sftp, ledger, limits, now=clock)
    assert statuses(second) == ["already_delivered"] * 3 + ["delivered"] * 2
    assert second.done

    clock.current = next_hour + timedelta(hours=1)
    third = deliver_batch(files, BATCH, sftp, ledger, limits, now=clock)
    assert statuses(third) == ["already_delivered"] * 5
    assert sftp.uploads == Counter({f.name: 1 for f in files})


def test_day_quota_defers_to_midnight_utc(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    limits = QuotaLimits(bytes_per_day=250, max_file_bytes=200)
    files = make_files(tmp_path / "outbox", 3)
    report = deliver_batch(files, BATCH, sftp, ledger, limits, now=Clock(T0))
    assert statuses(report) == ["delivered", "delivered", "deferred"]
    assert report.entries[2].not_before == datetime(2025, 3, 16, tzinfo=UTC)
    assert report.usage.bytes_left_today == 50


def test_too_large_files_are_refused_with_the_rule(tmp_path: Path, ledger: Ledger) -> None:
    # The transport's own limit applies when it is stricter than the quota.
    small_drop = FolderTransport(tmp_path / "drop", max_file_bytes=150)
    files = make_files(tmp_path / "outbox", 1, size=100) + make_files(
        tmp_path / "outbox", 1, size=200, prefix="Big"
    )
    report = deliver_batch(files, BATCH, small_drop, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(report) == ["delivered", "refused"]
    assert "S2S-QUOTA" in report.entries[1].message
    assert small_drop.uploads[files[1].name] == 0
    assert ledger.in_flight(BATCH) == []


def test_in_flight_files_count_against_the_quota(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    limits = QuotaLimits(files_per_hour=2)
    files = make_files(tmp_path / "outbox", 3)
    assert ledger.reserve(files[0], "other", "sftp", T0, limits, run_id="r1").send
    shown = ledger.usage(T0, limits)
    assert (shown.files_this_hour, shown.in_flight_files, shown.bytes_today) == (1, 1, 100)
    assert ledger.reserve(files[1], "other", "sftp", T0, limits, run_id="r1").send
    third = ledger.reserve(files[2], "other", "sftp", T0, limits, run_id="r1")
    assert third.defer and third.not_before == datetime(2025, 3, 15, 11, tzinfo=UTC)
    # Reserving a file twice is refused outright, whatever the quota says.
    with pytest.raises(AlreadyTracked):
        ledger.reserve(files[0], "other", "sftp", T0, limits, run_id="r2")


def test_receipts_of_an_earlier_hour_and_day_do_not_count(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    limits = QuotaLimits(files_per_hour=2)
    files = make_files(tmp_path / "outbox", 2)
    deliver_batch(files, BATCH, sftp, ledger, limits, now=Clock(T0))
    assert ledger.usage(T0, limits).files_left_this_hour == 0
    later = ledger.usage(T0 + timedelta(hours=1), limits)
    assert later.files_this_hour == 0 and later.bytes_today == 200
    assert ledger.usage(T0 + timedelta(days=1), limits).bytes_today == 0


# -- crashes and reconciliation ------------------------------------------------------------


@pytest.mark.parametrize("transport_name", ["sftp", "cft"])
def test_crash_between_upload_and_receipt_is_reconciled_not_resent(
    tmp_path: Path, ledger: Ledger, transport_name: str
) -> None:
    drop = FolderTransport(tmp_path / "drop", name=transport_name)
    files = make_files(tmp_path / "outbox", 2)
    limits = QuotaLimits()
    # The crashed run: reserved and uploaded, then died before writing the receipt.
    assert ledger.reserve(files[0], BATCH, transport_name, T0, limits, run_id="dead").send
    drop.upload(files[0])

    report = deliver_batch(
        files, BATCH, drop, ledger, limits, now=Clock(T0 + timedelta(minutes=1)), run_id="new"
    )
    assert statuses(report) == ["reconciled", "delivered"]
    assert "not sent again" in report.entries[0].message
    assert drop.uploads == Counter({files[0].name: 1, files[1].name: 1})
    assert ledger.receipt(files[0].name) is not None
    assert ledger.in_flight(BATCH) == []


def test_sftp_in_flight_file_gone_needs_attention_and_is_not_resent(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    [file] = make_files(tmp_path / "outbox", 1)
    ledger.reserve(file, BATCH, "sftp", T0, QuotaLimits(), run_id="dead")
    sftp.upload(file)
    sftp.take_away(file.name)  # MediaMath read it before our receipt was written

    later = Clock(T0 + timedelta(hours=3))
    report = deliver_batch([file], BATCH, sftp, ledger, QuotaLimits(), now=later, run_id="new")
    entry = report.entries[0]
    assert entry.status is Status.NEEDS_ATTENTION
    assert "mm-assets attention --settle" in entry.message
    assert sftp.uploads[file.name] == 1
    assert ledger.receipt(file.name) is None
    assert [f.file_name for f in ledger.in_flight(BATCH)] == [file.name]  # kept, still counted

    # The operator confirms from the processing log that MediaMath has it.
    ledger.complete(file.name, UploadResult(f"/drop/{file.name}", file.size, 1), later())
    again = deliver_batch([file], BATCH, sftp, ledger, QuotaLimits(), now=later, run_id="new2")
    assert statuses(again) == ["already_delivered"]
    assert sftp.uploads[file.name] == 1


def test_cft_in_flight_object_absent_is_sent_again(tmp_path: Path, ledger: Ledger) -> None:
    cft = FolderTransport(tmp_path / "bucket", name="cft")
    [file] = make_files(tmp_path / "outbox", 1)
    ledger.reserve(file, BATCH, "cft", T0, QuotaLimits(), run_id="dead")  # died before the PUT

    later = Clock(T0 + timedelta(hours=3))
    report = deliver_batch([file], BATCH, cft, ledger, QuotaLimits(), now=later, run_id="new")
    assert statuses(report) == ["delivered"]
    assert cft.uploads[file.name] == 1


def test_a_young_in_flight_row_of_another_run_is_left_alone(tmp_path: Path, ledger: Ledger) -> None:
    cft = FolderTransport(tmp_path / "bucket", name="cft")
    [file] = make_files(tmp_path / "outbox", 1)
    ledger.reserve(file, BATCH, "cft", T0, QuotaLimits(), run_id="alive")

    soon = Clock(T0 + timedelta(minutes=5))
    report = deliver_batch([file], BATCH, cft, ledger, QuotaLimits(), now=soon, run_id="other")
    assert statuses(report) == ["in_progress"]
    assert cft.uploads[file.name] == 0
    assert ledger.in_flight_record(file.name) is not None


def test_in_flight_over_another_transport_needs_attention(tmp_path: Path, ledger: Ledger) -> None:
    cft = FolderTransport(tmp_path / "bucket", name="cft")
    [file] = make_files(tmp_path / "outbox", 1)
    ledger.reserve(file, BATCH, "sftp", T0, QuotaLimits(), run_id="dead")
    report = deliver_batch(
        [file], BATCH, cft, ledger, QuotaLimits(), now=Clock(T0 + timedelta(hours=3))
    )
    assert statuses(report) == ["needs_attention"]
    assert cft.uploads[file.name] == 0


# -- failures ------------------------------------------------------------------------------


def test_failed_upload_is_not_marked_done_and_is_retried_next_run(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    files = make_files(tmp_path / "outbox", 3)
    sftp.fail[files[1].name] = TransientDeliveryError("connection reset after 5 attempts")
    first = deliver_batch(files, BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(first) == ["delivered", "failed", "delivered"]
    assert "connection reset" in first.entries[1].message
    assert ledger.receipt(files[1].name) is None
    assert ledger.in_flight(BATCH) == []  # abandoned: its quota slot is free again
    assert first.usage.files_this_hour == 2

    del sftp.fail[files[1].name]
    second = deliver_batch(files, BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(second) == ["already_delivered", "delivered", "already_delivered"]
    assert sftp.uploads == Counter({files[0].name: 1, files[1].name: 2, files[2].name: 1})


def test_an_error_after_the_file_landed_still_gets_its_receipt(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport
) -> None:
    [file] = make_files(tmp_path / "outbox", 1)
    sftp.fail_after_rename[file.name] = TransientDeliveryError("connection lost during rename")
    report = deliver_batch([file], BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(report) == ["delivered"]
    assert "in the drop at full size" in report.entries[0].message
    assert ledger.receipt(file.name) is not None


@pytest.mark.parametrize(
    "error", [AuthenticationFailed("wrong password"), HostKeyRejected("host key changed")]
)
def test_authentication_failure_stops_the_batch(
    tmp_path: Path, ledger: Ledger, sftp: FolderTransport, error: DeliveryError
) -> None:
    files = make_files(tmp_path / "outbox", 4)
    sftp.fail[files[1].name] = error
    report = deliver_batch(files, BATCH, sftp, ledger, QuotaLimits(), now=Clock(T0))
    assert statuses(report) == ["delivered", "failed", "not_attempted", "not_attempted"]
    assert type(error).__name__ in report.entries[1].message
    assert "batch stopped" in report.entries[2].message
    assert sftp.uploads == Counter({files[0].name: 1, files[1].name: 1})
    assert ledger.in_flight(BATCH) == []
    assert report.counts["not_attempted"] == 2


def test_dry_run_touches_nothing(tmp_path: Path, ledger: Ledger, sftp: FolderTransport) -> None:
    files = make_files(tmp_path / "outbox", 4)
    deliver_batch(files[:1], BATCH, sftp, ledger, QuotaLimits(files_per_hour=3), now=Clock(T0))
    report = deliver_batch(
        files, BATCH, sftp, ledger, QuotaLimits(files_per_hour=3), now=Clock(T0), dry_run=True
    )
    assert report.dry_run
    assert statuses(report) == ["already_delivered", "dry_run", "dry_run", "deferred"]
    assert sum(sftp.uploads.values()) == 1
    assert len(ledger.receipts(BATCH)) == 1 and ledger.in_flight(BATCH) == []


# -- persistence and concurrency -----------------------------------------------------------


def test_ledger_survives_reopening(
    tmp_path: Path, database_url: str, sftp: FolderTransport
) -> None:
    files = make_files(tmp_path / "outbox", 2)
    with Ledger(database_url) as first:
        deliver_batch(files[:1], BATCH, sftp, first, QuotaLimits(), now=Clock(T0))
        first.reserve(files[1], BATCH, "sftp", T0, QuotaLimits(), run_id="dead")
    with Ledger(database_url) as reopened:
        receipt = reopened.receipt(files[0].name)
        assert receipt is not None and receipt.uploaded_at == T0
        assert receipt.uploaded_at.tzinfo is not None
        [flight] = reopened.in_flight(BATCH)
        assert flight.file_name == files[1].name and flight.run_id == "dead"
        assert reopened.usage(T0, QuotaLimits()).files_this_hour == 2
        later = Clock(T0 + timedelta(hours=3))
        report = deliver_batch(files, BATCH, sftp, reopened, QuotaLimits(), now=later)
        assert statuses(report) == ["already_delivered", "needs_attention"]
        assert sftp.uploads[files[0].name] == 1


def _reserve_many(url: str, go: object, prefix: str, count: int) -> None:
    ledger = Ledger(url)
    go.wait(timeout=60)  # type: ignore[attr-defined]
    for i in range(count):
        file = OutgoingFile(f"{prefix}_{i:02d}.log.gz", Path("/dev/null"), 10, "0" * 32)
        ledger.reserve(file, "b", "sftp", T0, QuotaLimits(files_per_hour=20), run_id=prefix)
    ledger.close()


def test_concurrent_processes_never_exceed_the_hour_quota(database_url: str) -> None:
    url = database_url
    Ledger(url).close()  # schema first, so the race is about the quota alone
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Barrier(2)  # both start reserving at the same moment
    workers = [
        ctx.Process(target=_reserve_many, args=(url, go, prefix, 15)) for prefix in ("p1", "p2")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    with Ledger(url) as ledger:
        flying = ledger.in_flight("b")
        assert len(flying) == 20
        assert ledger.usage(T0, QuotaLimits()).files_this_hour == 20


def test_a_plain_path_string_opens_a_sqlite_file(tmp_path: Path) -> None:
    with Ledger(str(tmp_path / "nested" / "ledger.sqlite")) as ledger:
        assert ledger.url.get_backend_name() == "sqlite"
        assert ledger.usage(T0, QuotaLimits()).files_left_this_hour == 20
    assert (tmp_path / "nested" / "ledger.sqlite").exists()


def test_observed_uploads_count_against_the_quota_until_they_have_a_receipt(
    tmp_path: Path, ledger: Ledger
) -> None:
    [file] = make_files(tmp_path / "outbox", 1)
    limits = QuotaLimits(files_per_hour=5)
    assert ledger.observe(file.name, file.size, T0, "processing log")
    assert not ledger.observe(file.name, file.size, T0, "processing log")  # once
    assert ledger.usage(T0, limits).files_this_hour == 1
    receipt = ledger.record_found(file, BATCH, "sftp", file.name, T0)
    assert receipt.uploaded_at == T0 and receipt.attempts == 0
    assert ledger.usage(T0, limits).files_this_hour == 1  # the receipt, not twice


def test_reserve_records_the_owner_process_and_settling_forgets_it(
    tmp_path: Path, ledger: Ledger
) -> None:
    [file] = make_files(tmp_path / "outbox", 1)
    ledger.reserve(file, BATCH, "sftp", T0, QuotaLimits(), run_id="r")
    owner = ledger.owner(file.name)
    assert owner is not None and owner.endswith(f":{os.getpid()}")
    assert ledger.abandon(file.name) and ledger.owner(file.name) is None
