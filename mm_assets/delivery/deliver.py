"""Deliver one batch of S2S files to MediaMath, once each, within the quotas (S2S-QUOTA).

Per file, in order:

1. A receipt exists: `already_delivered`. A file with a receipt is never sent again.
2. An in-flight row exists (a run stopped between upload and receipt, or is uploading now):
   reconcile it first, before anything is reserved, because the row holds quota. The places
   that know are asked (`reconcile.find`: the drop or bucket, then the processing log):
   - MediaMath has it (in the drop at full size, or a processing-log record): write the
     receipt (at the time it landed, so the quota counts it there), `reconciled`;
   - the drop holds a different size, or the row was made over another transport:
     `needs_attention`;
   - the row belongs to another run that may still be uploading (its process is alive, or
     on another machine and younger than `stale_in_flight_after`): `in_progress`. A row whose
     process on this machine is gone (kill -9) is resolved at once;
   - proven never landed (CFT keeps every object, so absent is proof; over SFTP, only our
     temporary of that name is there): abandon the row and send the file again;
   - otherwise (SFTP: absent, no log record yet) MediaMath may have taken it: the file is
     `needs_attention`, never re-sent blindly; `mm-assets attention --settle` records what a
     person found out, or a later run finds the processing-log record.
3. A file the build's checks did not approve (`not_approved`, from
   `mm_assets/delivery/gate.py`) is `not_approved` and never reserved or sent.
4. Otherwise reserve it in the ledger: `deferred` (with `not_before`) or `refused` when the
   quota says so. Before uploading, ask the same places (the ledger may have been lost):
   a name MediaMath already has gets its receipt (`already_delivered`) and is not sent.
   Today's quota use is rebuilt from the processing log first (`reconcile.rebuild_usage`).

Upload error contract: the transports write a temporary name and rename it, so an upload
that raises has not written the final name. The in-flight row is then abandoned and the file
is `failed` (no receipt, sent again next run). As a guard against a rename that succeeded
just before the connection died, the drop is probed first: a file there at full size gets
its receipt instead. `AuthenticationFailed`, `HostKeyRejected` and `ServiceDown` (the CFT
credentials endpoint down) stop the batch (the rest are `not_attempted`, sent by a later run):
every other file would fail the same way; the first two are never retried. With a
`retry_policy`, a file failed by a retryable `DeliveryError` gets a `not_before` (bounded
backoff, `mm_assets/delivery/retries.py`) until it has failed `max_attempts` runs, then it is
`needs_attention`. An exception that is not a
`DeliveryError` leaves the in-flight row in place, so the next run reconciles it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from mm_assets.clients.mediamath_processing_log import ProcessingLogError
from mm_assets.clients.transport import (
    AuthenticationFailed,
    DeliveryError,
    HostKeyRejected,
    OutgoingFile,
    ServiceDown,
    Transport,
    UploadResult,
)
from mm_assets.core.clock import utc_now
from mm_assets.core.quota import Action, QuotaLimits, QuotaUsage, as_utc, decide
from mm_assets.delivery.ledger import AlreadyTracked, InFlight, Ledger, Receipt, owner_is_dead
from mm_assets.delivery.reconcile import Finding, ProcessingLog, Verdict, find, rebuild_usage
from mm_assets.delivery.retries import RetryBook, RetryPolicy

logger = logging.getLogger(__name__)

# Long enough for a 4 GB upload with retries over a slow line; a younger in-flight row of
# another run is presumed alive.
DEFAULT_STALE_IN_FLIGHT_AFTER = timedelta(hours=2)


class Status(StrEnum):
    DELIVERED = "delivered"
    ALREADY_DELIVERED = "already_delivered"
    RECONCILED = "reconciled"
    DEFERRED = "deferred"
    REFUSED = "refused"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    IN_PROGRESS = "in_progress"
    NOT_ATTEMPTED = "not_attempted"
    NOT_APPROVED = "not_approved"  # the build's checks did not approve these bytes
    DRY_RUN = "dry_run"


# Statuses after which the file has a receipt.
DONE_STATUSES = frozenset({Status.DELIVERED, Status.ALREADY_DELIVERED, Status.RECONCILED})


@dataclass(frozen=True)
class DeliveryEntry:
    name: str
    status: Status
    transport: str
    bytes: int
    md5: str
    remote_path: str | None = None
    attempts: int | None = None
    uploaded_at: datetime | None = None
    not_before: datetime | None = None
    message: str = ""
    retryable: bool = False  # failed for a transient reason: worth another run

    def to_row(self) -> dict[str, str | int | None]:
        return {
            "name": self.name,
            "status": str(self.status),
            "transport": self.transport,
            "remote_path": self.remote_path,
            "bytes": self.bytes,
            "md5": self.md5,
            "attempts": self.attempts,
            "uploaded_at": self.uploaded_at.isoformat() if self.uploaded_at else None,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "message": self.message,
        }


@dataclass(frozen=True)
class DeliveryReport:
    batch: str
    transport: str
    entries: list[DeliveryEntry]
    usage: QuotaUsage
    dry_run: bool = False
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        counted = Counter(str(entry.status) for entry in self.entries)
        object.__setattr__(self, "counts", {str(s): counted.get(str(s), 0) for s in Status})

    @property
    def done(self) -> bool:
        """Every file of the batch has a receipt."""
        return all(entry.status in DONE_STATUSES for entry in self.entries)

    @property
    def next_not_before(self) -> datetime | None:
        """When the earliest deferred file may go, for scheduling the next run."""
        times = [e.not_before for e in self.entries if e.not_before is not None]
        return min(times) if times else None

    def entry(self, name: str) -> DeliveryEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_rows(self) -> list[dict[str, str | int | None]]:
        """One row per file, JSON-friendly, for a metadata table."""
        return [entry.to_row() for entry in self.entries]


def _entry(
    file: OutgoingFile, status: Status, transport: str, message: str = "", **extra: object
) -> DeliveryEntry:
    return DeliveryEntry(
        name=file.name,
        status=status,
        transport=transport,
        bytes=file.size,
        md5=file.md5_hex,
        message=message,
        **extra,  # type: ignore[arg-type]
    )


def _from_receipt(
    file: OutgoingFile, receipt: Receipt, status: Status, message: str = ""
) -> DeliveryEntry:
    return DeliveryEntry(
        name=file.name,
        status=status,
        transport=receipt.transport,
        bytes=receipt.bytes,
        md5=receipt.md5,
        remote_path=receipt.remote_path,
        attempts=receipt.attempts,
        uploaded_at=receipt.uploaded_at,
        message=message,
    )


class _StopBatch(Exception):
    def __init__(self, entry: DeliveryEntry) -> None:
        super().__init__(entry.message)
        self.entry = entry


def _already_delivered(file: OutgoingFile, receipt: Receipt) -> DeliveryEntry:
    message = ""
    if receipt.md5 != file.md5_hex or receipt.bytes != file.size:
        # FileIdentifier must be unique across uploads (S2S-HDR): a rebuilt file under a
        # delivered name must not replace what MediaMath already has.
        message = (
            f"a file named {file.name} was delivered before with md5 {receipt.md5} "
            f"({receipt.bytes} bytes); the local file differs and is not sent"
        )
        # Not "done": MediaMath holds other bytes under this name, which someone must settle.
        return _from_receipt(file, receipt, Status.NEEDS_ATTENTION, message)
    return _from_receipt(file, receipt, Status.ALREADY_DELIVERED, message)


def _stopping_error(file: OutgoingFile, transport: Transport, exc: DeliveryError) -> _StopBatch:
    return _StopBatch(_entry(file, Status.FAILED, transport.name, f"{type(exc).__name__}: {exc}"))


def _look(
    file: OutgoingFile, transport: Transport, log: ProcessingLog | None, since: str
) -> Finding | DeliveryEntry:
    """`reconcile.find`, with transport errors turned into this file's entry."""
    try:
        return find(file, transport, log)
    except (AuthenticationFailed, HostKeyRejected, ServiceDown) as exc:
        raise _stopping_error(file, transport, exc) from None
    except DeliveryError as exc:
        return _entry(
            file,
            Status.FAILED,
            transport.name,
            f"{since}could not check the drop ({exc}); not sent, the next run checks again",
            retryable=exc.retryable,
        )


