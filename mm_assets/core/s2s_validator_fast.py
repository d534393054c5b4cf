"""The validator's fast path: S2S rows checked a whole decompressed block at a time.

`s2s_validator` owns the rules and their reports; this module only answers "is every row of
this block certainly valid, as far as the per-line validator would see?" without a Python loop
per line: numpy finds the newlines, spaces and line lengths, RE2 (pyarrow's compute kernels)
matches every line against the whole-row pattern, and 64-bit hashes of the user IDs and loads
find repeated users and repeated loads. Anything it cannot prove valid makes `scan` return
False, and the caller re-reads the file with the exact per-line validator, which explains
what is wrong; so a flagged block costs time, never a different report.

Like the validator, it shares no code with the writer: it imports neither `mm_assets` nor the
writer's libraries (DuckDB, zlib-ng).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["RowBlockScanner"]

_NEWLINE = 10
_SPACE = 32
# Multiply-xorshift mixing (the constants of splitmix64): equal tokens always hash equal, so a
# hash that is unique proves the token unique; a collision only sends the file to the exact
# per-line path.
_K_LEN = np.uint64(0x9E3779B97F4A7C15)
_K_MIX = np.uint64(0xBF58476D1CE4E5B9)
_K_LINE = np.uint64(0x94D049BB133111EB)
_SHIFT = np.uint64(31)
_WORD = 8
# _LOW_BYTES[k] keeps the first k bytes of a little-endian 8-byte word.
_LOW_BYTES = np.array(
    [(1 << (8 * k)) - 1 for k in range(_WORD)] + [0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64
)
# Lines with at most this many loads are checked for a repeated load by comparing every pair
# of columns of a (lines x loads) matrix; longer lines by sorting their (line, load) keys.
_PAIRWISE_MAX_LOADS = 16
# User hashes kept in memory (8 bytes each, twice that while sorted at the end); past this
# many they go to temporary files, one per range of hash values, sorted one by one at the end.
_USERS_IN_MEMORY = 1 << 22
_RANGE_BITS = 6  # 64 ranges: a 4 GB file's ~100 M users sort ~1.6 M at a time


def _words(buf: bytes) -> np.ndarray:
    """Every byte offset of ``buf`` as the little-endian 8-byte word starting there."""
    padded = buf + bytes(_WORD)
    return np.ndarray((len(buf) + 1,), dtype="<u8", buffer=padded, strides=(1,))


def _mix(h: np.ndarray, word: np.ndarray) -> np.ndarray:
    h = (h ^ word) * _K_MIX
    return h ^ (h >> _SHIFT)


def _token_hashes(words: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """64-bit hash of every token ``buf[start[i]:end[i]]``, all bytes included."""
    lens = end - start
    h = lens.astype(np.uint64) * _K_LEN
    if not lens.size:
        return h
    shortest, longest = int(lens.min()), int(lens.max())
    if shortest == longest:  # typical for user IDs (UUIDs): no bookkeeping of who is done
        for offset in range(0, longest, _WORD):
            word = words[start + offset]
            if longest - offset < _WORD:
                word &= _LOW_BYTES[longest - offset]
            h = _mix(h, word)
        return h
    alive = np.arange(lens.size)
    pos = start
    left = lens
    while alive.size:
        word = words[pos] & _LOW_BYTES[np.minimum(left, _WORD)]
        h[alive] = _mix(h[alive], word)
        left = left - _WORD
        more = left > 0
        alive, pos, left = alive[more], pos[more] + _WORD, left[more]
    return h


def _load_keys(words: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A 64-bit key of every load: its length, first, second and last 8 bytes.

    Equal loads have equal keys, and loads of up to 24 bytes (any ``2147483647:1767225600``)
    have equal keys only when equal; two longer loads of one line may share a key by chance,
    which costs the file a trip through the exact path, nothing else. Three gathers instead of
    a full hash: the loads outnumber the users ~4 to 1.
    """
    lens = end - start
    head = words[start] & _LOW_BYTES[np.minimum(lens, _WORD)]
    second = words[np.minimum(start + _WORD, end)] & _LOW_BYTES[np.clip(lens - _WORD, 0, _WORD)]
    tail = words[np.maximum(end - _WORD, start)] & _LOW_BYTES[(lens > _WORD) * _WORD]
    # Odd multipliers keep each part's information; a chance collision only costs time.
    return (lens.astype(np.uint64) * _K_LEN) ^ head ^ (second * _K_MIX) ^ (tail * _K_LINE)


