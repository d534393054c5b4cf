"""Independent validator for built MediaMath S2S audience files (``*.log.gz``).

It re-reads a finished file and reports every violation of the S2S rules numbered in
``docs/rules.md`` (S2S-FMT, S2S-HDR, S2S-SEG, S2S-TS, S2S-LINE, S2S-EFF, S2S-MOB,
S2S-NAME, S2S-QUOTA).

It deliberately imports nothing from the rest of ``mm_assets`` and defines its own constants:
a validator that shared the writer's constants or helpers would inherit the writer's mistakes
and then agree with them. No Dagster import either, so the CLI and tests stay light.

Files can be 4 GB gzipped (tens of millions of lines), so the content is streamed: decompressed
in chunks, split into lines as bytes, and users are remembered as 8-byte digests only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mm_assets.core.s2s_validator_fast import RowBlockScanner

# isal decompressed our 1 M-line sample about 3x faster than stdlib gzip and 1.5x faster than
# zlib-ng; the fallbacks keep the validator usable where those wheels are missing.
try:
    from isal import igzip as _gzip_impl
    from isal.isal_zlib import error as _CodecError
except ImportError:  # pragma: no cover - depends on the environment
    try:
        from zlib_ng import gzip_ng as _gzip_impl
        from zlib_ng.zlib_ng import error as _CodecError
    except ImportError:
        _gzip_impl = gzip
        _CodecError = zlib.error

__all__ = [
    "FileReport",
    "Violation",
    "exact_report",
    "fast_report",
    "main",
    "validate_file",
]

RULE_SEG = "S2S-SEG"
RULE_TS = "S2S-TS"
RULE_EFF = "S2S-EFF"
RULE_LINE = "S2S-LINE"
RULE_FMT = "S2S-FMT"
RULE_HDR = "S2S-HDR"
RULE_MOB = "S2S-MOB"
RULE_NAME = "S2S-NAME"
RULE_QUOTA = "S2S-QUOTA"

# S2S-QUOTA's "4 GB", read as decimal: the smaller of the vendor's two possible meanings, so
# a file this passes is within whichever one MediaMath enforces (as the quotas read it).
MAX_FILE_BYTES = 4 * 10**9
MAX_LINE_CHARS = 8000  # every line must have FEWER than this many characters
MAX_SEGMENT_CODE = 2_147_483_647
HEADER_ORDER = (
    "Version",
    "FileIdentifier",
    "DateCreated",
    "UserNamespace",
    "UserTableId",
    "SegmentNamespace",
    "Mobile",
    "HashSegments",
    "HashIDs",
)
REQUIRED_HEADERS = (
    "Version",
    "FileIdentifier",
    "DateCreated",
    "UserNamespace",
    "SegmentNamespace",
    "Mobile",
)
_HEADER_INDEX = {name: i for i, name in enumerate(HEADER_ORDER)}
_HEADER_BY_LOWER = {name.lower(): name for name in HEADER_ORDER}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 20
# The block path's unit of decompressed text: large enough that numpy's per-call costs vanish,
# small enough that its arrays (a few times the block) stay well inside a worker's memory.
_FAST_BLOCK_BYTES = 2 << 20
# A line this long without a newline is far past S2S-LINE already; beyond it we stop buffering
# so that a file without newlines cannot exhaust memory.
_MAX_PENDING_BYTES = 1 << 20

_NAME_RE = re.compile(r"(?:[A-Za-z0-9]+_)?[A-Za-z0-9]+_([0-9]{14}|[0-9]{12})\.log\.gz")

# Segment codes 0..2,147,483,647 without sign or leading zeros, spelled out digit by digit so
# the common case is decided inside the regex engine instead of by int() per load.
_SEG_INT = (
    rb"(?:0|[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}"
    rb"|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}"
    rb"|21474836[0-3][0-9]|214748364[0-7])"
)
# Hashed segment codes and user IDs: no whitespace, no control characters, no ':'.
_TOKEN_CHAR = rb"[^\x00-\x20:\x7f]"
_TOKEN = _TOKEN_CHAR + rb"++"
_TS = rb"(?:0|-1|[1-9][0-9]*+)"
# Whole-row patterns for the per-line path; a row that does not match is re-examined slowly to
# explain exactly what is wrong, so these only need to accept valid rows. Possessive
# quantifiers: nothing here needs backtracking, and they measured ~20% faster.
_ROW_INT_RE = re.compile(_TOKEN + rb"(?: " + _SEG_INT + rb":" + _TS + rb")++")
_ROW_HASH_RE = re.compile(_TOKEN + rb"(?: " + _TOKEN + rb":" + _TS + rb")++")
# The same languages for RE2 (the block path's engine), which has no possessive quantifiers
# and needs none: it never backtracks.
_TOKEN_RE2 = _TOKEN_CHAR + rb"+"
_TS_RE2 = rb"(?:0|-1|[1-9][0-9]*)"
_ROW_INT_RE2 = (_TOKEN_RE2 + rb"(?: " + _SEG_INT + rb":" + _TS_RE2 + rb")+").decode()
_ROW_HASH_RE2 = (_TOKEN_RE2 + rb"(?: " + _TOKEN_RE2 + rb":" + _TS_RE2 + rb")+").decode()

_SEG_INT_STR_RE = re.compile(r"0|[1-9][0-9]*")
_TS_STR_RE = re.compile(r"0|-1|[1-9][0-9]*")
_DATE_CREATED_RE = re.compile(r"[1-9][0-9]*")
_HEADER_LIKE_RE = re.compile(rb"\s*[A-Za-z][A-Za-z0-9_-]*\s*:")


@dataclass(frozen=True)
class Violation:
    """One broken rule, at a 1-based line of the decompressed text or file-level (None)."""

    rule: str
    line: int | None
    message: str


@dataclass
class FileReport:
    """Everything found in one file."""

    path: Path
    violations: list[Violation]
    violation_counts: dict[str, int]
    header: dict[str, str]
    users: int
    lines: int
    loads: int
    bytes: int

    @property
    def ok(self) -> bool:
        return not any(self.violation_counts.values())

    @property
    def total_violations(self) -> int:
        return sum(self.violation_counts.values())


def _short(text: str, limit: int = 60) -> str:
    """Repr of a value, cut so a runaway 8,000-character token cannot flood a message."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text):,} characters)"
    return repr(text)


