"""The MediaMath S2S audience file format: header, names and line layout.

Rules implemented here are named as in `docs/rules.md`: S2S-HDR (header lines and their
order), S2S-NAME (file names), S2S-LINE / S2S-EFF (one line per user, continued only when a line
of fewer than 8,000 characters cannot hold every load), S2S-SEG (32-bit segment codes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

FORMAT_VERSION = 3
# S2S-LINE: "each line must be fewer than 8,000 characters", counted without the terminating LF
# (as the validator counts them), so the longest line we write has 7,999 characters.
MAX_LINE_CHARS = 7_999
MAX_SEGMENT_CODE = 2_147_483_647  # S2S-SEG
REMOVE = -1  # S2S-TS: remove the user from the segment
NOW = 0  # S2S-TS: add the user at processing time
NAME_PART = re.compile(r"[A-Za-z0-9]+")
STAMP_FORMAT = "%Y%m%d%H%M%S"
SUFFIX = ".log.gz"


class FormatError(ValueError):
    """A value cannot be written in an S2S file."""


@dataclass(frozen=True)
class FileHeader:
    """The S2S-HDR header of one file, rendered in the documented order."""

    file_identifier: str
    date_created: int
    segment_namespace: str
    mobile: bool
    user_namespace: str = "mm"
    user_table_id: str | None = None
    hash_segments: bool = False
    hash_ids: bool = False

    def render(self) -> bytes:
        lines = [
            f"Version: {FORMAT_VERSION}",
            f"FileIdentifier: {self.file_identifier}",
            f"DateCreated: {self.date_created}",
            f"UserNamespace: {self.user_namespace}",
        ]
        # S2S-HDR: UserTableId only outside the mm namespace.
        if self.user_table_id and self.user_namespace != "mm":
            lines.append(f"UserTableId: {self.user_table_id}")
        lines += [f"SegmentNamespace: {self.segment_namespace}", f"Mobile: {int(self.mobile)}"]
        if self.hash_segments:
            lines.append("HashSegments: 1")
        if self.hash_ids:
            lines.append("HashIDs: 1")
        return ("\n".join(lines) + "\n\n").encode()  # S2S-FMT: one blank line ends the header


def sanitise_name_part(raw: str) -> str:
    """Keep only the characters S2S-NAME allows in a name part (`[A-Za-z0-9]`)."""
    return "".join(NAME_PART.findall(raw))


def require_name_part(value: str, what: str) -> str:
    if not NAME_PART.fullmatch(value or ""):
        raise FormatError(f"{what} {value!r} must be letters and digits only (S2S-NAME)")
    return value


def file_name(partner: str, stamp: datetime, agency: str | None = None) -> str:
    """`AgencyName_PartnerName_YYYYMMDDHHMMSS.log.gz`, or without the agency for global data."""
    parts = [agency] if agency else []
    parts += [partner, stamp.astimezone(UTC).strftime(STAMP_FORMAT)]
    return "_".join(parts) + SUFFIX


class FileNameAllocator:
    """Hands out S2S-NAME file names that are unique even within one second.

    The convention leaves no room for a suffix, so a second file for the same agency and
    partner in the same second takes the next free second instead. `taken` holds every name
    already issued (the outbox's name register), so names stay unique across builds.
    """

    def __init__(self, partner: str, taken: Iterable[str], now: datetime) -> None:
        self.partner = require_name_part(partner, "partner name")
        self.taken = set(taken)
        self.start = now.astimezone(UTC).replace(microsecond=0)

    def allocate(self, agency: str | None) -> str:
        stamp = self.start
        while (name := file_name(self.partner, stamp, agency)) in self.taken:
            stamp += timedelta(seconds=1)
        self.taken.add(name)
        return name


def split_user_line(user_id: str, loads: list[str]) -> Iterator[str]:
    """Lay one user's loads out on as few lines as S2S-LINE allows (S2S-EFF).

    Greedy: a load goes on the current line unless it would reach 8,000 characters, so a
    continuation line exists only because the previous one could not hold its first load.
    """
    prefix = len(user_id)
    line: list[str] = []
    length = prefix
    for load in loads:
        extra = 1 + len(load)
        if line and length + extra > MAX_LINE_CHARS:
            yield user_id + " " + " ".join(line)
            line, length = [], prefix
        if prefix + extra > MAX_LINE_CHARS:
            raise FormatError(f"user ID and load {load!r} alone exceed {MAX_LINE_CHARS} chars")
        line.append(load)
        length += extra
    if line:
        yield user_id + " " + " ".join(line)
