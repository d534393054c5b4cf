"""Ask MediaMath about pending files and turn a batch's rows into one verdict (S2S-LOG).

No Dagster import: the check and the sensor both call these, and tests call them alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mm_assets.clients.mediamath_processing_log import (
    Outcome,
    ProcessingLogClient,
    ProcessingLogUnavailable,
)
from mm_assets.processing_log.status_store import FileState, FileStatus, StatusStore

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

TABLE_COLUMNS = [
    "attempt",
    "name",
    "bytes",
    "transport",
    "uploaded_at",
    "mediamath_status",
    "message",
    "waited",
    "polls",
    "current",
]


def parse_duration(text: str) -> timedelta:
    """`6h`, `30m`, `90s`, `1d`, `1h30m` or plain seconds."""
    cleaned = text.strip().replace(" ", "")
    parts = _DURATION_RE.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(f"not a duration: {text!r} (use e.g. 6h, 30m, 90s)")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts))


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


@dataclass(frozen=True)
class PollSettings:
    deadline: timedelta
    poll_interval: timedelta
    max_poll_interval: timedelta


def next_interval(settings: PollSettings, polls: int) -> timedelta:
    """Exponential spacing between polls of one file: MediaMath takes minutes to hours."""
    factor = 2 ** min(max(polls - 1, 0), 16)
    return min(settings.poll_interval * factor, settings.max_poll_interval)


def poll_file(
    client: ProcessingLogClient, status: FileStatus, now: datetime, settings: PollSettings
) -> FileStatus:
    """Ask once about a pending file; past its deadline with no answer it is timed out.

    `ProcessingLogUnavailable` is recorded on the row (the file stays pending);
    `ProcessingLogCredentialsError` propagates: no other file would fare better.
    """
    if status.status is not FileState.PENDING or status.uploaded_at is None:
        return status
    deadline_at = status.uploaded_at + settings.deadline
    polls = status.polls + 1
    updated = replace(
        status,
        polls=polls,
        last_checked_at=now,
        deadline_at=deadline_at,
        next_check_at=now + next_interval(settings, polls),
    )
    try:
        outcome = client.outcome(status.file_name)
    except ProcessingLogUnavailable as exc:
        updated = replace(updated, last_error=str(exc))
    else:
        updated = replace(
            updated, last_error="", raw_records=outcome.raw_records, message=outcome.message
        )
        if outcome.status is Outcome.ACCEPTED:
            return replace(updated, status=FileState.ACCEPTED, answered_at=now)
        if outcome.status is Outcome.REJECTED:
            return replace(updated, status=FileState.REJECTED, answered_at=now)
    if now >= deadline_at:
        waited = human_duration((now - status.uploaded_at).total_seconds())
        return replace(
            updated,
            status=FileState.TIMED_OUT,
            next_check_at=None,
            message=f"no answer from MediaMath after {waited} (deadline "
            f"{human_duration(settings.deadline.total_seconds())})",
        )
    return updated


def poll_files(
    store: StatusStore,
    client: ProcessingLogClient,
    files: list[FileStatus],
    now: Callable[[], datetime],
    settings: PollSettings,
    give_up_at: float | None = None,
    clock: Callable[[], float] | None = None,
) -> set[str]:
    """Poll `files` and save them; the batches whose files changed state or message.

    Stops at the first file the log could not be read for: the service is down, and asking
    about the others would only spend the retry budget again. They stay due for the next poll.
    """
    changed: set[str] = set()
    for status in files:
        if give_up_at is not None and clock is not None and clock() >= give_up_at:
            break
        updated = poll_file(client, status, now(), settings)
        store.save(updated)
        if (updated.status, updated.message) != (status.status, status.message):
            changed.add(status.batch)
        if updated.last_error and not updated.final:
            break
    return changed


@dataclass(frozen=True)
class BatchVerdict:
    passed: bool
    error: bool  # severity ERROR (a rejection or a time-out) rather than WARN
    description: str
    counts: dict[str, int]
    current: list[FileStatus]
    rows: list[list[object]]
    longest_wait_seconds: float | None


def batch_verdict(rows: list[FileStatus], now: datetime) -> BatchVerdict:
    """One verdict for a batch from its rows: the latest build's files decide; earlier
    attempts (superseded by a rebuild) are listed but no longer count."""
    builds = sorted({r.built_at for r in rows})
    attempt_of = {b: i + 1 for i, b in enumerate(builds)}
    latest = builds[-1] if builds else None
    current = [r for r in rows if r.built_at == latest]
    counts = Counter(str(r.status) for r in current)
    waiting = [r.waited(now) for r in current if r.status is FileState.PENDING]
    longest = max((w for w in waiting if w is not None), default=None)
    table = [
        [
            attempt_of[r.built_at],
            r.file_name,
            r.bytes,
            r.transport,
            r.uploaded_at.isoformat() if r.uploaded_at else "",
            str(r.status),
            r.message or r.last_error,
            human_duration(r.waited(now)),
            r.polls,
            "yes" if r.built_at == latest else "superseded",
        ]
        for r in rows
    ]
    rejected = [r for r in current if r.status is FileState.REJECTED]
    timed_out = [r for r in current if r.status is FileState.TIMED_OUT]
    pending = [r for r in current if r.status is FileState.PENDING]
    undelivered = [r for r in current if r.status is FileState.NOT_DELIVERED]
    n = len(current)
    parts: list[str] = []
    if rejected:
        parts.append(
            f"MediaMath rejected {len(rejected)} of {n} file(s): "
            + "; ".join(f"{r.file_name}: {r.message}" for r in rejected)
        )
    if timed_out:
        parts.append(
            f"{len(timed_out)} file(s) got no answer before the deadline: "
            + ", ".join(r.file_name for r in timed_out)
        )
    if pending:
        parts.append(
            f"{len(pending)} of {n} file(s) waiting for MediaMath's processing log "
            f"(longest {human_duration(longest)})"
        )
    if undelivered:
        parts.append(f"{len(undelivered)} file(s) not delivered yet")
    if not current:
        parts.append("no file of this batch has been delivered yet")
    passed = bool(current) and counts[str(FileState.ACCEPTED)] == n
    if passed:
        parts = [f"MediaMath accepted all {n} file(s)"]
    return BatchVerdict(
        passed=passed,
        error=bool(rejected or timed_out),
        description="; ".join(parts),
        counts=dict(counts),
        current=current,
        rows=table,
        longest_wait_seconds=longest,
    )
