"""What a build of S2S files needs to know: the partner's namespaces, limits and the input mapping.

A plain dataclass so the core stays free of Dagster; the Dagster resource fills it from `EnvVar`s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mm_assets.core.quota import MAX_FILE_BYTES
from mm_assets.core.s2s_format import require_name_part

GLOBAL_TAXONOMY = "@global"  # names the global data in `hashed_taxonomies`
INPUT_COLUMNS = ("user_id", "segment", "timestamp", "client", "device_type")
REQUIRED_COLUMNS = ("user_id", "segment")
# S2S-NAME: a file name is `Agency_Partner_YYYYMMDDHHMMSS.log.gz`, written first as
# `.NAME.partial`, and the merge names a folder after the agency. With both parts at most 100
# characters the longest name is 232 bytes, well inside the 255 bytes a file name may have.
MAX_NAME_PART_CHARS = 100


def parse_column_map(text: str) -> dict[str, str]:
    """`user_id=uid,segment=seg_code` -> {"user_id": "uid", "segment": "seg_code"}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, _, theirs = item.partition("=")
        if ours.strip() not in INPUT_COLUMNS or not theirs.strip():
            raise ValueError(
                f"column map entry {item!r}: expected one of {', '.join(INPUT_COLUMNS)}=NAME"
            )
        mapping[ours.strip()] = theirs.strip()
    return mapping


def parse_size(text: str | int) -> int:
    """`4GB`, `512MiB`, `1e9` or plain bytes -> bytes (GB = 10**9, GiB = 2**30)."""
    if isinstance(text, int):
        return text
    value = text.strip().upper().replace(" ", "")
    units = {
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
        "B": 1,
    }
    for unit, factor in units.items():
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * factor)
    return int(float(value))


@dataclass(frozen=True)
class BuildSettings:
    partner_name: str
    segment_namespace: str
    user_namespace: str = "mm"
    user_table_id: str | None = None
    # Taxonomies whose segment codes are strings (S2S-SEG, `HashSegments: 1`): sanitised agency
    # names, and GLOBAL_TAXONOMY for the global file.
    hashed_taxonomies: frozenset[str] = frozenset()
    hash_ids: bool = False
    # S2S-QUOTA: 4 GB per gzipped file; "GB" read as 10**9 bytes, the stricter reading.
    max_file_bytes: int = MAX_FILE_BYTES
    memory_budget_bytes: int = 1 * 2**30
    column_map: dict[str, str] = field(default_factory=dict)
    gzip_level: int = 4  # zlib-ng 4: ~1 % fewer bytes than zlib 6 at ~3x its speed (measured)
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)

    def __post_init__(self) -> None:
        require_name_part(self.partner_name, "partner name")
        if len(self.partner_name) > MAX_NAME_PART_CHARS:
            raise ValueError(
                f"partner name has more than {MAX_NAME_PART_CHARS} characters (S2S-NAME)"
            )
        if not self.segment_namespace or not self.user_namespace:
            raise ValueError("segment and user namespaces must not be empty (S2S-HDR)")
        if self.max_file_bytes < 4096:
            raise ValueError("the per-file size limit must be at least 4096 bytes")

    def is_hashed(self, agency: str) -> bool:
        # Case-insensitive, as the reader's check of segment codes (S2S-SEG) is.
        return (agency or GLOBAL_TAXONOMY).lower() in {t.lower() for t in self.hashed_taxonomies}

    def source_column(self, column: str) -> str:
        return self.column_map.get(column, column)
