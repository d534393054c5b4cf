"""A user's 64-bit key and bucket: the one definition the reader, the merge, the loads handoff
and the snapshot state share (one user's loads always meet in one bucket, merged alone)."""

from __future__ import annotations

import duckdb


def user_key_sql() -> str:
    """SQL of a user's 64-bit key (columns `agency`, `mobile`, `user_id`): the reader writes it
    with every load, and the merge groups by it instead of by the three texts (measured ~2x
    faster). A key two users share is detected in the merge, never trusted (see _resolve)."""
    return "hash(agency, mobile, user_id)"


def user_bucket_sql(buckets: int) -> str:
    """SQL of a user's bucket among `buckets`."""
    return f"{user_key_sql()} % {int(buckets)}"


def bucket_name(index: int) -> str:
    """The folder of bucket `index` (loads, candidate and held state alike)."""
    return f"bucket={index}"


def bucket_hash_probe() -> int:
    """The key of a fixed (agency, mobile, user): a state records it, so a DuckDB whose hash
    changed (other keys, other buckets) is noticed instead of trusted."""
    with duckdb.connect(":memory:") as con:
        return int(con.execute(f"SELECT {_probe_key_sql()}").fetchone()[0])


def _probe_key_sql() -> str:
    return (
        user_key_sql()
        .replace("agency", "'Probe'")
        .replace("mobile", "true")
        .replace("user_id", "'probe-user-0'")
    )