def _decode(raw: bytes) -> str:
    # surrogateescape keeps undecodable bytes as one character each and round-trips exactly,
    # so keys built from the decoded text equal those the fast path builds from raw bytes.
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class _State:
    """Streaming state of one validation run; fed one line at a time, in order."""

    path: Path
    max_per_rule: int
    violations: list[Violation] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)
    header_line_of: dict[str, int] = field(default_factory=dict)
    last_header_index: int = -1
    in_header: bool = True
    header_lines: int = 0
    rows_seen: bool = False
    mobile: bool = False
    row_re: re.Pattern[bytes] = _ROW_INT_RE
    hash_segments: bool = False
    seen_users: set[bytes] = field(default_factory=set)
    current_key: bytes | None = None
    current_pairs: set[bytes] = field(default_factory=set)
    prev_row_chars: int = 0
    prev_row_line: int = 0
    line_no: int = 0
    lines: int = 0
    loads: int = 0

    # -- reporting ---------------------------------------------------------------------------

    def add(self, rule: str, line: int | None, message: str) -> None:
        count = self.counts.get(rule, 0) + 1
        self.counts[rule] = count
        if count <= self.max_per_rule:
            self.violations.append(Violation(rule, line, message))

    # -- line dispatch -----------------------------------------------------------------------

    def feed(self, lines: list[bytes], all_ascii: bool) -> None:
        """Validate complete lines (without their ``\\n``) in file order."""
        n = self.line_no
        in_header = self.in_header
        fullmatch = self.row_re.fullmatch
        mobile = self.mobile
        seen = self.seen_users
        blake2b = hashlib.blake2b
        n_lines = n_loads = 0
        for line in lines:
            n += 1
            if in_header:
                self.line_no = n
                self.header_line(line, n)
                in_header = self.in_header
                fullmatch = self.row_re.fullmatch
                mobile = self.mobile
                continue
            # This loop runs once per row of files with tens of millions of rows, so the
            # common case (a valid ASCII row of a user not seen before) is handled inline;
            # everything else goes through row()/track(), which own the rules.
            if (
                line
                and len(line) < MAX_LINE_CHARS
                and (all_ascii or line.isascii())
                and fullmatch(line)
            ):
                loads = line.split(b" ")
                uid = loads[0]
                del loads[0]
                key = uid.lower() if mobile else uid
                if key != self.current_key:
                    digest = blake2b(key, digest_size=8).digest()
                    pairs = set(loads)
                    if digest not in seen and len(pairs) == len(loads):
                        seen.add(digest)
                        self.current_key = key
                        self.current_pairs = pairs
                        self.prev_row_chars = len(line)
                        self.prev_row_line = n
                        self.rows_seen = True
                        n_lines += 1
                        n_loads += len(loads)
                        continue
                self.track(uid, loads, len(line), len(loads[0]), n)
                continue
            self.row_slow(line, n)
        self.line_no = n
        self.lines += n_lines
        self.loads += n_loads

    def overlong_line(self, nbytes: int) -> None:
        """A line too long to buffer: S2S-LINE, and its content is not examined."""
        self.line_no += 1
        # S2S-LINE
        self.add(
            RULE_LINE,
            self.line_no,
            f"line has {nbytes:,} bytes (more than {_MAX_PENDING_BYTES:,}); must be fewer than "
            f"{MAX_LINE_CHARS:,} characters; its content was not checked",
        )
        if not self.in_header:
            self.lines += 1
            self.rows_seen = True
            # The user on that line is unknown, so the next line cannot be a continuation.
            self.current_key = None
            self.current_pairs = set()

    # -- shared per-line checks ----------------------------------------------------------------

    def text_of(self, raw: bytes, n: int) -> str:
        """Decode one line, reporting S2S-FMT (UTF-8), S2S-LINE and S2S-FMT (CR) on the way."""
        if raw.isascii():
            text = raw.decode("ascii")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                # S2S-FMT: the file is text, and MediaMath reads it as UTF-8.
                self.add(
                    RULE_FMT, n, f"line is not valid UTF-8 (invalid byte at offset {exc.start})"
                )
                text = _decode(raw)
        if len(text) >= MAX_LINE_CHARS:
            # S2S-LINE
            self.add(
                RULE_LINE,
                n,
                f"line has {len(text):,} characters; must be fewer than {MAX_LINE_CHARS:,}",
            )
        if "\r" in text:
            # S2S-FMT: Unix line endings only.
            self.add(
                RULE_FMT, n, "line contains a carriage return (\\r); use \\n line endings only"
            )
        return text

    # -- header section ------------------------------------------------------------------------

    def header_line(self, raw: bytes, n: int) -> None:
        stripped = raw.strip()
        if stripped and not _HEADER_LIKE_RE.match(raw):
            first_word = stripped.split(None, 1)[0].decode("utf-8", "replace").lower()
            if first_word not in _HEADER_BY_LOWER:
                # S2S-FMT: a row where a header line or the blank separator line was expected.
                if self.header_lines:
                    msg = "header section must be followed by exactly one blank line"
                else:
                    msg = "file must start with the header section and one blank line"
                self.add(RULE_FMT, n, msg)
                self.finish_header()
                self.row(raw, n)
                return
        text = self.text_of(raw, n)
        if not stripped:
            # S2S-FMT: the separator must be an empty line (a CR is reported above).
            if raw.replace(b"\r", b""):
                self.add(RULE_FMT, n, "blank line after the header must be empty")
            self.finish_header()
            return
        self.header_lines += 1
        text = text.rstrip("\r")
        name, sep, value = text.partition(":")
        if not sep:
            name, _, value = text.strip().partition(" ")
        name = name.strip()
        value = value.strip()
        if not sep or (value and text != f"{name}: {value}"):
            # S2S-HDR
            self.add(RULE_HDR, n, f"header line {_short(text)} must be exactly 'Name: value'")
        if name not in _HEADER_INDEX:
            hint = _HEADER_BY_LOWER.get(name.lower())
            extra = f" (did you mean {hint!r}?)" if hint else ""
            # S2S-HDR
            self.add(RULE_HDR, n, f"unknown header {_short(name)}{extra}")
            self.header.setdefault(name, value)
            return
        if name in self.header_line_of:
            # S2S-HDR
            self.add(
                RULE_HDR,
                n,
                f"header {name!r} is repeated (first on line {self.header_line_of[name]})",
            )
            return
        index = _HEADER_INDEX[name]
        if index < self.last_header_index:
            # S2S-HDR
            self.add(
                RULE_HDR,
                n,
                f"header {name!r} is out of order: it must come before "
                f"{HEADER_ORDER[self.last_header_index]!r} (order: {', '.join(HEADER_ORDER)})",
            )
        self.last_header_index = max(self.last_header_index, index)
        self.header[name] = value
        self.header_line_of[name] = n

    def finish_header(self) -> None:
        """Check header values once the whole header is known (UserTableId needs the namespace)."""
        self.in_header = False
        h = self.header
        at = self.header_line_of.get
        # S2S-HDR: required headers.
        for name in REQUIRED_HEADERS:
            if name not in self.header_line_of:
                self.add(RULE_HDR, None, f"required header {name!r} is missing")
        if "Version" in self.header_line_of and h["Version"] != "3":
            self.add(RULE_HDR, at("Version"), f"Version must be 3, got {_short(h['Version'])}")
        if "FileIdentifier" in self.header_line_of and h["FileIdentifier"] != self.path.name:
            self.add(
                RULE_HDR,
                at("FileIdentifier"),
                f"FileIdentifier {_short(h['FileIdentifier'])} must equal the file name "
                f"{self.path.name!r}",
            )
        if "DateCreated" in self.header_line_of and not _DATE_CREATED_RE.fullmatch(
            h["DateCreated"]
        ):
            self.add(
                RULE_HDR,
                at("DateCreated"),
                f"DateCreated must be a positive integer Unix time in seconds, "
                f"got {_short(h['DateCreated'])}",
            )
        for name in ("UserNamespace", "SegmentNamespace"):
            if name in self.header_line_of and not h[name]:
                self.add(RULE_HDR, at(name), f"{name} must not be empty")
        if "UserTableId" in self.header_line_of:
            if h.get("UserNamespace") == "mm":
                self.add(
                    RULE_HDR,
                    at("UserTableId"),
                    "UserTableId must be omitted when UserNamespace is 'mm'",
                )
            if not h["UserTableId"]:
                self.add(RULE_HDR, at("UserTableId"), "UserTableId must not be empty")
        for name in ("Mobile", "HashSegments", "HashIDs"):
            if name in self.header_line_of and h[name] not in ("0", "1"):
                self.add(RULE_HDR, at(name), f"{name} must be 0 or 1, got {_short(h[name])}")
        # S2S-MOB: with Mobile: 1 the user IDs are device IDs, which MediaMath treats
        # case-insensitively; nothing else about S2S-MOB can be checked from the file alone,
        # because a cookie ID and a device ID can look identical (both are often UUIDs), so
        # "never mix the two kinds" is not decidable here.
        self.mobile = h.get("Mobile") == "1" and "Mobile" in self.header_line_of
        self.hash_segments = h.get("HashSegments") == "1" and "HashSegments" in self.header_line_of
        self.row_re = _ROW_HASH_RE if self.hash_segments else _ROW_INT_RE

    # -- rows ------------------------------------------------------------------------------------

    def row(self, raw: bytes, n: int, ascii_known: bool = False) -> None:
        # Fast path: a plain ASCII row that the whole-row pattern accepts is valid except for
        # the cross-line S2S-EFF checks done in track().
        if (
            raw
            and len(raw) < MAX_LINE_CHARS
            and (ascii_known or raw.isascii())
            and self.row_re.fullmatch(raw)
        ):
            parts = raw.split(b" ")
            uid = parts[0]
            del parts[0]
            self.track(uid, parts, len(raw), len(parts[0]), n)
        else:
            self.row_slow(raw, n)

    def row_slow(self, raw: bytes, n: int) -> None:
        """Explain everything wrong with a row that the fast pattern rejected."""
        if not raw:
            # S2S-FMT: exactly one blank line, and only between header and rows.
            if self.rows_seen:
                self.add(RULE_FMT, n, "blank line among rows")
            else:
                self.add(RULE_FMT, n, "header must be followed by exactly one blank line")
            return
        text = self.text_of(raw, n)
        # S2S-FMT: field separators.
        if not text.strip():
            self.add(RULE_FMT, n, "row contains only whitespace")
            return
        if "\t" in text:
            self.add(RULE_FMT, n, "row contains a tab; fields are separated by single spaces")
        cleaned = text.replace("\t", "").replace("\r", "")
        if not cleaned.isprintable():
            # Lone surrogates stand for undecodable bytes, already reported as not UTF-8.
            bad = next(
                (c for c in cleaned if not c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF),
                None,
            )
            if bad is not None:
                self.add(
                    RULE_FMT,
                    n,
                    f"row contains a control or whitespace character U+{ord(bad):04X}",
                )
        if text.startswith(" "):
            self.add(RULE_FMT, n, "row starts with a space")
        if text.endswith(" "):
            self.add(RULE_FMT, n, "row ends with a space")
        if "  " in text.strip(" "):
            self.add(RULE_FMT, n, "row contains consecutive spaces")
        tokens = text.split()
        uid, loads = tokens[0], tokens[1:]
        if ":" in uid:
            self.add(
                RULE_FMT, n, f"row must start with a user ID, found {_short(uid)} (contains ':')"
            )
        if not loads:
            self.add(RULE_FMT, n, "row has no SegmentCode:UnixTimestamp load")
        for tok in loads:
            seg, sep, ts = tok.rpartition(":")
            if not sep:
                self.add(RULE_FMT, n, f"{_short(tok)} is not a SegmentCode:UnixTimestamp load")
                continue
            self.check_segment(seg, tok, n)
            if not _TS_STR_RE.fullmatch(ts):
                # S2S-TS
                self.add(
                    RULE_TS,
                    n,
                    f"timestamp {_short(ts)} in {_short(tok)} must be 0, -1 or a positive "
                    f"Unix time in seconds",
                )
        self.track(
            uid.encode("utf-8", "surrogateescape"),
            [t.encode("utf-8", "surrogateescape") for t in loads],
            len(text),
            len(loads[0]) if loads else 0,
            n,
        )

    def check_segment(self, seg: str, tok: str, n: int) -> None:
        # S2S-SEG
        if not seg:
            self.add(RULE_SEG, n, f"load {_short(tok)} has an empty segment code")
        elif self.hash_segments:
            if ":" in seg:
                self.add(RULE_SEG, n, f"segment code {_short(seg)} must not contain ':'")
        elif not _SEG_INT_STR_RE.fullmatch(seg):
            self.add(
                RULE_SEG,
                n,
                f"segment code {_short(seg)} must be an unsigned base-10 integer without "
                f"leading zeros (declare HashSegments: 1 for other codes)",
            )
        elif int(seg) > MAX_SEGMENT_CODE:
            self.add(
                RULE_SEG,
                n,
                f"segment code {seg} exceeds {MAX_SEGMENT_CODE:,} (declare HashSegments: 1 "
                f"for codes that are not 32-bit integers)",
            )

    def track(self, uid: bytes, loads: list[bytes], chars: int, first_chars: int, n: int) -> None:
        """S2S-EFF bookkeeping across lines: one run of consecutive lines per user."""
        self.rows_seen = True
        self.lines += 1
        self.loads += len(loads)
        # S2S-MOB: device IDs are case-insensitive, so ABC and abc are the same user.
        key = uid.lower() if self.mobile else uid
        if key == self.current_key:
            # S2S-EFF + S2S-LINE: a user may continue on the next line only when the previous
            # line could not take this line's first load.
            if self.prev_row_chars + 1 + first_chars < MAX_LINE_CHARS:
                self.add(
                    RULE_EFF,
                    n,
                    f"user ID {_short(_decode(uid))} continues from line {self.prev_row_line} "
                    f"although that line had room for the next load "
                    f"({self.prev_row_chars} + 1 + {first_chars} characters < "
                    f"{MAX_LINE_CHARS:,}); combine its loads on one line",
                )
            new = set(loads)
            if len(new) != len(loads) or not self.current_pairs.isdisjoint(new):
                self.report_repeated_pairs(uid, loads, self.current_pairs, n)
            self.current_pairs |= new
        else:
            digest = hashlib.blake2b(key, digest_size=8).digest()
            if digest in self.seen_users:
                # S2S-EFF: the same user on non-consecutive lines.
                how = " (Mobile: 1, device IDs compare case-insensitively)" if self.mobile else ""
                self.add(
                    RULE_EFF,
                    n,
                    f"user ID {_short(_decode(uid))} appears again after other users{how}; "
                    f"all loads of one user belong on one line",
                )
            else:
                self.seen_users.add(digest)
            self.current_key = key
            new = set(loads)
            if len(new) != len(loads):
                self.report_repeated_pairs(uid, loads, set(), n)
            self.current_pairs = new
        self.prev_row_chars = chars
        self.prev_row_line = n

    def report_repeated_pairs(
        self, uid: bytes, loads: list[bytes], earlier: set[bytes], n: int
    ) -> None:
        seen = set(earlier)
        repeated: list[str] = []
        for load in loads:
            if load in seen:
                repeated.append(_decode(load))
            seen.add(load)
        shown = ", ".join(repeated[:5]) + (", ..." if len(repeated) > 5 else "")
        # S2S-EFF: the same segment with a different timestamp is allowed, an identical
        # SegmentCode:UnixTimestamp pair is only waste.
        self.add(
            RULE_EFF,
            n,
            f"user ID {_short(_decode(uid))} repeats {len(repeated)} load(s): {shown}",
        )