def _repeats_a_load(
    load_hash: np.ndarray, loads_per_line: np.ndarray, first_load: np.ndarray
) -> bool:
    """Might a line hold the same SegmentCode:UnixTimestamp twice (S2S-EFF)?"""
    # Lines grouped by their number of loads (a counting sort: one pass, not one per k).
    counts = np.minimum(loads_per_line, _PAIRWISE_MAX_LOADS + 1).astype(np.uint16)
    by_count = np.argsort(counts, kind="stable")  # radix sort for 16-bit keys
    edges = np.searchsorted(counts[by_count], np.arange(_PAIRWISE_MAX_LOADS + 2))
    for k in range(2, _PAIRWISE_MAX_LOADS + 1):
        sel = by_count[edges[k] : edges[k + 1]]
        if not sel.size:
            continue
        matrix = load_hash[first_load[sel][:, None] + np.arange(k)]
        for shift in range(1, k):
            if (matrix[:, shift:] == matrix[:, :-shift]).any():
                return True
    many = loads_per_line > _PAIRWISE_MAX_LOADS
    if not many.any():
        return False
    line_of_load = np.repeat(np.arange(loads_per_line.size), loads_per_line)
    in_many = many[line_of_load]
    keys = load_hash[in_many] ^ (line_of_load[in_many].astype(np.uint64) * _K_LINE)
    keys.sort()
    return bool((keys[1:] == keys[:-1]).any())


class RowBlockScanner:
    """Checks the rows section of one file, block by block, in file order.

    ``row_pattern`` is the RE2 form of the validator's whole-row pattern (for this file's
    ``HashSegments``); ``case_insensitive_users`` is ``Mobile: 1`` (S2S-MOB: device IDs compare
    case-insensitively).
    """

    def __init__(self, row_pattern: str, max_line_chars: int, case_insensitive_users: bool):
        # Every line is one Arrow value that ends with its "\n"; RE2's "$" is the end of text.
        self._line_pattern = "^" + row_pattern + "\n$"
        self._max_line_chars = max_line_chars
        self._fold_case = case_insensitive_users
        self.lines = 0
        self.loads = 0
        # The last user of the previous block: the next block may continue it (S2S-EFF).
        self._prev_user: bytes | None = None
        self._prev_line_chars = 0
        self._prev_run_loads: set[bytes] = set()
        self._users = _UserHashes()

    def scan(self, block: bytes) -> bool:
        """Rows ending in "\\n" each; False when any of them may break a rule."""
        if not block.isascii():
            return False
        arr = np.frombuffer(block, dtype=np.uint8)
        # Newlines and, once the pattern has matched, the single spaces between tokens: the
        # pattern admits no other byte <= 0x20.
        bounds = np.flatnonzero(arr <= _SPACE)
        bound_is_nl = arr[bounds] == _NEWLINE
        nl = bounds[bound_is_nl]
        n = nl.size
        if not n or nl[-1] != len(block) - 1:
            return False
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        line_chars = nl - starts  # ASCII: bytes are characters
        if line_chars.min() == 0 or line_chars.max() >= self._max_line_chars:
            return False
        offsets = np.empty(n + 1, dtype=np.int32)
        offsets[0] = 0
        offsets[1:] = nl + 1
        lines = pa.Array.from_buffers(
            pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(block)]
        )
        if not pc.all(pc.match_substring_regex(lines, self._line_pattern)).as_py():
            return False
        # Every line is "user load load ...": its first bound ends the user, each space
        # starts a load that the next bound ends.
        nl_at = np.flatnonzero(bound_is_nl)
        space_at = np.flatnonzero(~bound_is_nl)
        user_tok = np.empty_like(nl_at)
        user_tok[0] = 0
        user_tok[1:] = nl_at[:-1] + 1
        user_end = bounds[user_tok]
        loads_per_line = nl_at - user_tok
        first_load = user_tok - np.arange(n)  # index of each line's first load
        load_start = bounds[space_at] + 1
        load_end = bounds[space_at + 1]

        words = _words(block)
        user_buf = block.lower() if self._fold_case else block
        user_words = _words(user_buf) if self._fold_case else words
        users = _token_hashes(user_words, starts, user_end)
        load_hash = _load_keys(words, load_start, load_end)
        if _repeats_a_load(load_hash, loads_per_line, first_load):
            return False

        def user_at(i: int) -> bytes:
            return user_buf[starts[i] : user_end[i]]

        def loads_at(i: int) -> list[bytes]:
            return block[user_end[i] + 1 : nl[i]].split(b" ")

        def first_load_chars(i: int) -> int:
            j = first_load[i]
            return int(load_end[j] - load_start[j])

        # S2S-EFF: a user continues on the next line only when the line before had no room
        # for that line's first load, and never repeats a load across its lines.
        continues = np.flatnonzero(users[1:] == users[:-1]) + 1
        run_start = np.ones(n, dtype=bool)
        run_start[continues] = False
        run_loads = self._prev_run_loads
        if self._prev_user is not None and user_at(0) == self._prev_user:
            run_start[0] = False
            if self._prev_line_chars + 1 + first_load_chars(0) < self._max_line_chars:
                return False
        else:
            run_loads = set()
        for i in continues.tolist():
            if user_at(i) != user_at(i - 1):  # a hash collision: let the exact path decide
                return False
            if line_chars[i - 1] + 1 + first_load_chars(i) < self._max_line_chars:
                return False
        # Loads of users on several lines (rare: a line holds ~500 loads) as sets of bytes:
        # no load may repeat across a user's lines. The last run is kept for the next block.
        firsts = np.flatnonzero(run_start)
        lasts = np.empty_like(firsts)
        lasts[:-1] = firsts[1:] - 1
        lasts[-1:] = n - 1
        several = np.flatnonzero(lasts > firsts)
        runs = [
            (f, e, set())
            for f, e in zip(firsts[several].tolist(), lasts[several].tolist(), strict=True)
        ]
        if not run_start[0]:
            runs.insert(0, (0, int(firsts[0]) - 1 if firsts.size else n - 1, run_loads))
        if not runs or runs[-1][1] != n - 1:
            runs.append((int(firsts[-1]), n - 1, set()))
        for first, last, seen in runs:
            for k in range(first, last + 1):
                loads = loads_at(k)
                if not seen.isdisjoint(loads):
                    return False
                seen.update(loads)
        run_loads = runs[-1][2]
        self._prev_run_loads = run_loads
        self._prev_user = user_at(n - 1)
        self._prev_line_chars = int(line_chars[-1])
        self._users.add(users[run_start])
        self.lines += n
        self.loads += space_at.size
        return True

    def finish(self) -> int | None:
        """The number of users when no user appears on two separate runs of lines, else None."""
        return self._users.distinct()


