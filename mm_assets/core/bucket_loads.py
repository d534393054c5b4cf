"""The handoff from the export reader to the merge: each user bucket's checked loads.

The reader writes a bucket's loads as Arrow IPC files (`bucket=N/fileK.arrow`, uncompressed):
writing them is a memory copy (measured at 2 M rows: the read's CPU 2.4 s -> 1.7 s against
uncompressed Parquet, whose encoding was a third of it), and the merge maps them into memory
and lets DuckDB scan the Arrow buffers in place, with no decoding. Mapped pages count in the
process's memory while a bucket is merged, so the buckets are sized for them
(LOAD_BYTES_PER_ROW).

This module is the one place that knows the layout: the reader writes through `BucketWriter`,
and everything that reads the loads (the merge, the snapshot diff's empty buckets, the
reader's own rewrite of buckets, the tests) goes through its functions
(`bucket_loads_relation` for the merge). Parquet files in a bucket (loads written by an
earlier version) are still read.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mm_assets.core.duckdb_session import sql_glob
from mm_assets.core.user_buckets import bucket_name, user_key_sql

LOADS_SUFFIX = ".arrow"
# One load per row. `user_key` is the 64-bit user key the merge groups by
# (`user_buckets.user_key_sql`), `agency` the sanitised client name ("" for global data).
LOAD_SCHEMA = pa.schema(
    [
        ("user_key", pa.uint64()),
        ("agency", pa.string()),
        ("mobile", pa.bool_()),
        ("user_id", pa.string()),
        ("segment", pa.string()),
        ("ts", pa.int64()),
    ]
)
# Bytes per load in the IPC files (measured on the benchmark's export: UUID users, ~6-digit
# segments). While a bucket is merged its files are mapped, and their pages count in the
# process's memory: the reader sizes the buckets with this too.
LOAD_BYTES_PER_ROW = 80
# User buckets the merge sorts at once, one per thread (numpy's sorts and gathers and Arrow's
# kernels let go of the GIL): the reader sizes each bucket for this share of the budget.
# Measured at 20 M rows, 24 buckets: 2 at once sorted them in 9.7 s instead of 14.5 s.
BUCKETS_MERGED_AT_ONCE = 2
# The columns every relation given to the merge has, in this order.
RELATION_COLUMNS = ", ".join(LOAD_SCHEMA.names)


def bucket_load_files(bucket_dir: Path) -> list[Path]:
    """The loads files of one bucket (Arrow IPC, or Parquet from an earlier version)."""
    if not bucket_dir.is_dir():
        return []
    return sorted(
        p for p in bucket_dir.iterdir() if p.suffix in (LOADS_SUFFIX, ".parquet") and p.is_file()
    )


def bucket_dirs(loads_dir: Path) -> list[Path]:
    """The bucket folders of a loads folder, in bucket order."""
    return sorted(loads_dir.glob("bucket=*"), key=lambda p: int(p.name.split("=", 1)[1]))


def write_empty_bucket(bucket_dir: Path) -> None:
    """Give a bucket a loads file with no rows (the snapshot diff visits every bucket)."""
    bucket_dir.mkdir(parents=True, exist_ok=True)
    with pa.ipc.new_file(str(bucket_dir / f"empty{LOADS_SUFFIX}"), LOAD_SCHEMA):
        pass


def _mapped_table(files: Iterable[Path]) -> pa.Table:
    """The IPC files as one table whose buffers are the files' mapped pages (no copy)."""
    tables = [pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in files]
    return pa.concat_tables(tables) if tables else LOAD_SCHEMA.empty_table()


def read_bucket(bucket_dir: Path) -> pa.Table:
    """A bucket's Arrow loads as one memory-mapped table (the merge's sorting path, and the
    reader's own rare rewrites)."""
    return _mapped_table(p for p in bucket_load_files(bucket_dir) if p.suffix == LOADS_SUFFIX)