def _check_name(path: Path, state: _State) -> None:
    # S2S-NAME
    name = path.name
    m = _NAME_RE.fullmatch(name)
    if not m:
        state.add(
            RULE_NAME,
            None,
            f"file name {name!r} must be [AgencyName_]PartnerName_YYYYMMDDHHMMSS.log.gz "
            f"using only 0-9 a-z A-Z _",
        )
        return
    stamp = m.group(1)
    parts = [int(stamp[i : i + 2]) for i in range(4, len(stamp), 2)]
    try:
        datetime(int(stamp[:4]), *parts)
    except ValueError:
        state.add(
            RULE_NAME, None, f"time stamp {stamp!r} in the file name is not a valid date-time"
        )


def validate_file(
    path: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_violations_per_rule: int = 20,
) -> FileReport:
    """Validate one S2S file; rule violations are reported, never raised.

    The block path (`fast_report`) settles a file whose rows are all valid; any doubt sends the
    file through the exact per-line path (`exact_report`), which explains every violation. The
    report is the exact path's either way.

    Raises OSError only when the file itself cannot be opened or read from disk.
    """
    limits = {"max_file_bytes": max_file_bytes, "max_violations_per_rule": max_violations_per_rule}
    return fast_report(path, **limits) or exact_report(path, **limits)