def _settle_message(name: str) -> str:
    return (
        f"settle it with `mm-assets attention --settle {name} --as delivered` (MediaMath has "
        f"it) or `--as not-delivered` (the next run sends it)"
    )


def _unrecorded(
    file: OutgoingFile,
    batch: str,
    transport: Transport,
    ledger: Ledger,
    log: ProcessingLog | None,
    now: datetime,
) -> DeliveryEntry | None:
    """A file the ledger has no receipt for, just reserved: None means "send it now".

    The ledger may have been lost: a name MediaMath already has is not sent again. Asked
    only once the quota lets the file go, so deferred files cost no connection.
    """
    finding = _look(file, transport, log, "")
    if isinstance(finding, DeliveryEntry):
        return finding
    if finding.verdict is Verdict.HAS_IT:
        receipt = ledger.record_found(
            file, batch, transport.name, file.name, finding.landed_at or now
        )
        return _from_receipt(
            file,
            receipt,
            Status.ALREADY_DELIVERED,
            f"no receipt in the ledger, but {finding.detail}: receipt written, not sent again",
        )
    if finding.verdict is Verdict.HAS_OTHER_BYTES:
        return _entry(file, Status.NEEDS_ATTENTION, transport.name, f"{finding.detail}; not sent")
    return None


def _reconcile(
    file: OutgoingFile,
    flight: InFlight,
    transport: Transport,
    ledger: Ledger,
    now: datetime,
    run_id: str,
    stale_after: timedelta,
    log: ProcessingLog | None = None,
) -> DeliveryEntry | None:
    """Resolve a leftover in-flight row; None means "send the file now"."""
    since = f"in flight since {flight.started_at.isoformat()} (run {flight.run_id or '?'})"
    if flight.transport != transport.name:
        return _entry(
            file,
            Status.NEEDS_ATTENTION,
            flight.transport,
            f"{since} over {flight.transport}, this run delivers over {transport.name}: "
            f"check {flight.transport} by hand; {_settle_message(file.name)}",
        )
    finding = _look(file, transport, log, f"{since}; ")
    if isinstance(finding, DeliveryEntry):
        return finding
    if finding.verdict is Verdict.HAS_IT:
        receipt = ledger.record_found(
            file, flight.batch, transport.name, file.name, finding.landed_at or now
        )
        return _from_receipt(
            file,
            receipt,
            Status.RECONCILED,
            f"{since}; {finding.detail}: receipt written, not sent again",
        )
    if finding.verdict is Verdict.HAS_OTHER_BYTES:
        return _entry(
            file,
            Status.NEEDS_ATTENTION,
            transport.name,
            f"{since}; {finding.detail}; {_settle_message(file.name)}",
        )
    owner = ledger.owner(file.name)
    dead = owner is not None and owner_is_dead(owner)
    if flight.run_id != run_id and not dead and now - flight.started_at < stale_after:
        return _entry(
            file,
            Status.IN_PROGRESS,
            transport.name,
            f"{since}; that run may still be uploading it; the next run checks again",
        )
    if finding.verdict is Verdict.NEVER_LANDED:
        ledger.abandon(file.name)
        logger.info("%s: %s, %s; sending again", file.name, since, finding.detail)
        return None
    return _entry(
        file,
        Status.NEEDS_ATTENTION,
        transport.name,
        f"{since}{' by a process that is gone' if dead else ''}; {finding.detail}. "
        f"{_settle_message(file.name)}",
    )


