"""Merge a batch's segment loads into one S2S line per user and file (S2S-EFF, S2S-LINE).

The conflict rule, deterministic and independent of row order (exports are unordered sets):
for one user and segment in one file, exactly one load is kept,

1. a removal (`-1`) wins over any add: an opt-out must never be undone by a stale add;
2. otherwise "add now" (`0`) wins over an explicit time;
3. otherwise the latest Unix timestamp wins.

Identical repeats are folded silently (counted); differing timestamps are counted as conflicts.
Users are processed by hash bucket, a few at a time (BUCKETS_MERGED_AT_ONCE: the next ones are
sorted on threads while one is written), so memory follows the budget, not the batch.
A bucket is merged by sorting its rows (`_sorted_user_lines`: numpy and Arrow); snapshot mode
(its diff works on DuckDB tables), loads written as Parquet by an earlier version and users that
share a user key go through DuckDB instead (`_resolve`, `_user_lines`): the same lines either way.
"""

from __future__ import annotations

import shutil
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm_assets.core.batch_work import LINES
from mm_assets.core.bucket_loads import (
    BUCKETS_MERGED_AT_ONCE,
    LOAD_SCHEMA,
    LOADS_SUFFIX,
    bucket_load_files,
    bucket_loads_relation,
    read_bucket,
)
from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.duckdb_session import open_duckdb
from mm_assets.core.line_parts import LinePart, deflate_part, part_text_limit, write_parts_index
from mm_assets.core.s2s_format import MAX_LINE_CHARS, split_user_line

if TYPE_CHECKING:
    from mm_assets.core.snapshot_diff import SnapshotDiff

# Users per batch of lines from DuckDB: ~10-30 MB of text, so the batches being compressed
# and the one being grouped by family stay small beside DuckDB's share of the budget.
LINES_BATCH_ROWS = 131_072
GLOBAL_KEY = "_global"  # the taxonomy folder of global data; `_` cannot start an agency name
# Sort key of a load under the conflict rule: smaller wins. Timestamps are at most 2**38.
RANK_REMOVE, RANK_NOW = -(2**62), -(2**62) + 1
# Fewest bits of the user key a sort word keeps: with fewer, the users that share a key prefix
# (their rows re-sorted by `_sort_shared_prefixes`) would be too many.
MIN_KEY_BITS = 16


@dataclass(frozen=True)
class FileKey:
    """One output file family: an agency (or global) and a kind of ID (S2S-NAME, S2S-MOB)."""

    agency: str  # "" for global data
    mobile: bool


@dataclass
class FileKeyStats:
    users: int = 0
    lines: int = 0
    loads: int = 0
    text_bytes: int = 0


@dataclass
class MergeReport:
    rows_in: int
    loads_out: int
    repeats_folded: int  # rows that repeated a kept load exactly or lost a conflict
    conflicts: int  # user+segment pairs whose loads disagreed on the timestamp
    users: int  # user lines before continuation (one per user and file)
    continued_users: int  # users whose loads needed more than one line (S2S-LINE)
    buckets: int
    merged_dir: Path
    by_file: dict[FileKey, FileKeyStats] = field(default_factory=dict)