def _file_level_checks(path: Path, state: _State, max_file_bytes: int) -> int:
    """S2S-NAME and S2S-QUOTA, which need no content; returns the file's size."""
    size = path.stat().st_size
    _check_name(path, state)
    if size > max_file_bytes:
        # S2S-QUOTA
        state.add(
            RULE_QUOTA,
            None,
            f"file has {size:,} bytes gzipped; at most {max_file_bytes:,} are allowed",
        )
    return size


def _report(state: _State, size: int, users: int, lines: int, loads: int) -> FileReport:
    # File-level findings first, then by line; sort is stable so discovery order is kept.
    violations = sorted(state.violations, key=lambda v: -1 if v.line is None else v.line)
    return FileReport(
        path=state.path,
        violations=violations,
        violation_counts=dict(state.counts),
        header=dict(state.header),
        users=users,
        lines=lines,
        loads=loads,
        bytes=size,
    )


def exact_report(
    path: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_violations_per_rule: int = 20,
) -> FileReport:
    """The per-line path: every rule checked line by line, every violation explained."""
    path = Path(path)
    state = _State(path=path, max_per_rule=max(0, max_violations_per_rule))
    size = _file_level_checks(path, state, max_file_bytes)
    gzip_ok = _scan(path, state)
    if gzip_ok:
        if state.in_header:
            state.finish_header()
        if not state.rows_seen:
            # S2S-FMT: MediaMath's processing log calls this "File is empty".
            state.add(RULE_FMT, None, "File is empty")
    return _report(state, size, len(state.seen_users), state.lines, state.loads)


