"""Build benchmark: `mm-assets build` itself, the core alone, and a naive pandas baseline.

    python benchmarks/build_benchmark.py                          # 2 M and 20 M rows
    python benchmarks/build_benchmark.py --rows 2000000,20000000,50000000
    python benchmarks/build_benchmark.py --export /data/batch_7 --column-map user_id=uid,segment=seg
    python benchmarks/build_benchmark.py --rows 2000000 --variants build,core

Variants, each in its own process tree, one line each:

- `build`: `mm-assets build BATCH` as a user runs it (a Dagster run launched through the code
  location: read, merge, write and the blocking checks), in a fresh DAGSTER_HOME.
- `core`: the three core steps in one process, no Dagster.
- `pandas`: a first attempt (groupby + ' '.join + gzip.open), up to 20 M rows (it needs ~6 GiB
  at 20 M), Parquet or CSV exports only.

Printed: wall time, input rows/s, CPU seconds (user + system, all processes: the machine is
shared, CPU time says what wall time cannot), peak RSS (the largest process; for `build`
also the sampled sum of its process tree), gz bytes, and the phases: read, group (the
merge), write (the core's own seconds, from each step's report.json), checks (the check
steps' time in the run) and dagster (the rest of the wall time: process starts, imports,
event storage). For ours, the gz bytes Python's zlib level 6 gives on the same text.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PARTNER, NAMESPACE = "BenchPartner", "bp"
MAX_BASELINE_ROWS = 20_000_000


def run_core(src: Path, out: Path, memory_budget: str, gzip_level: int, column_map: str) -> dict:
    from mm_assets.core.build_settings import BuildSettings, parse_column_map, parse_size
    from mm_assets.core.export_reader import read_export_batch
    from mm_assets.core.s2s_writer import write_s2s_files
    from mm_assets.core.segment_merge import merge_segment_loads

    settings = BuildSettings(
        partner_name=PARTNER,
        segment_namespace=NAMESPACE,
        memory_budget_bytes=parse_size(memory_budget),
        gzip_level=gzip_level,
        column_map=parse_column_map(column_map),
    )
    start, c_start = time.perf_counter(), time.process_time()
    read = read_export_batch(src, out / "raw", settings)
    t_read, c_read = time.perf_counter(), time.process_time()
    merged = merge_segment_loads(read.loads_dir, out / "merged", settings)
    t_merge, c_merge = time.perf_counter(), time.process_time()
    files = write_s2s_files(merged.merged_dir, out / "outbox" / src.name, settings)
    end, c_end = time.perf_counter(), time.process_time()
    return {
        "rows": read.rows_read,
        "seconds": end - start,
        "phases": {"read": t_read - start, "group": t_merge - t_read, "write": end - t_merge},
        # CPU seconds of this process's threads per phase (child processes not included)
        "phase_cpu": {
            "read": c_read - c_start,
            "group": c_merge - c_read,
            "write": c_end - c_merge,
        },
        "gz_bytes": sum(f.bytes for f in files),
        "files": len(files),
        "outbox": str(out / "outbox" / src.name),
    }


def _sample_tree(root_pid: int, cpu_by_pid: dict[int, float]) -> int:
    """The RSS sum of a process and its descendants; records each one's CPU seconds so far."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
            times = proc.cpu_times()
            cpu_by_pid[proc.pid] = times.user + times.system
    return total


