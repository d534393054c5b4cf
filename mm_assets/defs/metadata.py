"""Asset and check metadata shared by every domain: tables the UI renders as tables, and
numbers that survive GraphQL.

Dagster's UI shows `MetadataValue.table` as a sortable table with typed columns; Markdown
tables hide behind "Show Markdown". GraphQL's `Int` is 32-bit: a byte count of a busy day
(5 GB) does not fit, so byte counts go as floats (exact up to 2**53).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import dagster as dg

# GraphQL's Int (signed 32-bit): every int metadata value must stay below this.
GRAPHQL_INT_LIMIT = 2**31

Cell = str | int | float | bool | None


def _cell(value: object) -> Cell:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _column_type(values: Iterable[Cell]) -> str:
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        if isinstance(value, float):
            return "float"
        return "string"
    return "string"


def table(
    columns: Sequence[str], rows: Iterable[Sequence[object] | Mapping[str, object]]
) -> dg.TableMetadataValue:
    """A typed table (`MetadataValue.table` with a schema) from rows given as sequences in
    `columns`' order or as mappings keyed by column name. Column types come from the values
    (int, float, bool, else string); datetimes are shown in ISO 8601."""
    records = []
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        if len(values) != len(columns):
            raise ValueError(f"row has {len(values)} cells for {len(columns)} columns")
        records.append({c: _cell(v) for c, v in zip(columns, values, strict=True)})
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=c, type=_column_type(r[c] for r in records)) for c in columns]
    )
    return dg.MetadataValue.table(records=[dg.TableRecord(data=r) for r in records], schema=schema)


def byte_count(value: int) -> dg.FloatMetadataValue:
    """A byte count as metadata: a float, because GraphQL's Int stops at 2**31 - 1."""
    return dg.MetadataValue.float(float(value))


def table_rows(value: dg.TableMetadataValue) -> list[dict[str, Cell]]:
    """The rows of a table metadata value, as dicts (for terminals and tests)."""
    return [dict(record.data) for record in value.records]
