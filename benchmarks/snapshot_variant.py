"""Snapshot mode's variant of the build benchmark (`build_benchmark.py --snapshot`).

For each size: a held state of the export's members (seeded, not timed), then a second
snapshot of the same audience with ~5 % of its rows gone and ~5 % new, built twice, each in
its own process: as a delta build (today's) and as a snapshot diff against the state. Printed:
wall time, CPU seconds and peak RSS of both, the added wall and CPU time (on a shared machine
the CPU figure says what the wall time cannot), and the diff's adds/removals/unchanged.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from subprocess import run

import pyarrow as pa
import pyarrow.parquet as pq
from build_benchmark import measure  # benchmarks/ is on the path: scripts run from there


def make_second_snapshot(src: Path, dst: Path) -> None:
    """The next snapshot: every 20th row of `src` left out, as many fresh rows added."""
    from generate_export import generate

    dst.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, part in enumerate(sorted(src.glob("*.parquet"))):
        table = pq.read_table(part)
        keep = pa.array([n % 20 != 0 for n in range(table.num_rows)])
        pq.write_table(table.filter(keep), dst / f"part-{i:04d}.parquet", compression="zstd")
        total += table.num_rows
    pq.write_table(generate(total // 20, seed=11), dst / "part-new.parquet", compression="zstd")


def run_snapshot(src: Path, out: Path, memory_budget: str, gzip_level: int, seed: bool) -> dict:
    from mm_assets.core.audience_state import AudienceState
    from mm_assets.core.build_settings import BuildSettings, parse_size
    from mm_assets.core.export_reader import read_export_batch
    from mm_assets.core.s2s_writer import write_s2s_files
    from mm_assets.core.snapshot_diff import SnapshotOptions, diff_and_merge

    settings = BuildSettings(
        partner_name="BenchPartner",
        segment_namespace="bp",
        memory_budget_bytes=parse_size(memory_budget),
        gzip_level=gzip_level,
    )
    state = AudienceState(out / "state")
    options = SnapshotOptions(state_dir=out / "state", seed_batch=src.name if seed else "")
    start = time.perf_counter()
    read = read_export_batch(src, out / "raw", settings, buckets=state.pointer().buckets)
    t_read = time.perf_counter()
    merged, candidate = diff_and_merge(
        state,
        src.name,
        read.loads_dir,
        out / "merged",
        out / "candidate",
        settings,
        options,
        now=int(time.time()),
    )
    t_merge = time.perf_counter()
    files = write_s2s_files(merged.merged_dir, out / "outbox" / src.name, settings)
    end = time.perf_counter()
    seconds = end - start
    phases = {"read": t_read - start, "group": t_merge - t_read, "write": end - t_merge}
    # As if MediaMath accepted every file: the state asset's work, timed apart (another run).
    promote_start, promote_cpu = time.perf_counter(), time.process_time()
    state.promote(candidate, set(candidate.families), decided_at="benchmark")
    promote_seconds = time.perf_counter() - promote_start
    promote_cpu = time.process_time() - promote_cpu
    totals = {
        name: sum(f[name] for f in candidate.families.values())
        for name in ("held", "members", "adds", "removals", "unchanged")
    }
    return {
        "seconds": seconds,
        "promote_seconds": promote_seconds,
        "promote_cpu": promote_cpu,
        "phases": phases,
        "files": len(files),
        **totals,
    }


def snapshot_benchmark(root: Path, sizes: list[int], memory_budget: str, gzip_level: int) -> None:
    common = ["--memory-budget", memory_budget, "--gzip-level", str(gzip_level)]
    for rows in sizes:
        first = root / f"export_{rows}" / f"batch_{rows}"
        second = root / f"snapshot_{rows}" / f"batch_{rows}_next"
        # In child processes, as build_benchmark generates its exports.
        if not first.exists():
            generator = str(Path(__file__).with_name("generate_export.py"))
            run([sys.executable, generator, "--rows", str(rows), "--out", str(first)], check=True)
        if not second.exists():
            run([sys.executable, __file__, "--make-second", str(first), str(second)], check=True)
        work = root / f"snapshot_work_{rows}"
        # A fresh state each time: a state left by an earlier run holds the second snapshot
        # already (the diff run advances it), and seeding over it would measure no diff.
        shutil.rmtree(work, ignore_errors=True)
        measure([str(first), str(work), "seed", *common], script=__file__)
        delta_out = str(root / f"delta_{rows}")
        delta, delta_rss, delta_cpu = measure(
            ["--worker", "core", "--src", str(second), "--out", delta_out, *common]
        )
        snap, snap_rss, snap_cpu = measure(
            [str(second), str(work), "diff", *common], script=__file__
        )
        added = snap["seconds"] / delta["seconds"] - 1
        snap_cpu -= snap["promote_cpu"]  # the build's CPU seconds, as the wall time's
        print(
            f"snapshot rows={rows:>11,} held={snap['held']:,} "
            f"delta_wall={delta['seconds']:.1f}s delta_peak_rss_MB={delta_rss:.0f} "
            f"snapshot_wall={snap['seconds']:.1f}s snapshot_peak_rss_MB={snap_rss:.0f} "
            f"state_advance={snap['promote_seconds']:.1f}s "
            f"added_wall={added:+.0%} delta_cpu={delta_cpu:.1f}s snapshot_cpu={snap_cpu:.1f}s "
            f"added_cpu={snap_cpu / delta_cpu - 1:+.0%} "
            f"adds={snap['adds']:,} removals={snap['removals']:,} "
            f"unchanged={snap['unchanged']:,} files={snap['files']} "
            f"(delta {_phases(delta)}; snapshot {_phases(snap)}, group = merge + diff)",
            flush=True,
        )


def _phases(result: dict) -> str:
    return " ".join(f"{name}={seconds:.1f}s" for name, seconds in result["phases"].items())


if __name__ == "__main__":
    if sys.argv[1] == "--make-second":
        make_second_snapshot(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        src, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
        budget, level = sys.argv[5], int(sys.argv[7])
        print(json.dumps(run_snapshot(src, out, budget, level, seed=mode == "seed")))