def fast_report(
    path: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_violations_per_rule: int = 20,
    block_bytes: int = _FAST_BLOCK_BYTES,
) -> FileReport | None:
    """The block path: the report of a file whose content breaks no rule, else None.

    Reads ``block_bytes`` of decompressed text at a time (memory is a few times that, plus
    8 bytes per user up to 4 M users, then temporary files, to find repeated users). The
    header goes through the per-line checks (a few lines); the rows through `RowBlockScanner`.
    None means "not proven valid": a content violation, a broken gzip layer, or a hash
    collision; `exact_report` then says which.
    """
    path = Path(path)
    state = _State(path=path, max_per_rule=max(0, max_violations_per_rule))
    size = _file_level_checks(path, state, max_file_bytes)
    file_level = dict(state.counts)
    with path.open("rb") as raw:
        if raw.read(2) != _GZIP_MAGIC:
            return None
    try:
        with _gzip_impl.open(path, "rb") as f:
            head = b""
            while (end := head.find(b"\n\n")) < 0:
                chunk = f.read(block_bytes)
                if not chunk or len(head) > _MAX_PENDING_BYTES:
                    return None
                head += chunk
            for line in head[: end + 1].split(b"\n"):
                state.line_no += 1
                state.header_line(line, state.line_no)
            if state.in_header or state.counts != file_level:
                return None
            scanner = RowBlockScanner(
                _ROW_HASH_RE2 if state.hash_segments else _ROW_INT_RE2,
                MAX_LINE_CHARS,
                case_insensitive_users=state.mobile,
            )
            block = head[end + 2 :]
            while True:
                chunk = f.read(block_bytes)
                block += chunk
                cut = block.rfind(b"\n") + 1
                if not chunk and cut < len(block):
                    # The last line may lack its "\n"; it is still a complete line.
                    block += b"\n"
                    cut = len(block)
                if cut and not scanner.scan(block[:cut]):
                    return None
                block = block[cut:]
                if not chunk:
                    break
                if len(block) > _MAX_PENDING_BYTES:
                    return None
    except (EOFError, gzip.BadGzipFile, zlib.error, _CodecError):
        return None
    users = scanner.finish()
    if not scanner.lines or users is None:
        return None
    return _report(state, size, users, scanner.lines, scanner.loads)


