"""Ask the places that know before sending a file the ledger cannot vouch for.

The ledger's receipts are not the only memory of what MediaMath has: the ledger file can be
lost, and a run killed between upload and receipt leaves only an in-flight row. Before such a
file is sent (again), the places that know are asked:

- the transport (`Transport.lookup`): the CFT bucket keeps every object, so there "absent"
  proves the file never landed; the SFTP drop is emptied by MediaMath after reading, so there
  only "present" proves anything, plus our own temporaries (an upload that died before its
  rename);
- MediaMath's processing log (S2S-LOG), by `filename`: a record means MediaMath has the file,
  whatever the drop shows now.

A name MediaMath already has is never sent again (FileIdentifier must be unique, S2S-HDR).
Quota use is rebuilt the same way: uploads the processing log reports for today that the
ledger never recorded count against the quota (S2S-QUOTA).

No Dagster import (DESIGN.md, layer 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from mm_assets.clients.mediamath_processing_log import LogRecord, ProcessingLogError
from mm_assets.clients.transport import OutgoingFile, Transport
from mm_assets.core.quota import day_window
from mm_assets.core.s2s_format import SUFFIX
from mm_assets.delivery.ledger import Ledger

logger = logging.getLogger(__name__)


class ProcessingLog(Protocol):
    """The part of `ProcessingLogClient` reconciliation uses (S2S-LOG)."""

    def file_records(self, filename: str) -> list[LogRecord]: ...

    def records_between(self, start: datetime, end: datetime | None = None) -> list[LogRecord]: ...


class Verdict(StrEnum):
    HAS_IT = "has_it"  # MediaMath has the file under its name, at its size
    HAS_OTHER_BYTES = "has_other_bytes"  # the name is taken by a file of another size
    NEVER_LANDED = "never_landed"  # proven absent: safe to send
    UNKNOWN = "unknown"  # nothing proves either way


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    where: str  # who said so
    detail: str
    landed_at: datetime | None = None


def find(file: OutgoingFile, transport: Transport, log: ProcessingLog | None) -> Finding:
    """What MediaMath has of `file` (raises the transport's DeliveryError when it cannot look)."""
    seen = transport.lookup(file.name)
    drop = "the CFT bucket" if seen.absent_is_proof else f"the {transport.name} drop"
    if seen.size == file.size:
        return Finding(Verdict.HAS_IT, drop, f"in {drop} at full size", seen.landed_at)
    if seen.size is not None:
        return Finding(
            Verdict.HAS_OTHER_BYTES,
            drop,
            f"{drop} holds {seen.size} bytes under this name, expected {file.size}",
        )
    log_problem = ""
    if log is not None:
        try:
            records = log.file_records(file.name)
        except ProcessingLogError as exc:
            records, log_problem = [], f"; the processing log could not be read ({exc})"
        if records:
            times = [r.timestamp for r in records if r.timestamp is not None]
            said = records[-1].text or "a record"
            return Finding(
                Verdict.HAS_IT,
                "MediaMath's processing log",
                f"MediaMath's processing log has it ({said!r})",
                min(times) if times else None,
            )
    if seen.absent_is_proof:
        return Finding(Verdict.NEVER_LANDED, drop, f"not in {drop}, which keeps every file")
    if seen.temporaries:
        # Each attempt renames its own temporary (then returns) or leaves it: a temporary still
        # there means the last upload of this name died before its rename.
        return Finding(
            Verdict.NEVER_LANDED,
            drop,
            f"only our temporary {seen.temporaries[0]} is in {drop}: the upload died before "
            f"its rename",
        )
    asked = " nor in MediaMath's processing log" if log is not None else ""
    return Finding(
        Verdict.UNKNOWN,
        drop,
        f"not in {drop}{asked}; MediaMath empties the drop after reading, so it may still "
        f"have landed{log_problem}",
    )


def rebuild_usage(ledger: Ledger, log: ProcessingLog, now: datetime) -> int:
    """Count today's uploads the processing log reports but the ledger never recorded
    (S2S-QUOTA; e.g. after the ledger file was lost). Returns how many were new.

    The log gives no sizes: such uploads count as files this hour with 0 bytes, unless the
    same file is later found and given a receipt (which counts its bytes).
    """
    day_start, _ = day_window(now)
    added = 0
    for record in log.records_between(day_start):
        name = record.filename
        if not name or not name.endswith(SUFFIX) or ledger.receipt(name) is not None:
            continue
        if ledger.observe(name, 0, record.timestamp or now, "processing log"):
            added += 1
    if added:
        logger.warning(
            "the processing log reports %d upload(s) today the ledger has no receipt for; "
            "counted against the quota",
            added,
        )
    return added