class _UserHashes:
    """The hash of every run's user, to find a user on two separate runs of lines (S2S-EFF).

    Memory is bounded: past `_USERS_IN_MEMORY` hashes they are appended to temporary files by
    their top bits, so the end's duplicate search sorts one range of hash values at a time.
    """

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._count = 0
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def add(self, hashes: np.ndarray) -> None:
        self._pending.append(hashes)
        self._count += hashes.size
        if self._count >= _USERS_IN_MEMORY:
            self._write_ranges()

    def _range_file(self, r: int) -> Path:
        assert self._folder is not None
        return Path(self._folder.name) / f"{r:02d}.u64"

    def _write_ranges(self) -> None:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="s2s_validator_users_")
        if not self._pending:
            return
        hashes = np.concatenate(self._pending)
        self._pending, self._count = [], 0
        ranges = (hashes >> np.uint64(64 - _RANGE_BITS)).astype(np.uint8)
        order = np.argsort(ranges, kind="stable")  # radix sort for 8-bit keys
        edges = np.searchsorted(ranges[order], np.arange((1 << _RANGE_BITS) + 1))
        for r in range(1 << _RANGE_BITS):
            if edges[r + 1] > edges[r]:
                with open(self._range_file(r), "ab") as out:
                    hashes[order[edges[r] : edges[r + 1]]].tofile(out)

    def distinct(self) -> int | None:
        """How many users, or None when a hash repeats."""
        if self._folder is None:
            return _distinct(np.concatenate([np.empty(0, dtype=np.uint64), *self._pending]))
        self._write_ranges()
        total = 0
        try:
            for r in range(1 << _RANGE_BITS):
                path = self._range_file(r)
                count = _distinct(np.fromfile(path, dtype=np.uint64)) if path.exists() else 0
                if count is None:
                    return None
                total += count
        finally:
            self._folder.cleanup()
        return total


def _distinct(hashes: np.ndarray) -> int | None:
    hashes.sort()
    return None if (hashes[1:] == hashes[:-1]).any() else int(hashes.size)