def _scan(path: Path, state: _State) -> bool:
    """Stream the decompressed lines into ``state``; False when the gzip layer is broken."""
    with path.open("rb") as raw:
        magic = raw.read(2)
    if magic != _GZIP_MAGIC:
        # S2S-FMT: gzip-compressed (MediaMath: "File is not in GZIP format").
        state.add(RULE_FMT, None, "File is not in GZIP format")
        return False
    carry = b""
    skipping = 0  # bytes of an overlong line dropped so far
    try:
        with _gzip_impl.open(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                if skipping:
                    i = chunk.find(b"\n")
                    if i < 0:
                        skipping += len(chunk)
                        continue
                    state.overlong_line(skipping + i)
                    skipping = 0
                    chunk = chunk[i + 1 :]
                data = carry + chunk if carry else chunk
                lines = data.split(b"\n")
                carry = lines.pop()
                state.feed(lines, data.isascii())
                if len(carry) > _MAX_PENDING_BYTES:
                    skipping = len(carry)
                    carry = b""
    except EOFError:
        # S2S-FMT
        state.add(
            RULE_FMT,
            None,
            f"gzip data is truncated (ends before the end-of-stream marker) after line "
            f"{state.line_no}",
        )
        return False
    except (gzip.BadGzipFile, zlib.error, _CodecError) as exc:
        # S2S-FMT
        state.add(RULE_FMT, None, f"gzip data is corrupt after line {state.line_no}: {exc}")
        return False
    if skipping:
        state.overlong_line(skipping)
    elif carry:
        # The last line may lack its "\n"; it is still a complete line.
        state.feed([carry], carry.isascii())
    return True


def _format_summary(report: FileReport, shown_path: str) -> str:
    if report.ok:
        return (
            f"{shown_path}: OK ({report.users:,} users, {report.lines:,} lines, "
            f"{report.loads:,} loads)"
        )
    total = report.total_violations
    hidden = total - len(report.violations)
    more = f" ({hidden} not shown)" if hidden else ""
    return f"{shown_path}: {total} violations{more}"


def main(argv: list[str] | None = None) -> int:
    """``mm-assets validate FILE...``: 0 all valid, 1 some invalid, 2 usage error."""
    parser = argparse.ArgumentParser(
        prog="mm-assets validate",
        description="Check MediaMath S2S audience files (.log.gz) against the S2S rules.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="S2S .log.gz files")
    parser.add_argument(
        "--max-violations",
        type=int,
        default=20,
        metavar="N",
        help="violations listed per rule and file (all are counted; default 20)",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=MAX_FILE_BYTES,
        metavar="BYTES",
        help="largest allowed gzipped size (S2S-QUOTA; default 4 GB = 4,000,000,000 bytes)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on bad arguments
        return exc.code if isinstance(exc.code, int) else 2
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            report = validate_file(
                path,
                max_file_bytes=args.max_file_bytes,
                max_violations_per_rule=args.max_violations,
            )
        except OSError as exc:
            print(f"{name}: error: {exc.strerror or exc}", file=sys.stderr)
            status = 2
            continue
        for v in report.violations:
            print(f"{name}:{'-' if v.line is None else v.line}: {v.rule}: {v.message}")
        print(_format_summary(report, name))
        if not report.ok and status == 0:
            status = 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