def merge_segment_loads(
    loads_dir: Path,
    out_dir: Path,
    settings: BuildSettings,
    snapshot: SnapshotDiff | None = None,
) -> MergeReport:
    """Merge the bucketed loads written by the export reader into compressed line parts
    (core/line_parts.py), per file family, ready for the writer to join into files.

    In snapshot mode (`snapshot`), each bucket's loads are replaced by their diff against the
    held audience state before the lines are built (core/snapshot_diff.py)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    merged_dir = out_dir / LINES
    merged_dir.mkdir(parents=True)
    buckets = sorted(loads_dir.glob("bucket=*"))
    con = open_duckdb(":memory:", settings, out_dir / "spill")
    totals = defaultdict(int)
    by_file: dict[FileKey, FileKeyStats] = defaultdict(FileKeyStats)
    parts = _PartCompressor(merged_dir, settings)
    at_once = max(1, min(BUCKETS_MERGED_AT_ONCE, settings.threads))
    sorting = ThreadPoolExecutor(at_once, thread_name_prefix="bucket-sort")
    try:
        filled = [(n, b) for n, b in enumerate(buckets) if bucket_load_files(b)]
        # Snapshot mode's diff works on the SQL path's tables (`_snapshot_seam`): no sorting.
        ordered = (
            ((n, b, None) for n, b in filled)
            if snapshot is not None
            else _sorted_ahead(filled, sorting, at_once)
        )
        for number, bucket, sorted_lines in ordered:
            _merge_bucket(con, bucket, number, parts, totals, by_file, snapshot, sorted_lines)
        write_parts_index(merged_dir, parts.finish())
    finally:
        sorting.shutdown(wait=True, cancel_futures=True)
        parts.close()
        con.close()
        shutil.rmtree(out_dir / "spill", ignore_errors=True)
    return MergeReport(
        rows_in=totals["rows_in"],
        loads_out=totals["loads_out"],
        repeats_folded=totals["rows_in"] - totals["loads_out"],
        conflicts=totals["conflicts"],
        users=totals["users"],
        continued_users=totals["continued"],
        buckets=len(buckets),
        merged_dir=merged_dir,
        by_file=dict(sorted(by_file.items(), key=lambda kv: (kv[0].agency, kv[0].mobile))),
    )


def _sorted_ahead(
    buckets: list[tuple[int, Path]], sorting: ThreadPoolExecutor, at_once: int
) -> Iterator[tuple[int, Path, _SortedLines | None]]:
    """Each bucket with its sorted lines (`_sorted_user_lines`; None for the SQL path), in
    bucket order, the next ones sorted on `sorting`'s threads meanwhile. Bounded: at most
    `at_once` buckets are held at a time, counting the one whose lines are being consumed
    (a bucket is sized for that share of the budget: BUCKETS_MERGED_AT_ONCE)."""
    pending = iter(buckets)

    def submit(count: int) -> None:
        for number, bucket in islice(pending, count):
            ahead.append((number, bucket, sorting.submit(_sorted_user_lines, bucket)))

    ahead: deque[tuple[int, Path, Future[_SortedLines | None]]] = deque()
    submit(at_once)
    while ahead:
        number, bucket, future = ahead.popleft()
        yield number, bucket, future.result()
        del future  # its lines are consumed: released before the next bucket starts
        submit(1)


def _merge_bucket(
    con,
    bucket: Path,
    number: int,
    parts: _PartCompressor,
    totals,
    by_file,
    snapshot: SnapshotDiff | None,
    sorted_lines: _SortedLines | None,
) -> None:
    if sorted_lines is not None:
        families, (rows_in, loads_out, conflicts) = sorted_lines
        batches: Iterator[list[_FamilyLines]] = iter([families] if families else [])
        # The bucket's parts share its text: they are queued once the previous bucket's are
        # written, so no more than one bucket's text waits to be compressed.
        in_flight = 0
    else:
        _resolve(con, bucket_loads_relation(con, bucket))
        if snapshot is not None:
            _snapshot_seam(con, bucket, snapshot)
        rows_in, loads_out, conflicts = con.execute(
            "SELECT sum(n), count(*), count(*) FILTER (WHERE conflict) FROM kept"
        ).fetchone()
        # The bucket's seam: `kept` holds its resolved loads (user_key, segment, rank; n and
        # conflict are spent), one per user and segment, and `users` its users (user_key,
        # agency, mobile, user_id), one per key. Whatever these two tables hold becomes the
        # bucket's lines (a snapshot diff replaces `kept` and adds the users it removes from
        # `users`).
        batches = (_batch_family_lines(lines) for lines in _user_lines(con))
        in_flight = 1
    totals["rows_in"] += rows_in or 0
    totals["loads_out"] += loads_out or 0
    totals["conflicts"] += conflicts or 0
    for batch_number, families in enumerate(batches):
        for family in families:
            stats = by_file[family.key]
            stats.users += family.users
            stats.lines += family.lines
            stats.loads += family.loads
            stats.text_bytes += family.text_bytes
            totals["users"] += family.users
            totals["continued"] += family.continued
        parts.submit(f"b{number:05d}-{batch_number:05d}", families, in_flight)


def _resolve(con, loads: str) -> None:
    """The conflict rule per user and segment (`kept`), and the bucket's users (`users`).

    Grouping by the 64-bit user key is lossless only while no two users share a key: checked
    on every bucket; in the (astronomically rare) case they do, the bucket is keyed again by
    a number given to each distinct user.
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE users AS
        SELECT DISTINCT user_key, agency, mobile, user_id FROM {loads}""")
    source = loads
    if con.execute("SELECT count(*) <> count(DISTINCT user_key) FROM users").fetchone()[0]:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE users AS
            SELECT row_number() OVER () AS user_key, agency, mobile, user_id
            FROM (SELECT DISTINCT agency, mobile, user_id FROM users)""")
        source = (
            f"(SELECT u.user_key, l.segment, l.ts FROM {loads} l "
            f"JOIN users u USING (agency, mobile, user_id))"
        )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE kept AS
        SELECT user_key, segment,
               min(CASE ts WHEN -1 THEN {RANK_REMOVE} WHEN 0 THEN {RANK_NOW} ELSE -ts END) AS rank,
               count(*) AS n, min(ts) <> max(ts) AS conflict
        FROM {source} GROUP BY user_key, segment""")


def _sorted_user_lines(bucket: Path) -> _SortedLines | None:
    """The bucket's lines, grouped by file family, and (rows in, loads out, conflicts), by
    sorting instead of DuckDB's hash aggregations: one sort of 64-bit words (file family, user
    key, segment, row), then the conflict rule and the text as vectorised numpy and Arrow
    passes. Gives the same lines as `_resolve` + `_user_lines`; the family leads the sort so
    that the lines come out in their families and are never gathered a second time.

    None when this path cannot be exact, and the SQL path merges the bucket instead: loads
    written as Parquet by an earlier version, a bucket too large to pack its sort words, or
    users that share a user key (the key is never trusted: every row's user ID is compared
    with its key's first row, and users of two families are told apart by the sort, or by
    comparing their rows' families where the family does not fit the sort word).
    """
    files = bucket_load_files(bucket)
    if any(path.suffix != LOADS_SUFFIX for path in files):
        return None
    table = read_bucket(bucket)
    n = table.num_rows
    if n == 0:
        return [], (0, 0, 0)
    # The user IDs (most of the bytes) stay in their mapped chunks: they are only taken from.
    column = {
        name: table.column(name) if name == "user_id" else table.column(name).combine_chunks()
        for name in LOAD_SCHEMA.names
    }
    key = column["user_key"].to_numpy()
    # Segment codes, numbered in the order of their text: a line lists its loads in that
    # order, whatever the order of the rows (the same lines from the same loads).
    segments = pc.dictionary_encode(column["segment"])
    by_text = pc.sort_indices(segments.dictionary).to_numpy()
    seg_names = segments.dictionary.take(by_text).cast(pa.large_string())
    distinct_segments = len(seg_names)
    seg_number = np.empty(distinct_segments, dtype=np.uint64)
    seg_number[by_text] = np.arange(distinct_segments, dtype=np.uint64)
    # A row's file family: its agency's number, twice, plus 1 for mobile IDs.
    agencies = pc.dictionary_encode(column["agency"])
    family = agencies.indices.to_numpy().astype(np.uint64) << np.uint64(1)
    family |= column["mobile"].to_numpy(zero_copy_only=False).astype(np.uint64)
    row_bits = _bits(n)
    seg_bits = _bits(distinct_segments)
    # The family leads the word while the key keeps enough bits beside it; past that (very
    # many agencies and segments) the lines are grouped by family afterwards, as SQL's are.
    family_bits = _bits(2 * len(agencies.dictionary))
    if 64 - row_bits - seg_bits - family_bits < MIN_KEY_BITS:
        family_bits = 0
    key_bits = 64 - row_bits - seg_bits - family_bits
    if key_bits < MIN_KEY_BITS:
        return None
    low_bits = np.uint64(row_bits + seg_bits)
    # One word per row: the family, the key's top bits, the segment, the row; sorting the
    # words orders the rows by (family, key prefix, segment) and says where each came from.
    words = (key >> np.uint64(64 - key_bits)) << low_bits
    if family_bits:
        words |= family << np.uint64(64 - family_bits)
    words |= seg_number[segments.indices.to_numpy()] << np.uint64(row_bits)
    words |= np.arange(n, dtype=np.uint64)
    words.sort()
    order = (words & np.uint64((1 << row_bits) - 1)).astype(np.int64)
    segment = (words >> np.uint64(row_bits)) & np.uint64((1 << seg_bits) - 1)
    prefix = words >> low_bits  # the family and the key's top bits
    del words
    full = key[order]
    _sort_shared_prefixes(prefix, full, segment, order)
    # A user is one (family, key): a run of one prefix and one full key.
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    np.not_equal(prefix[1:], prefix[:-1], out=new_user[1:])
    new_user[1:] |= full[1:] != full[:-1]
    del full
    if family_bits:
        user_family = (prefix[new_user] >> np.uint64(key_bits)).astype(np.int64)
    else:
        # Users of two families that share a key are not told apart by this sort.
        row_family = family[order]
        if np.any(~new_user[1:] & (row_family[1:] != row_family[:-1])):
            return None
        user_family = row_family[new_user].astype(np.int64)
    del prefix, family
    new_load = new_user.copy()
    new_load[1:] |= segment[1:] != segment[:-1]
    user_ids = _user_ids_of_keys(column["user_id"], order, new_user)
    if user_ids is None:
        return None
    # The conflict rule (module docstring) with timestamps >= -1 (the reader's rule): the
    # smallest timestamp is -1 (a removal wins) or 0 (add now wins over a dated add),
    # otherwise the largest (latest) wins.
    load_starts = np.flatnonzero(new_load)
    ts = column["ts"].to_numpy()[order]
    low = np.minimum.reduceat(ts, load_starts)
    high = np.maximum.reduceat(ts, load_starts)
    del ts, order
    conflicts = int(np.count_nonzero(low != high))
    kept_ts = np.where(low <= 0, low, high)
    kept_segment = segment[load_starts].astype(np.int64)
    loads_out = len(load_starts)
    user_loads = np.append(np.flatnonzero(new_user[load_starts]), loads_out)
    del low, high, segment, new_load, new_user
    text = _lines_text(user_ids, seg_names, kept_segment, kept_ts, user_loads)
    families = _family_lines(text, np.diff(user_loads), user_family, agencies.dictionary)
    return families, (n, loads_out, conflicts)


def _bits(count: int) -> int:
    """Bits that number `count` things from 0 (at least one)."""
    return max(1, (count - 1).bit_length())


def _sort_shared_prefixes(
    prefix: np.ndarray, full: np.ndarray, segment: np.ndarray, order: np.ndarray
) -> None:
    """Where users share a key prefix their rows interleave: re-sort those runs' rows by
    (key, segment), in place (a few dozen runs a bucket)."""
    same = prefix[1:] == prefix[:-1]
    clashes = np.flatnonzero(same & (full[1:] != full[:-1])) + 1
    if not clashes.size:
        return
    run_starts = np.flatnonzero(np.concatenate([[True], ~same]))
    run_ends = np.append(run_starts[1:], len(prefix))
    runs = np.unique(np.searchsorted(run_starts, clashes, "right") - 1)
    at = np.concatenate([np.arange(run_starts[r], run_ends[r]) for r in runs])
    moved = at[np.lexsort((segment[at], full[at], prefix[at]))]
    for values in (full, segment, order):
        values[at] = values[moved]


def _user_ids_of_keys(
    user_id: pa.ChunkedArray, order: np.ndarray, new_user: np.ndarray
) -> pa.Array | None:
    """Per user (a run of one family and key in the sorted rows), its user ID; None when a
    row names another user ID than the row before it in its run (a key two users share is
    never trusted)."""
    user_ids = _one_array(user_id.take(order))
    differs = pc.not_equal(user_ids.slice(1), user_ids.slice(0, len(order) - 1))
    if np.any(~new_user[1:] & differs.to_numpy(zero_copy_only=False)):
        return None
    return user_ids.filter(pa.array(new_user))


def _one_array(values: pa.ChunkedArray) -> pa.Array:
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


def _lines_text(
    user_ids: pa.Array,
    seg_names: pa.Array,
    kept_segment: np.ndarray,
    kept_ts: np.ndarray,
    user_loads: np.ndarray,
) -> pa.Array:
    """`USER SEGMENT:TS SEGMENT:TS ...\\n` per user (S2S-TS), from the kept loads in user
    order (`user_loads`: where each user's loads start, and their end): one take of texts
    that each end with what follows them (a space, or the line's end after a user's last
    load), so the taken texts, one after the other, are the lines. Loads with `0` or `-1`
    (most) are taken from per-segment texts; only dated ones are formatted."""
    users, distinct, loads = len(user_ids), len(seg_names), len(kept_ts)
    dated = kept_ts > 0
    dated_count = int(np.count_nonzero(dated))
    load_texts = [
        pc.binary_join_element_wise(seg_names, _text(":0"), _text("")),
        pc.binary_join_element_wise(seg_names, _text(":-1"), _text("")),
        pc.binary_join_element_wise(
            seg_names.take(pa.array(kept_segment[dated])),
            pc.cast(pa.array(kept_ts[dated]), pa.large_string()),
            _text(":"),
        ),
    ]
    # The texts taken from: user IDs, then each load text followed by a space, then by "\n".
    texts = pa.concat_arrays(
        [
            pc.binary_join_element_wise(user_ids.cast(pa.large_string()), _text(" "), _text("")),
            *(pc.binary_join_element_wise(t, _text(" "), _text("")) for t in load_texts),
            *(pc.binary_join_element_wise(t, _text("\n"), _text("")) for t in load_texts),
        ]
    )
    number = np.where(kept_ts == 0, kept_segment, kept_segment + distinct) + users
    number[dated] = users + 2 * distinct + np.arange(dated_count)
    number[user_loads[1:] - 1] += 2 * distinct + dated_count  # a user's last load ends its line
    # User i's ID, then its loads: each load moves one place further per user before it.
    values = np.empty(users + loads, dtype=np.int64)
    firsts = user_loads[:-1] + np.arange(users)
    values[firsts] = np.arange(users)
    values[np.arange(loads) + np.repeat(np.arange(1, users + 1), np.diff(user_loads))] = number
    taken = texts.take(pa.array(values))
    ends = np.frombuffer(taken.buffers()[1], dtype=np.int64)[taken.offset :]
    line_ends = ends[np.append(firsts, users + loads)]
    return pa.LargeStringArray.from_buffers(
        users, pa.py_buffer(line_ends - line_ends[0]), taken.buffers()[2].slice(int(line_ends[0]))
    )


def _text(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())


def _snapshot_seam(con, bucket: Path, snapshot: SnapshotDiff) -> None:
    """Snapshot mode: the bucket's resolved loads become their diff against the held state,
    keyed as they are (`kept` and `users` keep their columns; see SnapshotDiff.diff_bucket)."""
    snapshot.diff_bucket(con, bucket)


def _user_lines(con) -> Iterator[pa.RecordBatch]:
    """One line per user (agency, mobile, loads, text), in no particular order, streamed in
    batches of whole users (memory follows the batch, not the bucket)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE lines_by_key AS
        SELECT user_key, count(*) AS loads,
               string_agg(segment || ':' || CASE rank
                   WHEN {RANK_REMOVE} THEN '-1' WHEN {RANK_NOW} THEN '0'
                   ELSE CAST(-rank AS VARCHAR) END, ' ') AS loads_text
        FROM kept GROUP BY user_key""")
    con.execute("DROP TABLE kept")
    # User IDs and loads are ASCII (the reader's rule), so bytes are characters.
    yield from con.sql("""
        SELECT agency, mobile, loads, user_id || ' ' || loads_text || chr(10) AS text
        FROM lines_by_key JOIN users USING (user_key)""").to_arrow_reader(LINES_BATCH_ROWS)
    con.execute("DROP TABLE lines_by_key")
    con.execute("DROP TABLE users")


@dataclass
class _Lines:
    """Consecutive whole users' lines: their text and, per user, where it starts."""

    text: memoryview
    starts: np.ndarray  # int64, one more than users: user i is text[starts[i]:starts[i + 1]]
    lines: np.ndarray  # per user, cumulative, from 0 (one more than users)
    loads: np.ndarray  # the same for loads

    @property
    def users(self) -> int:
        return len(self.starts) - 1

    def span(self, first: int, end: int) -> tuple[memoryview, int, int]:
        """Users [first, end): their text, lines and loads."""
        return (
            self.text[self.starts[first] : self.starts[end]],
            int(self.lines[end] - self.lines[first]),
            int(self.loads[end] - self.loads[first]),
        )


def _cumulative(values) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(values, dtype=np.int64)])


