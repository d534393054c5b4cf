"""`moloco_export_batches`: a run per new (or rewritten) complete batch of the Moloco export.

Each tick lists the export prefix (paged), groups objects into batches (first path segment) and
asks for at most `max_runs_per_tick` runs, oldest batch names first; the rest wait for the next
tick. A batch is **complete** when it has a `_SUCCESS` marker, or else when nothing in it has
changed for `MM_MOLOCO_QUIET_PERIOD` seconds (by the store's clock or by the sensor's).

The cursor is a small JSON, not a list of objects:

* `seen`: batch -> [version fingerprint, newest object time, data object count] of the
  version a run was requested for. A batch whose fingerprint is unchanged is skipped. A changed
  fingerprint is a **new version** (rewritten object: new generation/ETag; added object) only if
  an object is newer than the recorded time or the count did not shrink; a batch that only lost
  objects (its `_SUCCESS` marker or last file deleted) is not run again.
* `pending`: batch -> [fingerprint, first seen] for incomplete batches (the quiet period).
* `floor`: the high-water mark below which batches were dropped from `seen` to keep the cursor
  bounded; a batch not in `seen` whose newest object is not newer than `floor` was done before.
* `hwm`: the newest object time of any version a run was requested for.

Listing errors are sorted: transient ones (network, 5xx, 429) skip the tick with the reason;
credential errors (refused, expired, legacy configuration) fail the tick so it shows red.
"""

import json
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mm_assets.clients.moloco_export.errors import (
    CredentialError,
    TransientSourceError,
)
from mm_assets.clients.moloco_export.listing import (
    ExportObject,
    batch_fingerprint,
    has_success_marker,
)
from mm_assets.clients.redaction import redact
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.partitions import register_export_batch
from mm_assets.defs.resources import BatchStorage
from mm_assets.defs.s2s_build.jobs import build_s2s_files_job

MAX_SEEN = 5000


@dataclass
class Plan:
    run_requests: list[tuple[str, str]]  # (batch, version fingerprint)
    new_batches: list[str]
    cursor: dict[str, Any]
    waiting: list[str]  # incomplete batches (quiet period not over)
    deferred: int  # complete batches left for the next tick (per-tick bound)


def load_cursor(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {
        "v": 1,
        "seen": dict(data.get("seen", {})),
        "pending": dict(data.get("pending", {})),
        "floor": float(data.get("floor", 0.0)),
        "hwm": float(data.get("hwm", 0.0)),
    }


def plan_batches(
    batches: dict[str, list[ExportObject]],
    cursor: dict[str, Any],
    *,
    now: float,
    quiet_period_s: float,
    max_runs: int,
) -> Plan:
    """Pure decision of one tick (no Dagster, no I/O): which batch versions to run."""
    seen: dict[str, list[Any]] = cursor["seen"]
    pending: dict[str, list[Any]] = {}
    runs: list[tuple[str, str]] = []
    new_batches: list[str] = []
    waiting: list[str] = []
    deferred = 0
    for batch in sorted(batches):
        objects = batches[batch]
        data = [o for o in objects if not o.is_marker]
        if not data:
            continue
        fp = batch_fingerprint(data)
        newest = max(o.updated for o in data)
        known = seen.get(batch)
        if known is None and newest <= cursor["floor"]:
            continue  # dropped from the bounded cursor long ago: done then
        if known is not None:
            old_fp, old_newest, old_count = known[0], float(known[1]), int(known[2])
            if fp == old_fp:
                continue
            if newest <= old_newest and len(data) < old_count:
                # Only deletions (e.g. the `_SUCCESS` marker or the last object the cursor
                # saw): not a new version; remember the shape so it stays quiet.
                seen[batch] = [fp, old_newest, len(data)]
                continue
        first_seen = now
        previous = cursor["pending"].get(batch)
        if previous and previous[0] == fp:
            first_seen = float(previous[1])
        complete = (
            has_success_marker(objects)
            or now - newest >= quiet_period_s
            or now - first_seen >= quiet_period_s
        )
        if not complete:
            pending[batch] = [fp, first_seen]
            waiting.append(batch)
            continue
        if len(runs) >= max_runs:
            pending[batch] = [fp, first_seen]
            deferred += 1
            continue
        runs.append((batch, fp))
        if known is None:
            new_batches.append(batch)
        seen[batch] = [fp, newest, len(data)]
        cursor["hwm"] = max(cursor["hwm"], newest)
    for batch in [b for b in seen if b not in batches]:
        del seen[batch]  # the whole batch is gone from the export
    if len(seen) > MAX_SEEN:
        oldest = sorted(seen, key=lambda b: float(seen[b][1]))[: len(seen) - MAX_SEEN]
        cursor["floor"] = max([cursor["floor"]] + [float(seen[b][1]) for b in oldest])
        for batch in oldest:
            del seen[batch]
    cursor["pending"] = pending
    return Plan(runs, new_batches, cursor, waiting, deferred)


@dg.sensor(
    job=build_s2s_files_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def moloco_export_batches(
    context: dg.SensorEvaluationContext,
    moloco_source: MolocoExportSource,
    storage: BatchStorage,
) -> dg.SensorResult | dg.SkipReason:
    """One run per new complete batch version of the Moloco export (see module docstring)."""
    # Imported here: transfer.py defines a job over the same resources.
    from mm_assets.defs.moloco_source.transfer import SNAPSHOT_METHODS, read_listing_snapshot

    try:
        if moloco_source.normalised_method in SNAPSHOT_METHODS:
            # dkr: listing needs a key rotation (up to 60 s): a discovery run lists, not a tick.
            snapshot = read_listing_snapshot(moloco_source)
            if snapshot is None:
                return dg.SkipReason(
                    "no listing yet: the moloco_export_discovery job lists the export "
                    "(turn its schedule on)"
                )
            batches = snapshot
        else:
            batches = moloco_source.list_batches(storage.export_dir)
    except TransientSourceError as exc:
        return dg.SkipReason(
            f"listing the export failed, retrying next tick: "
            f"{redact(str(exc), moloco_source.secrets())}"
        )
    except CredentialError as exc:
        raise CredentialError(redact(str(exc), moloco_source.secrets())) from None
    cursor = load_cursor(context.cursor)
    plan = plan_batches(
        batches,
        cursor,
        now=time.time(),
        quiet_period_s=float(moloco_source.quiet_period),
        max_runs=max(1, int(moloco_source.max_runs_per_tick)),
    )
    new_cursor = json.dumps(plan.cursor, sort_keys=True, separators=(",", ":"))
    if not plan.run_requests:
        context.update_cursor(new_cursor)
        reason = f"no new complete batch ({len(batches)} batches listed"
        if plan.waiting:
            reason += f"; waiting for the quiet period: {', '.join(plan.waiting[:10])}"
        return dg.SkipReason(reason + ")")
    for batch in plan.new_batches:
        # Added here, not as the result's dynamic_partitions_requests: `mm-assets build` may
        # add the same new batch at this moment, and the daemon's insert would then fail the
        # tick (see register_export_batch).
        register_export_batch(context.instance, batch)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=batch,
                run_key=f"{batch}@{fp}",
                tags={"mm_assets/moloco_batch_version": fp},
            )
            for batch, fp in plan.run_requests
        ],
        cursor=new_cursor,
    )
