"""One way to open DuckDB for a build step: memory-bounded, spilling to a folder, N threads."""

from __future__ import annotations

from pathlib import Path

import duckdb

from mm_assets.core.build_settings import BuildSettings

# DuckDB gets this share of the memory budget; Arrow buffers, gzip and Python use the rest.
DUCKDB_SHARE_OF_BUDGET = 0.6


def sql_string(value: str) -> str:
    """A SQL string literal (paths go into COPY/read_* calls, which take no parameters)."""
    return "'" + value.replace("'", "''") + "'"


def sql_glob(folder: Path, pattern: str) -> str:
    """A SQL string literal for the files matching `pattern` in `folder`, whatever the folder's
    name: DuckDB expands `*`, `?` and `[` anywhere in a path, so in the folder's part they are
    escaped as one-character classes (`b[1]` -> `b[[]1]`)."""
    literal = "".join(f"[{c}]" if c in "*?[" else c for c in str(folder))
    return sql_string(f"{literal}/{pattern}")


def open_duckdb(
    database: Path | str, settings: BuildSettings, spill_dir: Path
) -> duckdb.DuckDBPyConnection:
    spill_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database))
    limit_mb = max(64, int(settings.memory_budget_bytes * DUCKDB_SHARE_OF_BUDGET) // 2**20)
    con.execute(f"SET memory_limit = '{limit_mb}MB'")
    con.execute(f"SET threads = {max(1, settings.threads)}")
    con.execute(f"SET temp_directory = {sql_string(str(spill_dir))}")
    # Row order inside a query result is never relied on (line numbers are explicit columns).
    con.execute("SET preserve_insertion_order = false")
    # Bucketed writes flush smaller row groups sooner: measured 1.7x faster, same memory.
    con.execute("SET partitioned_write_flush_threshold = 100000")
    return con