def _upload(
    file: OutgoingFile, transport: Transport, ledger: Ledger, now: Callable[[], datetime]
) -> DeliveryEntry:
    """Upload a reserved file and settle its in-flight row."""
    try:
        result = transport.upload(file)
    except (AuthenticationFailed, HostKeyRejected, ServiceDown) as exc:
        ledger.abandon(file.name)
        raise _stopping_error(file, transport, exc) from None
    except DeliveryError as exc:
        try:
            landed = transport.remote_size(file.name) == file.size
        except DeliveryError:
            landed = False  # the error contract says the final name was not written
        if landed:
            receipt = ledger.complete(file.name, UploadResult(file.name, file.size, 1), now())
            return _from_receipt(
                file,
                receipt,
                Status.DELIVERED,
                f"the upload reported an error ({exc}) but the file is in the drop at full "
                f"size; receipt written",
            )
        ledger.abandon(file.name)
        return _entry(
            file,
            Status.FAILED,
            transport.name,
            f"{type(exc).__name__}: {exc}; not delivered",
            retryable=exc.retryable,
        )
    except Exception as exc:  # unknown outcome: keep the row so the next run reconciles
        logger.exception("unexpected error uploading %s", file.name)
        return _entry(
            file,
            Status.FAILED,
            transport.name,
            f"unexpected {type(exc).__name__}: {exc}; its in-flight record is kept so the "
            f"next run checks the drop before sending",
        )
    try:
        receipt = ledger.complete(file.name, result, now())
    except LookupError:
        return _entry(
            file,
            Status.NEEDS_ATTENTION,
            transport.name,
            f"uploaded to {result.remote_path}, but its in-flight record vanished (abandoned "
            f"by hand?): no receipt written; record it with Ledger.reserve + Ledger.complete",
            remote_path=result.remote_path,
            attempts=result.attempts,
        )
    return _from_receipt(file, receipt, Status.DELIVERED)


