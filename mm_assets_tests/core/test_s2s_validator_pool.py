"""The build checks' file work: many files validated side by side, big files never read whole.

Files are built by hand with the standard library's gzip, never with the project's writer.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from mm_assets.core.s2s_validator import validate_file
from mm_assets.core.s2s_validator_pool import (
    WORKER_MEMORY_BYTES,
    validate_files,
    validation_workers,
)

HEADER = (
    "Version: 3\nFileIdentifier: {name}\nDateCreated: 1704110400\nUserNamespace: mm\n"
    "SegmentNamespace: ep\nMobile: 0\n\n"
)


def s2s_file(folder: Path, name: str, rows: list[str]) -> Path:
    path = folder / name
    path.write_bytes(gzip.compress((HEADER.format(name=name) + "\n".join(rows) + "\n").encode()))
    return path


def test_files_validated_side_by_side_get_the_reports_of_one_by_one(tmp_path: Path) -> None:
    paths = [
        s2s_file(tmp_path, f"Partner_2024010112000{i}.log.gz", [f"u{j} {i}:0" for j in range(50)])
        for i in range(4)
    ]
    s2s_file(tmp_path, paths[2].name, ["u1 1:0", "u2 2:00", "u1 3:0"])  # S2S-TS, S2S-EFF
    reports = validate_files(paths, cpus=2)  # two worker threads
    assert reports == [validate_file(p) for p in paths]
    assert [r.ok for r in reports] == [True, True, False, True]
    assert reports[2].violation_counts == {"S2S-TS": 1, "S2S-EFF": 1}


def test_workers_are_bounded_by_cpus_files_and_memory() -> None:
    big = [10**9] * 5
    assert validation_workers(big, memory_budget_bytes=2**30, cpus=2) == 2
    assert validation_workers(big[:1], memory_budget_bytes=2**30, cpus=2) == 1
    assert validation_workers(big, memory_budget_bytes=WORKER_MEMORY_BYTES, cpus=2) == 1
    assert validation_workers(big, memory_budget_bytes=2**30, cpus=1) == 1


# The child validates and hashes the file as the two build checks do, then reports its peak
# resident memory: VmHWM, its own address space's high-water mark (ru_maxrss would carry the
# parent's over from the fork).
_CHILD = """
import json, re, sys
from pathlib import Path
from mm_assets.core.s2s_validator_pool import validate_files
from mm_assets.delivery.gate import file_md5
path = Path(sys.argv[1])
report, = validate_files([path], memory_budget_bytes=2**30, cpus=2)
md5 = file_md5(path)
status = Path("/proc/self/status").read_text()
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
print(json.dumps({"ok": report.ok, "lines": report.lines, "md5": md5, "peak": peak}))
"""


def test_a_file_larger_than_the_memory_it_is_checked_in_is_streamed(tmp_path: Path) -> None:
    # 300 MB on disk and decompressed (gzip level 0 stores the text): a check that read the
    # file, or its text, whole would peak above 300 MB; streaming stays far below.
    name = "Partner_20240101120000.log.gz"
    loads = " ".join(f"{1_000_000 + i}:1704110400" for i in range(24))  # 455 bytes a line
    lines = 660_000
    path = tmp_path / name
    with gzip.open(path, "wb", compresslevel=0) as out:
        out.write(HEADER.format(name=name).encode())
        for start in range(0, lines, 60_000):
            chunk = "".join(f"user{i:012d} {loads}\n" for i in range(start, start + 60_000))
            out.write(chunk.encode())
    size = path.stat().st_size
    assert size > 300 * 10**6
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    assert result["ok"] and result["lines"] == lines
    assert result["peak"] < 200 * 2**20, result["peak"]