@dataclass
class _FamilyLines:
    """One bucket's users of one file family: the short lines, then the continued users."""

    key: FileKey
    pieces: list[_Lines]
    continued: int  # users on more than one line (S2S-LINE)

    @property
    def users(self) -> int:
        return sum(p.users for p in self.pieces)

    @property
    def lines(self) -> int:
        return sum(int(p.lines[-1]) for p in self.pieces)

    @property
    def loads(self) -> int:
        return sum(int(p.loads[-1]) for p in self.pieces)

    @property
    def text_bytes(self) -> int:
        return sum(len(p.text) for p in self.pieces)

    def parts(self, text_limit: int) -> Iterator[_PartText]:
        """Whole users in parts of at most `text_limit` bytes of text (a larger user alone)."""
        part = _PartText()
        for piece in self.pieces:
            first = 0
            while first < piece.users:
                room = text_limit - part.text_bytes
                end = int(np.searchsorted(piece.starts, piece.starts[first] + room, "right")) - 1
                if end <= first:
                    if part.users:
                        yield part
                        part = _PartText()
                        continue
                    end = first + 1
                part.add(*piece.span(first, end), end - first)
                first = end
        if part.users:
            yield part


# What the sorting path hands the bucket's writer: its lines by family and (rows in, loads
# out, conflicts).
_SortedLines = tuple[list[_FamilyLines], tuple[int, int, int]]


