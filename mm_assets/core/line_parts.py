"""Compressed line parts: what the merge hands the writer, and how the writer joins them into
one gzip member per S2S file (S2S-FMT, S2S-QUOTA). Pigz's layout, without the shared window.

A **part** is some whole users' S2S lines of one file family (S2S-NAME, S2S-MOB), compressed
as raw deflate (no zlib or gzip wrapper) by its own compressor and ended with a sync flush,
never with a final block. Such streams concatenate into one valid deflate stream: each ends
byte-aligned after an empty stored block, and none refers back into another (each had a fresh
window). A file is then

    gzip header (10 bytes) + header part (S2S-HDR) + parts ... + final empty block + trailer

where the trailer's CRC-32 is the parts' CRCs combined (`crc32_combine`) and ISIZE the text's
length modulo 2**32: ONE standard gzip member, so any reader gets the whole text.

The lines folder the merge writes (`MergeReport.merged_dir`, the writer's `merged_dir`):

    LINES/parts.json                          the index, written last (the merge's completion
                                              mark): per family (agency, mobile) its parts in
                                              order, each with path, crc32, text_bytes,
                                              gz_bytes, users, lines, loads
    LINES/taxonomy=<agency|_global>/mobile=<0|1>/b<bucket>-<n>.deflate   one part's bytes

A part never holds part of a user's lines, and its text is at most `part_text_limit` bytes (a
single larger user stands alone), so that its deflate bytes fit a file beside the header:
the writer splits a family into files at part boundaries only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from zlib_ng import zlib_ng

from mm_assets.core.atomic_files import write_text_atomically
from mm_assets.core.build_settings import BuildSettings
from mm_assets.core.s2s_format import FileHeader

PARTS_INDEX = "parts.json"
# Text per part: enough that the fresh window and the sync flush cost nothing measurable
# (< 0.1 % of bytes), small enough that two cores share a bucket's family and the bucket's
# compression overlaps the next bucket's grouping.
PART_TEXT_BYTES = 4 * 2**20
GZIP_HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3])  # deflate, no name, mtime 0, Unix
FINAL_BLOCK = b"\x03\x00"  # an empty fixed-Huffman block with BFINAL set: ends the stream
GZIP_TRAILER_BYTES = 8  # CRC-32 and ISIZE, little-endian
# Longest file name an S2S header can carry (a file name has at most 255 bytes, S2S-NAME).
_LONGEST_NAME = "x" * 255


@dataclass(frozen=True)
class LinePart:
    """One part in the index; `path` is relative to the lines folder."""

    path: str
    crc32: int  # of the part's text
    text_bytes: int
    gz_bytes: int
    users: int
    lines: int
    loads: int


def worst_case_deflate(raw: int) -> int:
    """Most bytes deflate can emit for `raw` bytes of ASCII text plus a sync flush (stored
    blocks)."""
    return raw + 5 * (raw // 16_000 + 2)


def deflate_part(texts: list[memoryview | bytes], level: int) -> tuple[bytes, int, int]:
    """`texts` as one part: (raw deflate bytes ending in a sync flush, crc32, text bytes)."""
    compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15)
    out, crc, size = [], 0, 0
    for text in texts:
        # zlib-ng releases the GIL on both calls: parts compress on all cores.
        out.append(compressor.compress(text))
        crc = zlib_ng.crc32(text, crc)
        size += len(text)
    out.append(compressor.flush(zlib_ng.Z_SYNC_FLUSH))
    return b"".join(out), crc, size


def file_header(
    settings: BuildSettings, name: str, date_created: int, *, mobile: bool, hashed: bool
) -> FileHeader:
    """The S2S-HDR header of one file of a build."""
    return FileHeader(
        file_identifier=name,
        date_created=date_created,
        segment_namespace=settings.segment_namespace,
        mobile=mobile,
        user_namespace=settings.user_namespace,
        user_table_id=settings.user_table_id,
        hash_segments=hashed,
        hash_ids=settings.hash_ids,
    )


def file_overhead_bound(settings: BuildSettings) -> int:
    """Most bytes a file of this build adds around its parts, whatever its family and name:
    gzip header, the header part, the final block and the trailer."""
    longest = file_header(settings, _LONGEST_NAME, 10**11, mobile=True, hashed=True)
    return (
        len(GZIP_HEADER)
        + worst_case_deflate(len(longest.render()))
        + len(FINAL_BLOCK)
        + GZIP_TRAILER_BYTES
    )


def part_text_limit(settings: BuildSettings) -> int:
    """Most text one part may hold so its deflate bytes surely fit a file beside the header."""
    room = settings.max_file_bytes - file_overhead_bound(settings)
    raw = min(PART_TEXT_BYTES, room)
    while raw > 0 and worst_case_deflate(raw) > room:
        raw -= max(1, worst_case_deflate(raw) - room)
    return max(1, raw)  # no room at all: every user alone, and the writer refuses the header


def gzip_trailer(crc: int, text_bytes: int) -> bytes:
    return struct.pack("<II", crc & 0xFFFFFFFF, text_bytes & 0xFFFFFFFF)


def combine_crc(crc: int, part_crc: int, part_bytes: int) -> int:
    """The CRC-32 of two texts one after the other, from the CRC-32 of each."""
    return zlib_ng.crc32_combine(crc, part_crc, part_bytes)


def write_parts_index(lines_dir: Path, families: dict[tuple[str, bool], list[LinePart]]) -> None:
    """Write the index last and atomically: a lines folder without it is incomplete."""
    entries = [
        {"agency": agency, "mobile": mobile, "parts": [asdict(p) for p in parts]}
        for (agency, mobile), parts in sorted(families.items())
    ]
    write_text_atomically(lines_dir / PARTS_INDEX, json.dumps({"families": entries}))


def read_parts_index(lines_dir: Path) -> dict[tuple[str, bool], list[LinePart]]:
    index = lines_dir / PARTS_INDEX
    if not index.exists():
        raise FileNotFoundError(
            f"{index} is missing: the merge of this batch did not finish (or ran an older "
            "version that wrote Parquet lines); materialize merged_segment_loads again"
        )
    data = json.loads(index.read_text(encoding="utf-8"))
    return {
        (entry["agency"], entry["mobile"]): [LinePart(**p) for p in entry["parts"]]
        for entry in data["families"]
    }


def read_part_text(lines_dir: Path, part: LinePart) -> bytes:
    """A part's text (for checks and tests: the writer copies parts without inflating them)."""
    inflater = zlib_ng.decompressobj(-15)
    return inflater.decompress((lines_dir / part.path).read_bytes()) + inflater.flush()
