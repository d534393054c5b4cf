"""MediaMath upload quotas (S2S-QUOTA, CFT-SAME): pure arithmetic, no I/O.

Windows (S2S-QUOTA): the file count resets on every UTC clock hour, the byte total at
midnight UTC. Callers pass how much of the current windows is already used; the delivery
ledger derives that from its receipts and in-flight records.

Units: the vendor writes "4 GB" and "5 GB" without saying decimal or binary. We read them
as decimal (10**9), the smaller reading, so that we can never overshoot whichever one
MediaMath enforces: 4 * 10**9 bytes per file and 5 * 10**9 bytes per UTC day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

GB = 10**9  # decimal on purpose: see the module docstring
# S2S-QUOTA's limits, defined here once and used by every unit (writer, clients, resources).
MAX_FILE_BYTES = 4 * GB  # per gzipped file
BYTES_PER_DAY = 5 * GB  # gzipped, per UTC day
FILES_PER_HOUR = 20  # per UTC clock hour

# Rule names the messages cite, so an operator can look them up in spec/README.md.
RULE = "S2S-QUOTA"


@dataclass(frozen=True)
class QuotaLimits:
    """The S2S quotas (S2S-QUOTA; CFT-SAME applies the same ones to Cloud File Transfer).

    Sizes are gzipped bytes in decimal units (1 GB = 10**9 bytes), the conservative reading
    of the vendor's "GB". CFT-PUT's own 5 GB object limit is above the 4 GB file limit, so
    one set of limits serves both transports.
    """

    files_per_hour: int = FILES_PER_HOUR
    bytes_per_day: int = BYTES_PER_DAY
    max_file_bytes: int = MAX_FILE_BYTES

    def __post_init__(self) -> None:
        for field in ("files_per_hour", "bytes_per_day", "max_file_bytes"):
            if getattr(self, field) < 1:
                raise ValueError(f"QuotaLimits.{field} must be at least 1")


class Action(StrEnum):
    SEND = "send"
    DEFER = "defer"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    """What to do with one file now.

    `not_before` is set only for DEFER: the first instant at which the file fits, assuming
    nothing else is sent meanwhile.
    """

    action: Action
    reason: str
    not_before: datetime | None = None

    @property
    def send(self) -> bool:
        return self.action is Action.SEND

    @property
    def defer(self) -> bool:
        return self.action is Action.DEFER

    @property
    def refuse(self) -> bool:
        return self.action is Action.REFUSE


@dataclass(frozen=True)
class QuotaUsage:
    """Where the current windows stand, for display (asset metadata, logs)."""

    now: datetime
    hour_start: datetime
    hour_end: datetime
    day_start: datetime
    day_end: datetime
    files_this_hour: int
    files_left_this_hour: int
    bytes_today: int
    bytes_left_today: int
    limits: QuotaLimits
    in_flight_files: int = 0  # already included in the used counts above

    def as_dict(self) -> dict[str, int | str]:
        return {
            "files_this_hour": self.files_this_hour,
            "files_left_this_hour": self.files_left_this_hour,
            "files_per_hour": self.limits.files_per_hour,
            "hour_resets_at": self.hour_end.isoformat(),
            "bytes_today": self.bytes_today,
            "bytes_left_today": self.bytes_left_today,
            "bytes_per_day": self.limits.bytes_per_day,
            "day_resets_at": self.day_end.isoformat(),
            "in_flight_files": self.in_flight_files,
        }


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; naive datetimes are refused because their zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime {moment.isoformat()} has no time zone; pass an aware one")
    return moment.astimezone(UTC)


def hour_window(now: datetime) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of the UTC clock hour holding `now`."""
    start = as_utc(now).replace(minute=0, second=0, microsecond=0)
    return start, start + timedelta(hours=1)


def day_window(now: datetime) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of the UTC day holding `now`."""
    start = as_utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def usage(
    now: datetime,
    used_files_this_hour: int,
    used_bytes_today: int,
    limits: QuotaLimits,
    in_flight_files: int = 0,
) -> QuotaUsage:
    """What is used and left in the windows holding `now`."""
    hour_start, hour_end = hour_window(now)
    day_start, day_end = day_window(now)
    return QuotaUsage(
        now=as_utc(now),
        hour_start=hour_start,
        hour_end=hour_end,
        day_start=day_start,
        day_end=day_end,
        files_this_hour=used_files_this_hour,
        files_left_this_hour=max(0, limits.files_per_hour - used_files_this_hour),
        bytes_today=used_bytes_today,
        bytes_left_today=max(0, limits.bytes_per_day - used_bytes_today),
        limits=limits,
        in_flight_files=in_flight_files,
    )


def decide(
    file_size: int,
    now: datetime,
    used_files_this_hour: int,
    used_bytes_today: int,
    limits: QuotaLimits,
) -> Decision:
    """Send, defer or refuse a file of `file_size` gzipped bytes at `now` (S2S-QUOTA).

    Refuse when the file can never go (above the per-file or the daily limit). Defer to the
    next midnight UTC when the day's bytes are short (midnight also starts a new hour, so
    it frees both), else to the next hour when only the hour's file count is spent.
    """
    if file_size < 0:
        raise ValueError("file_size must not be negative")
    if used_files_this_hour < 0 or used_bytes_today < 0:
        raise ValueError("used quota must not be negative")
    if file_size > limits.max_file_bytes:
        return Decision(
            Action.REFUSE,
            f"{file_size} bytes is above the per-file limit of {limits.max_file_bytes} "
            f"bytes ({RULE}); split the file",
        )
    if file_size > limits.bytes_per_day:
        return Decision(
            Action.REFUSE,
            f"{file_size} bytes is above the daily limit of {limits.bytes_per_day} "
            f"bytes ({RULE}); split the file",
        )
    hour_start, hour_end = hour_window(now)
    _, day_end = day_window(now)
    if used_bytes_today + file_size > limits.bytes_per_day:
        return Decision(
            Action.DEFER,
            f"daily quota: {used_bytes_today} of {limits.bytes_per_day} bytes used today, "
            f"{file_size} more do not fit ({RULE}); the day resets at midnight UTC",
            not_before=day_end,
        )
    if used_files_this_hour >= limits.files_per_hour:
        return Decision(
            Action.DEFER,
            f"hourly quota: {used_files_this_hour} of {limits.files_per_hour} files used in "
            f"the hour from {hour_start:%H:%M} UTC ({RULE}); the hour resets on the hour",
            not_before=hour_end,
        )
    return Decision(
        Action.SEND,
        f"fits: file {used_files_this_hour + 1} of {limits.files_per_hour} this hour, "
        f"{used_bytes_today + file_size} of {limits.bytes_per_day} bytes today",
    )
