"""A code location for the two-batches-at-once test: one job per export batch that takes
delivery slots in the shared ledger (S2S-QUOTA) and then holds the `moloco_key_rotation` pool
and the rotation lease (MCM-DKR), as the real build and delivery do. The daemon loads it
through a workspace file; each run executes in its own process, so everything shared goes
through PostgreSQL or the rendezvous folder named in the environment.
"""

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from mm_assets.clients.moloco_export.key_rotation import DatabaseRotationLock
from mm_assets.clients.transport import OutgoingFile
from mm_assets.core.quota import QuotaLimits
from mm_assets.delivery.ledger import Ledger

RENDEZVOUS_ENV = "MM_TEST_RENDEZVOUS_DIR"
LEDGER_ENV = "MM_TEST_LEDGER_URL"
BATCHES = ("batch_a", "batch_b")
FILES_PER_BATCH = 3
LIMITS = QuotaLimits(files_per_hour=FILES_PER_BATCH)  # room for one batch's files, not two
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WAIT_SECONDS = 180.0  # for the other run to start; far above what a launch takes
HOLD_SECONDS = 1.0  # how long a pool holder keeps the key; a second holder would see it


def _folder() -> Path:
    return Path(os.environ[RENDEZVOUS_ENV])


@dg.op(config_schema={"batch": str})
def reserve_uploads(context: dg.OpExecutionContext) -> str:
    """Wait until both batches' runs are running (they are, at once, or this times out), then
    reserve this batch's files against the shared hourly quota."""
    batch = context.op_config["batch"]
    (_folder() / f"started-{batch}").touch()
    deadline = time.monotonic() + WAIT_SECONDS
    while len(list(_folder().glob("started-*"))) < len(BATCHES):
        if time.monotonic() > deadline:
            raise RuntimeError("the other batch's run never started alongside this one")
        time.sleep(0.1)
    with Ledger(os.environ[LEDGER_ENV]) as ledger:
        for i in range(FILES_PER_BATCH):
            name = f"{batch}_{i}.log.gz"
            file = OutgoingFile(name, Path("/dev/null"), 10, "0" * 32)
            decision = ledger.reserve(file, batch, "sftp", NOW, LIMITS, run_id=context.run_id)
            context.log.info(f"{name}: {'send' if decision.send else 'deferred'}")
    return batch


@dg.op(pool="moloco_key_rotation")
def rotate_key(context: dg.OpExecutionContext, batch: str) -> None:
    """Hold the key as a rotation does: in the pool, under the deployment's rotation lock (the
    database lease `DatabaseRotationLock`, as `MolocoSource` takes it). The lease is what
    guarantees one holder: Dagster's pool on PostgreSQL can give one slot to two steps that
    claim it at the same moment (its claim selects the free slot `FOR UPDATE` on an autocommit
    connection, so the row lock ends before the slot is taken; seen under load). A second holder
    at the same time is recorded."""
    lock = DatabaseRotationLock(os.environ[LEDGER_ENV], spacing_s=0)
    with lock.held(wait_timeout_s=WAIT_SECONDS):
        holder = _folder() / "holder"
        try:
            fd = os.open(holder, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            (_folder() / f"overlap-{batch}").touch()
            return
        try:
            time.sleep(HOLD_SECONDS)
            (_folder() / f"rotated-{batch}").touch()
        finally:
            os.close(fd)
            holder.unlink()


@dg.job
def batch_job() -> None:
    rotate_key(reserve_uploads())


defs = dg.Definitions(jobs=[batch_job])
