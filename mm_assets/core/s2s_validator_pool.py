"""Validate many S2S files at once: one validator thread per core, as memory allows.

A build writes one file per client and cookie/mobile family, and the validator reads each
alone, so files are checked side by side. On threads, not processes: the block path's work is
gzip inflation (isal), numpy and Arrow's RE2 kernels, which all let go of the GIL, so two
threads keep two cores busy (measured at 20 M rows, 42 files: 2.0-3.1 s wall against 3.6-4.0 s
for two spawned processes, which each imported numpy and pyarrow first and cost ~0.4 s of CPU
more). Only the per-line path, which explains a file the block path could not prove valid,
holds the GIL: a batch of broken files is explained one core at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from mm_assets.core.s2s_validator import MAX_FILE_BYTES, FileReport, validate_file

__all__ = ["WORKER_MEMORY_BYTES", "validate_files", "validation_workers"]

# Memory of one file's validation: a 2 MiB block's arrays (~110 MiB measured on a 300 MB file
# with the interpreter, numpy and pyarrow, see test_s2s_validator_pool.py), plus up to 4 M
# user hashes (32 MiB, twice that while sorted) before they go to temporary files.
WORKER_MEMORY_BYTES = 256 * 2**20


def validation_workers(sizes: list[int], memory_budget_bytes: int, cpus: int | None) -> int:
    """How many files to validate at once: at most one per CPU, file and memory share."""
    by_memory = max(1, memory_budget_bytes // WORKER_MEMORY_BYTES)
    return max(1, min(cpus or os.cpu_count() or 1, len(sizes), by_memory))


def validate_files(
    paths: list[Path],
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    memory_budget_bytes: int = 2**30,
    cpus: int | None = None,
) -> list[FileReport]:
    """The report of every file, in the order given."""
    check = partial(validate_file, max_file_bytes=max_file_bytes)
    sizes = [Path(p).stat().st_size for p in paths]
    workers = validation_workers(sizes, memory_budget_bytes, cpus)
    if workers == 1:
        return [check(p) for p in paths]
    with ThreadPoolExecutor(workers, thread_name_prefix="s2s-validator") as pool:
        # Largest first, so the last file to finish is a small one.
        order = sorted(range(len(paths)), key=lambda i: -sizes[i])
        futures = {i: pool.submit(check, paths[i]) for i in order}
        return [futures[i].result() for i in range(len(paths))]