def deliver_batch(
    files: list[OutgoingFile],
    batch: str,
    transport: Transport,
    ledger: Ledger,
    limits: QuotaLimits,
    *,
    now: Callable[[], datetime] = utc_now,
    run_id: str = "",
    dry_run: bool = False,
    stale_in_flight_after: timedelta = DEFAULT_STALE_IN_FLIGHT_AFTER,
    processing_log: ProcessingLog | None = None,
    not_approved: dict[str, str] | None = None,
    retry_policy: RetryPolicy | None = None,
) -> DeliveryReport:
    """Deliver `files` of `batch` over `transport`, each at most once (see module docstring).

    `run_id` tells this run's in-flight rows from other runs' (pass the Dagster run id).
    `dry_run` touches neither the ledger nor the transport: files that would be sent are
    reported `dry_run`, the quota decisions are simulated on the current usage.
    `processing_log` (S2S-LOG) is asked, with the transport, about every file the ledger
    cannot vouch for (see `reconcile`), and rebuilds today's quota use.
    `not_approved`: {file name: reason} of files the build's checks did not approve; they
    are reported `not_approved` and never sent. `retry_policy`: schedule retries of files
    that failed for a transient reason (see the module docstring).
    """
    not_approved = not_approved or {}
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("the batch lists the same file name more than once")
    # The transport's own limit may be stricter (binary vs decimal GB, CFT-PUT).
    limits = replace(limits, max_file_bytes=min(limits.max_file_bytes, transport.max_file_bytes))
    if dry_run:
        return _dry_run(files, batch, transport, ledger, limits, now(), not_approved)

    entries: dict[str, DeliveryEntry] = {}
    to_send: list[OutgoingFile] = []
    stopped: DeliveryEntry | None = None
    if processing_log is not None:
        try:
            rebuild_usage(ledger, processing_log, as_utc(now()))
        except ProcessingLogError as exc:
            # Asked once per batch: an unreachable log is not asked again for every file, and
            # the drop or bucket alone is asked (an SFTP file it cannot vouch for then needs
            # attention rather than a blind re-send).
            logger.warning(
                "the processing log could not be read (%s): today's quota use is the ledger's, "
                "and only the %s drop is asked about files without a receipt",
                exc,
                transport.name,
            )
            processing_log = None

    # Pass 1: receipts and leftovers first; leftover rows hold quota the sends need.
    for file in files:
        receipt = ledger.receipt(file.name)
        if receipt is not None:
            entries[file.name] = _already_delivered(file, receipt)
            continue
        flight = ledger.in_flight_record(file.name)
        if flight is None:
            to_send.append(file)
            continue
        try:
            entry = _reconcile(
                file,
                flight,
                transport,
                ledger,
                as_utc(now()),
                run_id,
                stale_in_flight_after,
                processing_log,
            )
        except _StopBatch as stop:
            entries[file.name] = stopped = stop.entry
            break
        if entry is None:
            to_send.append(file)
        else:
            entries[file.name] = entry

    # Pass 2: reserve and upload, in the batch's order.
    if stopped is None:
        for file in to_send:
            if file.name in not_approved:
                entries[file.name] = _refused_by_gate(file, transport, not_approved)
                continue
            try:
                entries[file.name] = _reserve_and_send(
                    file, batch, transport, ledger, limits, now, run_id, processing_log
                )
            except _StopBatch as stop:
                entries[file.name] = stopped = stop.entry
                break

    if stopped is not None:
        for file in files:
            if file.name not in entries:
                entries[file.name] = _entry(
                    file,
                    Status.NOT_ATTEMPTED,
                    transport.name,
                    f"batch stopped: {stopped.name} failed with {stopped.message}",
                )
    if retry_policy is not None:
        book = RetryBook(ledger)
        for name, entry in entries.items():
            entries[name] = _schedule_retry(entry, batch, book, retry_policy, now())
    return DeliveryReport(
        batch=batch,
        transport=transport.name,
        entries=[entries[f.name] for f in files],
        usage=ledger.usage(now(), limits),
    )


