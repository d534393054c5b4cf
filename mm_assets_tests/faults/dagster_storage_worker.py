"""`python -m mm_assets_tests.faults.dagster_storage_worker READY GO BATCH WAIT_BEFORE`: start
as an `mm-assets` command does (DAGSTER_HOME from the environment), open the command's Dagster
instance and add BATCH's partition, as `build` and `deliver` do before their run. READY is
touched and GO awaited before the step named by WAIT_BEFORE (`open` or `add`), so several
workers race the storage's creation or the partition's insert."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mm_assets.cli import _instance
from mm_assets.defs.launch import register_export_batch

GO_TIMEOUT_S = 120


def main(ready: str, go: str, batch: str, wait_before: str) -> int:
    instance = _instance() if wait_before == "add" else None
    Path(ready).touch()
    deadline = time.monotonic() + GO_TIMEOUT_S
    while not Path(go).exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.005)
    register_export_batch(instance or _instance(), batch)
    print("registered", batch)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
