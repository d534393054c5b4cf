"""Discovery for the methods whose listing must not run in a sensor tick (no tick blocks on a
remote system): a scheduled run does the slow part, the `moloco_export_batches` sensor the
cheap one.

* `sts` (MCM-STS): the sensor lists our own bucket. The run starts the Storage Transfer job
  (created once, reused: `StorageTransferRunner`) and waits for it; its completion is what
  turns Moloco's new batches into partitions on the next tick.
* `dkr` (MCM-DKR): a listing needs a freshly rotated key, which may take 60 s to activate and
  must stay >= 1 minute from the previous rotation. The run rotates (under the rotation lock)
  and lists, and writes the listing to a snapshot file the sensor reads instead.

Turn the schedule on with `sts` or `dkr` (it is off by default: `local` and `wif` need none).
"""

import json
import os
from pathlib import Path

import dagster as dg

from mm_assets.clients.moloco_export.listing import ExportObject
from mm_assets.defs.moloco_source.resources import MolocoExportSource
from mm_assets.defs.resources import BatchStorage

LISTING_SNAPSHOT = "export_listing.json"
SNAPSHOT_METHODS = ("dkr",)  # methods whose sensor reads the snapshot, never the bucket


def snapshot_path(source: MolocoExportSource) -> Path:
    return Path(source.state_dir) / LISTING_SNAPSHOT


def write_listing_snapshot(
    source: MolocoExportSource, batches: dict[str, list[ExportObject]]
) -> None:
    """Replace the snapshot atomically (the sensor reads a whole listing or the previous one)."""
    path = snapshot_path(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps({b: [vars(o) for o in objects] for b, objects in batches.items()}))
    os.replace(temp, path)


def read_listing_snapshot(source: MolocoExportSource) -> dict[str, list[ExportObject]] | None:
    """The last listing a discovery run made; None before the first one."""
    try:
        data = json.loads(snapshot_path(source).read_text())
    except FileNotFoundError:
        return None
    return {b: [ExportObject(**o) for o in objects] for b, objects in data.items()}


@dg.op(
    description="sts: run the Storage Transfer job into our own bucket and wait for it; dkr: "
    "rotate a key, list the export and write the listing snapshot."
)
def discover_export_batches(
    context: dg.OpExecutionContext, moloco_source: MolocoExportSource, storage: BatchStorage
) -> dg.Output[None]:
    method = moloco_source.normalised_method
    if method == "sts":
        result = moloco_source.transfer_runner(context.log.info).run()
        metadata = {
            "transfer_job": result.job_name,
            "transfer_operation": result.operation,
            "objects_copied": result.objects_copied,
            "bytes_copied": result.bytes_copied,
        }
    elif method in SNAPSHOT_METHODS:
        batches = moloco_source.list_batches(storage.export_dir)
        write_listing_snapshot(moloco_source, batches)
        metadata = {"batches_listed": len(batches)}
    else:
        raise dg.Failure(
            f"MM_MOLOCO_METHOD is {moloco_source.method!r}: discovery runs are for `sts` and "
            f"`dkr` only (the sensor lists this method itself); turn the schedule off"
        )
    return dg.Output(None, metadata=metadata)


@dg.job(description="Find new Moloco batches where a sensor tick must not (MCM-STS, MCM-DKR).")
def moloco_export_discovery() -> None:
    discover_export_batches()


moloco_export_discovery_schedule = dg.ScheduleDefinition(
    name="moloco_export_discovery_schedule",
    job=moloco_export_discovery,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every 15 minutes with MM_MOLOCO_METHOD=sts or dkr: the transfer or the "
    "listing whose result the moloco_export_batches sensor then reads.",
)
