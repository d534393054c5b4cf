"""`python -m mm_assets_tests.faults.dagster_storage_worker BATCH WAIT_BEFORE`: start as an
`mm-assets` command does (DAGSTER_HOME from the environment), open the command's Dagster
instance and add BATCH's partition, as `build` and `deliver` do before their run. Before the
step named by WAIT_BEFORE (`open` or `add`) it prints "ready" and waits for a line on its
standard input, so several workers released together race the storage's creation or the
partition's insert."""

from __future__ import annotations

import sys

from mm_assets.cli import _instance
from mm_assets.defs.partitions import register_export_batch


def main(batch: str, wait_before: str) -> int:
    instance = _instance() if wait_before == "add" else None
    print("ready", flush=True)
    if sys.stdin.readline() != "go\n":
        return 3  # the test ended without releasing us
    register_export_batch(instance or _instance(), batch)
    print("registered", batch)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
