"""The read -> merge handoff (core/bucket_loads.py): each user bucket's loads as Arrow IPC files,
read back through one seam, `bucket_loads_relation`, by the merge and the snapshot diff."""

from __future__ import annotations

import gzip
import random

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mm_assets.core.bucket_loads import (
    LOAD_SCHEMA,
    BucketWriter,
    bucket_dirs,
    bucket_load_files,
    bucket_loads_relation,
    count_loads,
    write_empty_bucket,
)
from mm_assets.core.export_reader import BATCH_ROWS, read_export_batch
from mm_assets.core.segment_merge import merge_segment_loads
from mm_assets.core.user_buckets import user_key_sql
from mm_assets_tests.conftest import accepted_loads, csv_bytes, make_settings, write_batch


def load_rows(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [
        {
            "user_key": rng.getrandbits(64),
            "agency": rng.choice(["", "Acme", "Beta"]),
            "mobile": rng.random() < 0.3,
            "user_id": f"user-{rng.randrange(10**9)}",
            "segment": str(rng.randrange(1, 5000)),
            "ts": rng.choice([-1, 0, 1765000000]),
        }
        for _ in range(n)
    ]


def relation_rows(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple]:
    return sorted(con.execute(f"SELECT * FROM {relation}").fetchall())


def as_tuples(rows: list[dict[str, object]]) -> list[tuple]:
    return sorted(tuple(row[name] for name in LOAD_SCHEMA.names) for row in rows)


def test_loads_written_batch_by_batch_read_back_per_bucket_exactly(tmp_path):
    rows = load_rows(3000, seed=1)
    buckets = [row["user_key"] % 5 for row in rows]
    writer = BucketWriter(tmp_path, "file0")
    for start in range(0, len(rows), 700):  # batches that each hold rows of several buckets
        batch = pa.RecordBatch.from_pylist(rows[start : start + 700], schema=LOAD_SCHEMA)
        writer.write(batch, pa.array(buckets[start : start + 700], pa.uint64()))
    writer.close()
    assert writer.rows == len(rows)
    con = duckdb.connect()
    assert [d.name for d in bucket_dirs(tmp_path)] == [f"bucket={i}" for i in range(5)]
    for index, folder in enumerate(bucket_dirs(tmp_path)):
        expected = as_tuples([r for r, b in zip(rows, buckets, strict=True) if b == index])
        assert relation_rows(con, bucket_loads_relation(con, folder)) == expected
    assert count_loads(tmp_path) == len(rows)


def test_a_bucket_of_older_parquet_loads_and_arrow_loads_reads_as_one_relation(tmp_path):
    """Loads an earlier version wrote as Parquet, without user keys, still reach the merge,
    with the key the merge groups by."""
    folder = tmp_path / "bucket=0"
    arrow_rows = load_rows(10, seed=2)
    writer = BucketWriter(tmp_path, "file0")
    writer.write(pa.RecordBatch.from_pylist(arrow_rows, schema=LOAD_SCHEMA), pa.array([0] * 10))
    writer.close()
    old = {"agency": ["", "Acme"], "mobile": [False, True], "user_id": ["u1", "u2"]}
    old |= {"segment": ["1", "2"], "ts": pa.array([0, -1], pa.int64())}
    pq.write_table(pa.table(old), folder / "old.parquet")
    con = duckdb.connect()
    rows = relation_rows(con, bucket_loads_relation(con, folder))
    keys = dict(
        con.execute(
            f"SELECT user_id, {user_key_sql()} FROM (VALUES ('', false, 'u1'), "
            f"('Acme', true, 'u2')) t(agency, mobile, user_id)"
        ).fetchall()
    )
    expected = [
        *as_tuples(arrow_rows),
        (keys["u1"], "", False, "u1", "1", 0),
        (keys["u2"], "Acme", True, "u2", "2", -1),
    ]
    assert rows == sorted(expected)
    assert count_loads(tmp_path) == 12


def test_an_empty_bucket_file_is_a_bucket_the_merge_visits_with_no_loads(tmp_path):
    folder = tmp_path / "loads" / "bucket=3"
    write_empty_bucket(folder)
    assert bucket_load_files(folder)
    con = duckdb.connect()
    assert relation_rows(con, bucket_loads_relation(con, folder)) == []
    report = merge_segment_loads(tmp_path / "loads", tmp_path / "merged", make_settings())
    assert (report.buckets, report.rows_in, report.users) == (1, 0, 0)


def test_a_file_that_breaks_after_its_first_batches_leaves_no_loads(tmp_path):
    """The checked rows stream out batch by batch: a gzip that is cut short after more than a
    batch of rows leaves none of them in the buckets (the file is reported, not half-read)."""
    rows = [(f"cut-{i}", str(i % 900 + 1), "0", "", "") for i in range(12 * BATCH_ROWS)]
    whole = gzip.compress(csv_bytes(rows), compresslevel=1)
    batch = write_batch(
        tmp_path,
        {
            "cut.csv.gz": whole[: len(whole) * 3 // 4],
            "good.csv": csv_bytes([("good-1", "7", "0", "", "")]),
        },
    )
    report = read_export_batch(batch, tmp_path / "raw", make_settings(), buckets=3)
    assert [issue.file for issue in report.file_issues] == ["cut.csv.gz"]
    assert "cannot be read" in report.file_issues[0].message
    assert [row[2] for row in accepted_loads(report)] == ["good-1"]
    assert (report.rows_read, report.rows_accepted) == (1, 1)
    assert not list((tmp_path / "raw").glob("reading_*"))
