"""MediaMath's quotas across batches, as the `mediamath_quota` asset shows them over time
(S2S-QUOTA: 20 files per clock hour, 5 GB gz per UTC day). No Dagster import.

Used is the ledger's count (receipts, in-flight rows, uploads seen in MediaMath's log). Waiting
is every built file of every batch in the outbox without a receipt; of those, deferred is what
the quota holds back now, projected as the next delivery would decide (`core/quota.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mm_assets.core.quota import QuotaLimits, QuotaUsage, decide
from mm_assets.core.s2s_writer import MANIFEST, read_manifest
from mm_assets.delivery.ledger import Ledger

# The smallest file there is: "room" for one more file means room for this one at least.
_ONE_FILE = 1


@dataclass(frozen=True)
class QuotaSnapshot:
    usage: QuotaUsage
    files_waiting: int  # built, no receipt (any batch)
    bytes_waiting: int
    files_deferred: int  # of those, held back by the quota now
    bytes_deferred: int
    next_window_with_room: datetime  # `now` when one more file may go now

    @property
    def now(self) -> datetime:
        return self.usage.now


def waiting_files(outbox_dir: Path, ledger: Ledger) -> list[tuple[str, int]]:
    """(name, gz bytes) of every built file of the outbox's batches that has no receipt for
    its bytes, oldest batch first."""
    root = Path(outbox_dir)
    if not root.is_dir():
        return []
    batches = sorted(
        (p for p in root.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith(".")),
        key=lambda p: ((p / MANIFEST).stat().st_mtime, p.name),
    )
    waiting = []
    for outbox in batches:
        receipts = {r.file_name: r.md5 for r in ledger.receipts(outbox.name)}
        waiting += [
            (f.name, f.bytes) for f in read_manifest(outbox) if receipts.get(f.name) != f.md5
        ]
    return waiting


def quota_snapshot(
    ledger: Ledger, limits: QuotaLimits, now: datetime, waiting: Iterable[tuple[str, int]]
) -> QuotaSnapshot:
    """Where the windows stand at `now`, and what of `waiting` they hold back."""
    usage = ledger.usage(now, limits)
    files_used, bytes_used = usage.files_this_hour, usage.bytes_today
    n_waiting = b_waiting = n_deferred = b_deferred = 0
    for _name, size in waiting:
        n_waiting, b_waiting = n_waiting + 1, b_waiting + size
        decision = decide(size, now, files_used, bytes_used, limits)
        if decision.send:
            files_used, bytes_used = files_used + 1, bytes_used + size
        else:
            n_deferred, b_deferred = n_deferred + 1, b_deferred + size
    room = decide(_ONE_FILE, now, usage.files_this_hour, usage.bytes_today, limits)
    return QuotaSnapshot(
        usage=usage,
        files_waiting=n_waiting,
        bytes_waiting=b_waiting,
        files_deferred=n_deferred,
        bytes_deferred=b_deferred,
        next_window_with_room=room.not_before or usage.now,
    )
