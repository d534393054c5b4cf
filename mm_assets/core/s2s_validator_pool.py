"""Validate many S2S files at once: one validator process per core, as memory allows.

A build writes one file per client and cookie/mobile family, and the validator reads each
alone, so files are checked side by side in worker processes (spawned: the caller may be a
Dagster step with threads of its own, where forking is unsafe). Small batches stay in the
calling process: starting a worker costs more than validating a few megabytes. A spawned
worker imports the caller's main module before anything else (`mm-assets build`'s is
`mm_assets.cli`, which therefore imports nothing of Dagster at module level).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from mm_assets.core.s2s_validator import MAX_FILE_BYTES, FileReport, validate_file

__all__ = ["POOL_MIN_BYTES", "WORKER_MEMORY_BYTES", "validate_files", "validation_workers"]

# Peak memory of one validator process: the interpreter with numpy and pyarrow and a 2 MiB
# block's arrays (~110 MiB measured on a 300 MB file, see test_s2s_validator_pool.py), plus up
# to 4 M user hashes (32 MiB, twice that while sorted) before they go to temporary files.
WORKER_MEMORY_BYTES = 256 * 2**20
# Below this many gzipped bytes in total, validating in the caller beats starting workers.
POOL_MIN_BYTES = 32 * 2**20


def validation_workers(
    sizes: list[int],
    memory_budget_bytes: int,
    cpus: int | None,
    pool_min_bytes: int = POOL_MIN_BYTES,
) -> int:
    """How many files to validate at once: at most one per CPU, file and memory share."""
    if sum(sizes) < pool_min_bytes:
        return 1
    by_memory = max(1, memory_budget_bytes // WORKER_MEMORY_BYTES)
    return max(1, min(cpus or os.cpu_count() or 1, len(sizes), by_memory))


def validate_files(
    paths: list[Path],
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    memory_budget_bytes: int = 2**30,
    cpus: int | None = None,
    pool_min_bytes: int = POOL_MIN_BYTES,
) -> list[FileReport]:
    """The report of every file, in the order given."""
    check = partial(validate_file, max_file_bytes=max_file_bytes)
    sizes = [Path(p).stat().st_size for p in paths]
    workers = validation_workers(sizes, memory_budget_bytes, cpus, pool_min_bytes)
    if workers == 1:
        return [check(p) for p in paths]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Largest first, so the last file to finish is a small one.
        order = sorted(range(len(paths)), key=lambda i: -sizes[i])
        futures = {i: pool.submit(check, paths[i]) for i in order}
        return [futures[i].result() for i in range(len(paths))]