@dataclass
class _PartText:
    texts: list[memoryview] = field(default_factory=list)
    text_bytes: int = 0
    users: int = 0
    lines: int = 0
    loads: int = 0

    def add(self, text: memoryview, lines: int, loads: int, users: int) -> None:
        self.texts.append(text)
        self.text_bytes += len(text)
        self.users, self.lines, self.loads = (
            self.users + users,
            self.lines + lines,
            self.loads + loads,
        )


def _text_buffer(text: pa.Array) -> tuple[memoryview, np.ndarray]:
    """A large_string array's bytes and its offsets from 0, without a per-row Python loop."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[
        text.offset : text.offset + len(text) + 1
    ]
    data = memoryview(text.buffers()[2]) if text.buffers()[2] is not None else memoryview(b"")
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def _batch_family_lines(lines: pa.RecordBatch) -> list[_FamilyLines]:
    """A batch of lines from the SQL path (agency, mobile, loads, text) by file family."""
    agencies = pc.unique(lines.column("agency"))
    family = pc.index_in(lines.column("agency"), value_set=agencies).to_numpy().astype(np.int64)
    family = family * 2 + lines.column("mobile").to_numpy(zero_copy_only=False)
    return _family_lines(lines.column("text"), lines.column("loads").to_numpy(), family, agencies)


def _family_lines(
    text: pa.Array, loads: np.ndarray, family: np.ndarray, agencies: pa.Array
) -> list[_FamilyLines]:
    """Users' lines (`text`, and per user its loads and family: its agency's number in
    `agencies`, twice, plus 1 for mobile IDs) grouped by file family, and the few users whose
    line would reach 8,000 characters continued (S2S-LINE) after their family's other lines.
    Lines that come grouped (the sorting path's) are cut in place; others are grouped by one
    stable sort and one gather of the text."""
    if not len(text):
        return []
    text = text.cast(pa.large_string())
    if np.any(family[1:] < family[:-1]):
        order = np.argsort(family, kind="stable")
        family, loads, text = family[order], loads[order], text.take(pa.array(order))
    data, starts = _text_buffer(text)
    long = np.diff(starts) > MAX_LINE_CHARS + 1
    runs = np.flatnonzero(np.diff(family)) + 1
    families = []
    for first, end in zip([0, *runs], [*runs, len(family)], strict=True):
        agency_number, mobile = divmod(int(family[first]), 2)
        key = FileKey(agencies[agency_number].as_py(), bool(mobile))
        family_long, family_loads = long[first:end], loads[first:end]
        if not family_long.any():
            families.append(
                _FamilyLines(key, [_short_lines(data, starts[first : end + 1], family_loads)], 0)
            )
            continue
        texts, pieces = text.slice(first, end - first), []
        if not family_long.all():
            short_data, short_starts = _text_buffer(texts.filter(pa.array(~family_long)))
            pieces.append(_short_lines(short_data, short_starts, family_loads[~family_long]))
        continued = _continue_long_lines(
            texts.filter(pa.array(family_long)), family_loads[family_long]
        )
        pieces.append(continued)
        families.append(
            _FamilyLines(key, pieces, int(np.count_nonzero(np.diff(continued.lines) > 1)))
        )
    return families


def _short_lines(data: memoryview, starts: np.ndarray, loads: np.ndarray) -> _Lines:
    """Users on one line each: `data[starts[i]:starts[i + 1]]` is user i's line."""
    return _Lines(
        data[starts[0] : starts[-1]],
        starts - starts[0],
        np.arange(len(starts), dtype=np.int64),
        _cumulative(loads),
    )


def _continue_long_lines(texts: pa.Array, loads: np.ndarray) -> _Lines:
    """S2S-LINE: a user whose one line would reach 8,000 characters continues on more lines.

    Rare (a long tail of users with hundreds of loads), so plain Python is fast enough here.
    """
    counts, out = [], []
    for text in texts.to_pylist():
        user_id, _, loads_text = text[:-1].partition(" ")  # user IDs hold no space (S2S-FMT)
        lines = list(split_user_line(user_id, loads_text.split(" ")))
        counts.append(len(lines))
        out.append(("\n".join(lines) + "\n").encode())
    return _Lines(
        memoryview(b"".join(out)),
        _cumulative([len(t) for t in out]),
        _cumulative(counts),
        _cumulative(loads),
    )


def family_folder(key: FileKey) -> str:
    """A family's folder in the lines folder (agency names are letters and digits only)."""
    return f"taxonomy={key.agency or GLOBAL_KEY}/mobile={int(key.mobile)}"


def _write_part(lines_dir: Path, path: str, part: _PartText, level: int) -> LinePart:
    data, crc, text_bytes = deflate_part(part.texts, level)
    with open(lines_dir / path, "wb") as out:
        out.write(data)
    return LinePart(
        path=path,
        crc32=crc,
        text_bytes=text_bytes,
        gz_bytes=len(data),
        users=part.users,
        lines=part.lines,
        loads=part.loads,
    )


class _PartCompressor:
    """Compresses each batch's parts on a thread pool while DuckDB makes the next batch or
    the next buckets are sorted (zlib-ng, DuckDB, numpy and Arrow all release the GIL, so
    both cores stay busy). Bounded: a batch's parts are submitted only once at most
    `in_flight` batches before it are still being written."""

    def __init__(self, lines_dir: Path, settings: BuildSettings) -> None:
        self.lines_dir, self.level = lines_dir, settings.gzip_level
        self.text_limit = part_text_limit(settings)
        self.pool = ThreadPoolExecutor(max(1, settings.threads), thread_name_prefix="line-parts")
        # Per batch submitted and not yet collected, its parts' futures in submission order.
        self.pending: list[list[tuple[FileKey, Future[LinePart]]]] = []
        self.parts: dict[tuple[str, bool], list[LinePart]] = defaultdict(list)

    def submit(self, batch: str, families: list[_FamilyLines], in_flight: int) -> None:
        """Queue one batch's parts (named after `batch`, which sorts in submission order)
        once at most `in_flight` batches before it are still compressing."""
        self._collect(keep=in_flight)
        futures = []
        for family in families:
            folder = family_folder(family.key)
            (self.lines_dir / folder).mkdir(parents=True, exist_ok=True)
            for n, part in enumerate(family.parts(self.text_limit)):
                path = f"{folder}/{batch}-{n:05d}.deflate"
                future = self.pool.submit(_write_part, self.lines_dir, path, part, self.level)
                futures.append((family.key, future))
        self.pending.append(futures)

    def _collect(self, keep: int = 0) -> None:
        """Wait for all but the `keep` latest batches, in submission order: a family's parts
        keep the order of its batches."""
        while len(self.pending) > keep:
            for key, future in self.pending.pop(0):
                self.parts[(key.agency, key.mobile)].append(future.result())

    def finish(self) -> dict[tuple[str, bool], list[LinePart]]:
        self._collect()
        return dict(self.parts)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