def _parquet_relation(con: duckdb.DuckDBPyConnection, files: list[Path]) -> str:
    """Loads written as Parquet by an earlier version, with the columns of LOAD_SCHEMA."""
    listed = ", ".join(sql_glob(p.parent, p.name) for p in files)
    scan = f"read_parquet([{listed}], union_by_name = true)"
    return (
        f"(SELECT {user_key_sql()} AS user_key, agency, mobile, user_id, segment, ts FROM {scan})"
        if "user_key" not in _columns(con, scan)
        else f"(SELECT {RELATION_COLUMNS} FROM {scan})"
    )


def _columns(con: duckdb.DuckDBPyConnection, scan: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}


def loads_relation(
    con: duckdb.DuckDBPyConnection, folders: Iterable[Path], name: str = "bucket_loads"
) -> str:
    """SQL relation of the loads in `folders` (bucket folders), with the columns of
    LOAD_SCHEMA: the Arrow files registered in `con` as `name` (replacing what was registered
    under that name), and any Parquet files of an earlier version read alongside."""
    files = [path for folder in folders for path in bucket_load_files(folder)]
    parquet = [p for p in files if p.suffix == ".parquet"]
    con.register(name, _mapped_table(p for p in files if p.suffix == LOADS_SUFFIX))
    arrow = f"(SELECT {RELATION_COLUMNS} FROM {name})"
    return f"({arrow} UNION ALL {_parquet_relation(con, parquet)})" if parquet else arrow


def bucket_loads_relation(
    con: duckdb.DuckDBPyConnection, bucket_dir: Path, name: str = "bucket_loads"
) -> str:
    """The seam between read and merge: one bucket's loads as a SQL relation in `con`, with
    columns user_key, agency, mobile, user_id, segment, ts (see LOAD_SCHEMA)."""
    return loads_relation(con, [bucket_dir], name)


def count_loads(loads_dir: Path) -> int:
    """Loads in a loads folder (from the files' metadata: nothing is scanned)."""
    total = 0
    for folder in bucket_dirs(loads_dir):
        for path in bucket_load_files(folder):
            if path.suffix == LOADS_SUFFIX:
                total += _mapped_table([path]).num_rows
            else:
                total += pq.ParquetFile(path).metadata.num_rows
    return total


def replace_bucket(bucket_dir: Path, loads: pa.Table) -> None:
    """Replace a bucket's loads by `loads` (written aside first, then swapped in)."""
    kept = bucket_dir.with_name(bucket_dir.name + ".kept")
    kept.mkdir()
    with pa.ipc.new_file(str(kept / f"kept{LOADS_SUFFIX}"), LOAD_SCHEMA) as writer:
        writer.write_table(loads)
    shutil.rmtree(bucket_dir)
    kept.rename(bucket_dir)


class BucketWriter:
    """Writes one source file's loads into its user buckets under `folder`, batch by batch.

    Each batch carries its rows' bucket (`bucket_column`); a batch is ordered by bucket once
    and written as one slice per bucket, one IPC file per bucket and source file.
    """

    def __init__(self, folder: Path, file_name: str) -> None:
        self.folder = folder
        self.file_name = file_name
        self.rows = 0
        self._writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def write(self, batch: pa.RecordBatch, buckets: pa.Array) -> None:
        """Write `batch` (columns of LOAD_SCHEMA), row i to bucket `buckets[i]`."""
        if batch.num_rows == 0:
            return
        order = pc.sort_indices(buckets)
        ordered = batch.take(order)
        start = 0
        for bucket, rows in _runs(buckets.take(order)):
            self._writer(bucket).write_batch(ordered.slice(start, rows))
            start += rows
        self.rows += batch.num_rows

    def _writer(self, bucket: int) -> pa.ipc.RecordBatchFileWriter:
        writer = self._writers.get(bucket)
        if writer is None:
            folder = self.folder / bucket_name(bucket)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self.file_name}{LOADS_SUFFIX}"
            writer = self._writers[bucket] = pa.ipc.new_file(str(path), LOAD_SCHEMA)
        return writer

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _runs(ordered: pa.Array) -> Iterator[tuple[int, int]]:
    """(value, length) of each run of equal values in an ordered integer array."""
    counts = pc.value_counts(ordered)
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    yield from sorted(pairs)
