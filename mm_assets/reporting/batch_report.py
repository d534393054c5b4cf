"""One report per batch: "did my audience get to MediaMath?" (no Dagster import).

Assembled from what the steps leave behind, never from a run's logs:

- the work folder (`BatchWork`): the read step's `ReadSummary` (rows read, accepted,
  quarantined by reason, per input file) and the merge's `MergeSummary` (users and loads per
  client and cookie/mobile family);
- the outbox manifest: the built files, their bytes and md5, when they were built;
- the delivery ledger: receipts (when, how, where each file was sent), in-flight rows, retry
  schedules, and the quota use of the current windows (S2S-QUOTA);
- the processing-log status store: MediaMath's verdict and message per file (S2S-LOG).

What is not sent yet is projected with the quota arithmetic (`core/quota.py`), as the next
delivery would decide it: fits now, deferred until the next hour or day, retried after its
backoff, or waiting for a person. The Dagster layer turns the same report into table metadata
(`batch_report` asset); `mm-assets status` renders it as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from mm_assets.core.batch_work import BatchWork, MergeSummary, ReadSummary, WorkRoots
from mm_assets.core.quota import QuotaLimits, QuotaUsage, decide
from mm_assets.core.s2s_writer import MANIFEST, BuiltFile, read_manifest
from mm_assets.delivery.ledger import Ledger, receipts_table
from mm_assets.delivery.retries import retries_table
from mm_assets.processing_log.polling import batch_verdict, human_duration
from mm_assets.processing_log.status_store import FileStatus, StatusStore


class Delivery:
    """Where a built file stands on its way to MediaMath (the report's `delivery` column)."""

    SENT = "sent"
    IN_FLIGHT = "in_flight"  # an upload started; its outcome is not recorded yet
    FITS_NOW = "not_sent_yet"  # the next delivery sends it: the quota has room
    DEFERRED = "deferred"  # the quota has no room until `not_before` (S2S-QUOTA)
    RETRY = "retry"  # failed for a transient reason; tried again after `not_before`
    NEEDS_PERSON = "needs_attention"  # failed too often; see `mm-assets attention`
    REFUSED = "refused"  # can never go as it is (above a size limit)


@dataclass(frozen=True)
class Family:
    """Users and loads of one client and cookie/mobile family (S2S-NAME, S2S-MOB)."""

    client: str  # "(global)" for global data
    ids: str  # "cookie" or "mobile"
    users: int
    lines: int
    loads: int


@dataclass(frozen=True)
class FileReport:
    """One built file: what it holds, where it went, what MediaMath said."""

    name: str
    client: str
    ids: str
    users: int
    loads: int
    bytes: int
    md5: str
    delivery: str
    transport: str = ""
    sent_at: datetime | None = None
    remote_path: str = ""
    not_before: datetime | None = None  # when it may go (deferred or retried)
    note: str = ""  # why it waits, the last error
    mediamath: str = ""  # the processing-log state: pending, accepted, rejected, ...
    mediamath_message: str = ""
    waited: str = ""  # from upload to MediaMath's answer (or until now)


@dataclass(frozen=True)
class BatchReport:
    batch: str
    now: datetime
    built_at: datetime | None
    rows_read: int | None
    rows_accepted: int | None
    rows_quarantined: int | None
    quarantine_reasons: dict[str, int]
    input_files: dict[str, dict[str, int]]  # file -> rows, accepted, quarantined
    unusable_files: list[tuple[str, str, bool]]  # file, problem, makes the batch incomplete
    families: list[Family]
    files: list[FileReport]
    superseded: list[FileStatus]  # earlier builds' files MediaMath has (a rebuild renamed them)
    quota: QuotaUsage
    verdict: str  # MediaMath's verdict on the batch's current build, in one sentence
    accepted: bool  # MediaMath accepted every file of the current build

    @property
    def gz_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def users(self) -> int:
        return sum(f.users for f in self.files)

    def count(self, delivery: str) -> int:
        return sum(f.delivery == delivery for f in self.files)

    @property
    def next_send_after(self) -> datetime | None:
        times = [f.not_before for f in self.files if f.not_before is not None]
        return min(times) if times else None

    @property
    def headline(self) -> str:
        """One line: built, sent, MediaMath's verdict."""
        if not self.files:
            if self.rows_read is None:
                return f"{self.batch}: not built"
            return f"{self.batch}: read, no file built"
        sent = self.count(Delivery.SENT)
        parts = [f"{len(self.files)} file(s), {self.gz_bytes:,} gz bytes", f"{sent} sent"]
        waiting = len(self.files) - sent
        if waiting:
            parts.append(f"{waiting} not sent")
        return f"{self.batch}: " + ", ".join(parts) + f"; {self.verdict}"


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _built_at(outbox: Path) -> datetime | None:
    manifest = _load_json(outbox / MANIFEST)
    if not manifest or not manifest.get("built_at"):
        return None
    return datetime.fromisoformat(str(manifest["built_at"]))


def _retries(ledger: Ledger, batch: str) -> dict[str, tuple[int, str, datetime | None]]:
    """file -> (failed runs, last error, next attempt) from the retry book's table."""
    t = retries_table
    with ledger.engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return {}
        rows = conn.execute(
            sa.select(t.c.file_name, t.c.failures, t.c.last_error, t.c.next_attempt_at).where(
                t.c.batch == batch
            )
        ).all()
    return {
        name: (failures, error, at.replace(tzinfo=UTC) if at else None)
        for name, failures, error, at in rows
    }


def _family_of(built: BuiltFile) -> tuple[str, str]:
    return built.agency or "(global)", "mobile" if built.mobile else "cookie"


def assemble_batch_report(
    work: BatchWork,
    *,
    ledger: Ledger,
    store: StatusStore | None,
    limits: QuotaLimits,
    now: datetime,
) -> BatchReport:
    """The batch's report from its work folder and outbox (`work`), the ledger and the status
    store (None: MediaMath's verdicts unknown here)."""
    batch, outbox = work.batch, work.outbox
    raw = work.load_if_any(ReadSummary)
    merged = work.load_if_any(MergeSummary)
    built = read_manifest(outbox) if (outbox / MANIFEST).is_file() else []
    receipts = {r.file_name: r for r in ledger.receipts(batch)}
    flying = {f.file_name: f for f in ledger.in_flight(batch)}
    retries = _retries(ledger, batch)
    usage = ledger.usage(now, limits)
    statuses = store.batch(batch) if store is not None else []
    verdict = batch_verdict(statuses, now)
    current = {s.file_name: s for s in verdict.current}
    names = {b.name for b in built}
    # Projected as the next delivery would decide: each file that fits takes its room.
    files_used, bytes_used = usage.files_this_hour, usage.bytes_today
    files: list[FileReport] = []
    for b in built:
        client, ids = _family_of(b)
        receipt, status = receipts.get(b.name), current.get(b.name)
        common = {
            "name": b.name,
            "client": client,
            "ids": ids,
            "users": b.users,
            "loads": b.loads,
            "bytes": b.bytes,
            "md5": b.md5,
            "mediamath": str(status.status) if status else "",
            "mediamath_message": (status.message or status.last_error) if status else "",
            "waited": human_duration(status.waited(now)) if status and status.uploaded_at else "",
        }
        if receipt is not None and receipt.md5 == b.md5:
            files.append(
                FileReport(
                    **common,
                    delivery=Delivery.SENT,
                    transport=receipt.transport,
                    sent_at=receipt.uploaded_at,
                    remote_path=receipt.remote_path,
                )
            )
            continue
        if receipt is not None:
            # deliver_batch never sends a name twice (S2S-HDR FileIdentifier is unique).
            files.append(
                FileReport(
                    **common,
                    delivery=Delivery.NEEDS_PERSON,
                    transport=receipt.transport,
                    note=f"a file named {b.name} with other bytes was sent "
                    f"{_when(receipt.uploaded_at)}; rebuild the batch for new names",
                )
            )
            continue
        if b.name in flying:
            flight = flying[b.name]
            files.append(
                FileReport(
                    **common,
                    delivery=Delivery.IN_FLIGHT,
                    transport=flight.transport,
                    note=f"upload started {flight.started_at.isoformat()}",
                )
            )
            continue
        if b.name in retries:
            failures, error, at = retries[b.name]
            files.append(
                FileReport(
                    **common,
                    delivery=Delivery.RETRY if at else Delivery.NEEDS_PERSON,
                    not_before=at,
                    note=f"{failures} failed run(s): {error}",
                )
            )
            continue
        decision = decide(b.bytes, now, files_used, bytes_used, limits)
        if decision.send:
            files_used, bytes_used = files_used + 1, bytes_used + b.bytes
            files.append(FileReport(**common, delivery=Delivery.FITS_NOW, note=decision.reason))
        else:
            files.append(
                FileReport(
                    **common,
                    delivery=Delivery.DEFERRED if decision.defer else Delivery.REFUSED,
                    not_before=decision.not_before,
                    note=decision.reason,
                )
            )
    return BatchReport(
        batch=batch,
        now=now,
        built_at=_built_at(outbox),
        rows_read=raw.rows_read if raw else None,
        rows_accepted=raw.rows_accepted if raw else None,
        rows_quarantined=raw.rows_quarantined if raw else None,
        quarantine_reasons=dict(raw.quarantine_reasons) if raw else {},
        input_files=dict(raw.files) if raw else {},
        unusable_files=list(raw.unusable_files) if raw else [],
        families=[
            Family(client=f.agency, ids=f.ids, users=f.users, lines=f.lines, loads=f.loads)
            for f in (merged.families if merged else [])
        ],
        files=files,
        superseded=[s for s in statuses if s.file_name not in names],
        quota=usage,
        verdict=verdict.description,
        accepted=verdict.passed,
    )


def known_batches(roots: WorkRoots, ledger: Ledger) -> list[str]:
    """Every batch with a trace here (work folder, outbox or receipts), latest activity last:
    the build time in its manifest, else its folders' modification time."""
    found = roots.batches_present()
    with ledger.engine.connect() as conn:
        r = receipts_table.c
        for batch, last in conn.execute(
            sa.select(r.batch, sa.func.max(r.uploaded_at)).group_by(r.batch)
        ).all():
            if isinstance(last, datetime):
                stamp = last.replace(tzinfo=UTC).timestamp()
                found[batch] = max(found.get(batch, 0.0), stamp)
    for batch in found:
        built_at = _built_at(roots.batch(batch).outbox)
        if built_at is not None:
            found[batch] = max(found[batch], built_at.timestamp())
    return sorted(found, key=lambda b: (found[b], b))


# -- rendering (terminal) -----------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _columns(rows: Iterable[Iterable[object]], indent: str = "  ") -> list[str]:
    """Left-aligned text columns, numbers right-aligned, two spaces apart."""
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    out = []
    for row in cells:
        padded = [
            cell.rjust(w) if cell.replace(",", "").isdigit() else cell.ljust(w)
            for cell, w in zip(row, widths, strict=True)
        ]
        out.append((indent + "  ".join(padded)).rstrip())
    return out


def render_rows_and_families(report: BatchReport) -> list[str]:
    """Rows read and quarantined (by reason), users and loads per client and family."""
    if report.rows_read is None:
        return ["  not read yet (no raw_audiences report in the work folder)"]
    lines = [
        f"  rows read {report.rows_read:,}: {report.rows_accepted:,} accepted, "
        f"{report.rows_quarantined:,} quarantined"
    ]
    lines += _columns(
        [[count, reason] for reason, count in report.quarantine_reasons.items()], "      "
    )
    lines += [
        f"  unusable file {name}: {problem}" + (" (batch incomplete)" if blocks else "")
        for name, problem, blocks in report.unusable_files
    ]
    if report.families:
        lines.append("  users and loads per client and family:")
        lines += _columns(
            [["client", "ids", "users", "loads"]]
            + [[f.client, f.ids, f.users, f.loads] for f in report.families],
            "    ",
        )
    return lines


def render_built_files(outbox: Path) -> list[str]:
    """The files of a build by name, with their family, users and bytes (end of `build`)."""
    if not (outbox / MANIFEST).is_file():
        return ["  no file built"]
    rows: list[list[object]] = [["file", "ids", "users", "gz_bytes"]]
    rows += [[b.name, _family_of(b)[1], b.users, b.bytes] for b in read_manifest(outbox)]
    return _columns(rows)


def render_files(report: BatchReport) -> list[str]:
    """The built files by name, with bytes, how and when each was sent, what MediaMath said."""
    if not report.files:
        return ["  no file built"]
    rows: list[list[object]] = [
        ["file", "ids", "users", "gz_bytes", "delivery", "sent_at", "transport", "mediamath"]
    ]
    for f in report.files:
        when = _when(f.sent_at) or (f"after {_when(f.not_before)}" if f.not_before else "")
        said = f.mediamath or "-"
        if f.mediamath_message and f.mediamath_message != "OK":
            said += f": {f.mediamath_message}"
        rows.append(
            [f.name, f.ids, f.users, f.bytes, f.delivery, when or "-", f.transport or "-", said]
        )
    return _columns(rows)


def render_quota(report: BatchReport) -> list[str]:
    q = report.quota
    lines = [
        f"  quota (S2S-QUOTA): {q.files_this_hour} of {q.limits.files_per_hour} files this hour "
        f"(resets {_when(q.hour_end)}), {q.bytes_today:,} of {q.limits.bytes_per_day:,} "
        f"gz bytes today (resets {_when(q.day_end)})"
    ]
    waiting = [f for f in report.files if f.delivery != Delivery.SENT]
    for f in waiting:
        until = f" until {_when(f.not_before)}" if f.not_before else ""
        lines.append(f"    {f.name}: {f.delivery}{until}: {f.note}")
    return lines


def render_batch_report(report: BatchReport) -> str:
    """The whole report as text (`mm-assets status BATCH`)."""
    built = f", built {_when(report.built_at)}" if report.built_at else ""
    lines = [f"batch {report.batch}{built}", "input:"]
    lines += render_rows_and_families(report)
    lines.append("files:")
    lines += render_files(report)
    if report.superseded:
        lines.append(f"  (+{len(report.superseded)} file(s) of earlier builds, superseded)")
    lines.append(f"mediamath: {report.verdict}")
    lines += render_quota(report)
    return "\n".join(lines)