def _refused_by_gate(
    file: OutgoingFile, transport: Transport, not_approved: dict[str, str]
) -> DeliveryEntry:
    return _entry(file, Status.NOT_APPROVED, transport.name, not_approved[file.name])


def _schedule_retry(
    entry: DeliveryEntry, batch: str, book: RetryBook, policy: RetryPolicy, at: datetime
) -> DeliveryEntry:
    """A transient failure gets its next try (or, out of tries, a person); a delivery
    clears the count."""
    if entry.status in (Status.DELIVERED, Status.RECONCILED):
        book.cleared(entry.name)
        return entry
    if entry.status is not Status.FAILED or not entry.retryable:
        return entry
    state = book.failed(entry.name, batch, entry.message, at, policy)
    if state.next_attempt_at is None:
        return replace(
            entry,
            status=Status.NEEDS_ATTENTION,
            message=f"{entry.message}; failed {state.failures} runs in a row, not retried "
            f"again: fix the cause and run the delivery",
        )
    return replace(
        entry,
        not_before=state.next_attempt_at,
        message=f"{entry.message}; retry {state.failures + 1} of {policy.max_attempts} "
        f"after {state.next_attempt_at.isoformat()}",
    )


def _reserve_and_send(
    file: OutgoingFile,
    batch: str,
    transport: Transport,
    ledger: Ledger,
    limits: QuotaLimits,
    now: Callable[[], datetime],
    run_id: str,
    log: ProcessingLog | None,
) -> DeliveryEntry:
    try:
        decision = ledger.reserve(file, batch, transport.name, now(), limits, run_id)
    except AlreadyTracked as tracked:
        # Another run took the file between our look and the reservation.
        receipt = ledger.receipt(file.name)
        if receipt is not None:
            return _already_delivered(file, receipt)
        return _entry(
            file,
            Status.IN_PROGRESS,
            transport.name,
            f"another run reserved it just now ({tracked}); the next run checks again",
        )
    if decision.action is Action.DEFER:
        return _entry(
            file,
            Status.DEFERRED,
            transport.name,
            decision.reason,
            not_before=decision.not_before,
        )
    if decision.action is Action.REFUSE:
        return _entry(file, Status.REFUSED, transport.name, decision.reason)
    try:
        unrecorded = _unrecorded(file, batch, transport, ledger, log, as_utc(now()))
    except _StopBatch:
        ledger.abandon(file.name)
        raise
    if unrecorded is not None:
        if unrecorded.status not in DONE_STATUSES:
            ledger.abandon(file.name)
        return unrecorded
    return _upload(file, transport, ledger, now)


def _dry_run(
    files: list[OutgoingFile],
    batch: str,
    transport: Transport,
    ledger: Ledger,
    limits: QuotaLimits,
    at: datetime,
    not_approved: dict[str, str],
) -> DeliveryReport:
    current = ledger.usage(at, limits)
    used_files, used_bytes = current.files_this_hour, current.bytes_today
    entries = []
    for file in files:
        receipt = ledger.receipt(file.name)
        if receipt is not None:
            entries.append(_already_delivered(file, receipt))
            continue
        flight = ledger.in_flight_record(file.name)
        if flight is not None:
            entries.append(
                _entry(
                    file,
                    Status.DRY_RUN,
                    transport.name,
                    f"in flight since {flight.started_at.isoformat()}: a real run checks the drop "
                    f"first and sends it only if it provably never landed",
                )
            )
            continue
        if file.name in not_approved:
            entries.append(_refused_by_gate(file, transport, not_approved))
            continue
        decision = decide(file.size, at, used_files, used_bytes, limits)
        if decision.action is Action.DEFER:
            entries.append(
                _entry(
                    file,
                    Status.DEFERRED,
                    transport.name,
                    decision.reason,
                    not_before=decision.not_before,
                )
            )
        elif decision.action is Action.REFUSE:
            entries.append(_entry(file, Status.REFUSED, transport.name, decision.reason))
        else:
            used_files, used_bytes = used_files + 1, used_bytes + file.size
            entries.append(_entry(file, Status.DRY_RUN, transport.name, "would be sent"))
    return DeliveryReport(
        batch=batch, transport=transport.name, entries=entries, usage=current, dry_run=True
    )