def run_build(src: Path, out: Path, memory_budget: str, gzip_level: int, column_map: str) -> dict:
    """`mm-assets build` in a fresh instance; phases from the reports and the run's steps."""
    home = out / "dagster_home"
    shutil.rmtree(out, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MM_ASSETS_WORK_DIR": str(out / "work"),
        "MM_ASSETS_OUTBOX_DIR": str(out / "outbox"),
        "MM_PARTNER_NAME": PARTNER,
        "MM_SEGMENT_NAMESPACE": NAMESPACE,
        "MM_ASSETS_MEMORY_BUDGET": memory_budget,
        "MM_ASSETS_GZIP_LEVEL": str(gzip_level),
        "MM_ASSETS_COLUMN_MAP": column_map,
    }
    cli = Path(sys.executable).with_name("mm-assets")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(cli), "build", str(src)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak_tree, done, cpu_by_pid = 0, threading.Event(), {}

    def sample() -> None:
        nonlocal peak_tree
        while not done.wait(0.2):
            peak_tree = max(peak_tree, _sample_tree(proc.pid, cpu_by_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(
            f"mm-assets build exited {proc.returncode}:\n{stdout.decode()}\n{stderr.decode()}"
        )
    from mm_assets.core.batch_work import MergeSummary, ReadSummary, WorkRoots, WriteSummary

    batch = src.name
    work = WorkRoots(export=src.parent, work=out / "work", outbox=out / "outbox").batch(batch)
    reports = {
        kind.STEP: work.load_if_any(kind) for kind in (ReadSummary, MergeSummary, WriteSummary)
    }
    run_id = next(
        line.split("(run ", 1)[1].rstrip(")")
        for line in stdout.decode().splitlines()
        if "(run " in line
    )
    checks, steps = _step_seconds(home, run_id)
    # A step without its report: the step's time in the run.
    phases = {
        phase: report.seconds if (report := reports[step]) else steps[step]
        for phase, step in (
            ("read", "raw_audiences"),
            ("group", "merged_segment_loads"),
            ("write", "s2s_files"),
        )
    }
    phases["checks"] = checks
    phases["dagster"] = seconds - sum(phases.values())
    manifest = json.loads((work.outbox / "manifest.json").read_text())
    read = reports[ReadSummary.STEP]
    return {
        "rows": read.rows_read if read else 0,
        "seconds": seconds,
        "phases": phases,
        "gz_bytes": sum(f["bytes"] for f in manifest["files"]),
        "files": len(manifest["files"]),
        "outbox": str(work.outbox),
        "tree_rss_MB": peak_tree / 2**20,
        # Processes the CLI does not wait for (code server) escape os.wait4's usage.
        "tree_cpu": sum(cpu_by_pid.values()),
        "steps": steps,
    }


def _step_seconds(home: Path, run_id: str) -> tuple[float, dict[str, float]]:
    """Wall time of the run's check steps (the union of their intervals: they may overlap),
    and every step's own time."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        stats = [s for s in instance.get_run_step_stats(run_id) if s.start_time and s.end_time]
    assets = ("raw_audiences", "merged_segment_loads", "s2s_files")
    spans = sorted((s.start_time, s.end_time) for s in stats if s.step_key not in assets)
    total, end = 0.0, 0.0
    for start, stop in spans:
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total, {s.step_key: round(s.end_time - s.start_time, 2) for s in stats}


def run_baseline(src: Path, out: Path, column_map: str) -> dict:
    """What a first attempt looks like: pandas groupby + ' '.join + gzip.open."""
    import pandas as pd

    start = time.perf_counter()
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
    frames = [
        pd.read_parquet(p) if p.name.endswith(".parquet") else pd.read_csv(p, dtype=str)
        for p in files
    ]
    df = pd.concat(frames, ignore_index=True)
    rows_in = len(df.index)
    renames = dict(item.split("=", 1)[::-1] for item in column_map.split(",") if item)
    df = df.rename(columns=renames)
    for column in ("client", "device_type", "timestamp"):
        if column not in df:
            df[column] = "" if column != "timestamp" else 0
    df["client"] = df["client"].fillna("")
    mobile = df["device_type"].fillna("cookie") != "cookie"
    df.loc[mobile, "user_id"] = df.loc[mobile, "user_id"].str.lower()
    df["mobile"] = mobile
    df = df.drop_duplicates(["client", "mobile", "user_id", "segment", "timestamp"])
    df["load"] = df["segment"].astype(str) + ":" + df["timestamp"].astype(str)
    lines = df.groupby(["client", "mobile", "user_id"])["load"].agg(" ".join).reset_index()
    out.mkdir(parents=True, exist_ok=True)
    gz_bytes = 0
    for (client, is_mobile), group in lines.groupby(["client", "mobile"]):
        path = out / f"{client or 'global'}_{int(is_mobile)}.log.gz"
        text = "\n".join(group["user_id"] + " " + group["load"]) + "\n"
        header = f"Version: 3\nFileIdentifier: {path.name}\nMobile: {int(is_mobile)}\n\n"
        with gzip.open(path, "wt") as f:
            f.write(header + text)
        gz_bytes += path.stat().st_size
    return {
        "rows": rows_in,
        "seconds": time.perf_counter() - start,
        "phases": {},
        "gz_bytes": gz_bytes,
        "files": len(list(out.glob("*.log.gz"))),
    }


def zlib6_bytes(outbox: Path) -> int:
    """gz bytes zlib level 6 gives on exactly the text of our files (streamed)."""
    total = 0
    for path in outbox.glob("*.log.gz"):
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        with gzip.open(path, "rb") as f:
            while chunk := f.read(8 * 2**20):
                total += len(comp.compress(chunk))
        total += len(comp.flush())
    return total


def measure(args: list[str], script: str = __file__) -> tuple[dict, float, float]:
    """Run one variant in a child process: its result, peak RSS (MB) and CPU seconds."""
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"variant {args[:2]} failed with status {status}")
    # Children the variant waited for (Dagster's processes) count in its usage too.
    return json.loads(output), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def _line(label: str, rows: int, result: dict, rss: float, cpu: float, extra: str = "") -> str:
    phases = " ".join(f"{k}={v:.1f}s" for k, v in result["phases"].items())
    tree = ""
    if "tree_rss_MB" in result:
        tree = f" tree_rss_MB={result['tree_rss_MB']:.0f}"
        cpu = max(cpu, result["tree_cpu"])
    return (
        f"rows={rows:>11,} variant={label:<9} wall={result['seconds']:7.1f}s "
        f"rows/s={rows / result['seconds']:>11,.0f} cpu={cpu:6.1f}s "
        f"peak_rss_MB={rss:5.0f}{tree} gz_bytes={result['gz_bytes']:,} "
        f"files={result['files']}" + (f" ({phases})" if phases else "") + extra
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000000,20000000", help="generated exports' sizes")
    parser.add_argument("--export", type=Path, help="an existing batch folder instead")
    parser.add_argument("--column-map", default="", help="e.g. user_id=uid,segment=seg")
    parser.add_argument("--variants", default="build,core,pandas")
    parser.add_argument("--memory-budget", default="1GiB")
    parser.add_argument("--gzip-level", type=int, default=4)
    parser.add_argument(
        "--snapshot", action="store_true", help="snapshot mode's diff vs a delta build instead"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--steps", action="store_true", help="print each Dagster step's time")
    parser.add_argument(
        "--phase-cpu", action="store_true", help="print the core's CPU seconds per phase"
    )
    parser.add_argument("--worker", choices=["build", "core", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = (args.memory_budget, args.gzip_level, args.column_map)
    if args.worker == "build":
        print(json.dumps(run_build(args.src, args.out, *common)))
        return
    if args.worker == "core":
        print(json.dumps(run_core(args.src, args.out, *common)))
        return
    if args.worker == "pandas":
        print(json.dumps(run_baseline(args.src, args.out, args.column_map)))
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="mm-bench-"))
    print(
        f"machine: {os.cpu_count()} cores; memory budget {args.memory_budget}; "
        f"gzip level {args.gzip_level}; work dir {root}",
        flush=True,
    )
    if args.snapshot:
        from snapshot_variant import snapshot_benchmark

        sizes = [int(r) for r in args.rows.split(",")]
        snapshot_benchmark(root, sizes, args.memory_budget, args.gzip_level)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    sources = (
        [(args.export.resolve(), None)]
        if args.export
        else [(root / f"export_{n}" / f"batch_{n}", n) for n in map(int, args.rows.split(","))]
    )
    for src, rows in sources:
        if rows is not None and not src.exists():
            # In a child process: a child forked from a parent holding the generated rows
            # would report the parent's pages as its own peak RSS.
            generator = Path(__file__).with_name("generate_export.py")
            subprocess.run(
                [sys.executable, str(generator), "--rows", str(rows), "--out", str(src)],
                check=True,
            )
        for variant in variants:
            if variant == "pandas" and (rows or 0) > MAX_BASELINE_ROWS:
                continue
            out = root / f"{variant}_{src.name}"
            worker = [
                *("--worker", variant, "--src", str(src), "--out", str(out)),
                *("--memory-budget", args.memory_budget, "--gzip-level", str(args.gzip_level)),
                *("--column-map", args.column_map),
            ]
            result, rss, cpu = measure(worker)
            extra = ""
            if variant != "pandas":
                z6 = zlib6_bytes(Path(result["outbox"]))
                extra = f" zlib-6 on same text={z6:,} ratio={result['gz_bytes'] / z6:.3f}"
            print(_line(variant, rows or result["rows"], result, rss, cpu, extra), flush=True)
            if args.steps and "steps" in result:
                print(f"    steps: {result['steps']}", flush=True)
            if args.phase_cpu and "phase_cpu" in result:
                cpu = " ".join(f"{k}={v:.1f}s" for k, v in result["phase_cpu"].items())
                print(f"    phase cpu: {cpu}", flush=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
