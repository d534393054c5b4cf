"""End-to-end build benchmark: export batch -> S2S files, ours vs a naive pandas baseline.

    python benchmarks/build_benchmark.py                      # 2 M and 20 M rows
    python benchmarks/build_benchmark.py --rows 2000000 --memory-budget 1GiB --skip-baseline

Each variant runs in its own process so its peak RSS is its own (`os.wait4`). Printed per
variant: wall time, input rows/s, output text MB/s, peak RSS, gz bytes; and, for ours, the gz
bytes Python's zlib level 6 gives on the very same text (MediaMath's quotas count gz bytes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path


def run_ours(src: Path, out: Path, memory_budget: str, gzip_level: int) -> dict:
    from mm_assets.core.build_settings import BuildSettings, parse_size
    from mm_assets.core.export_reader import read_export_batch
    from mm_assets.core.s2s_writer import write_s2s_files
    from mm_assets.core.segment_merge import merge_segment_loads

    settings = BuildSettings(
        partner_name="BenchPartner",
        segment_namespace="bp",
        memory_budget_bytes=parse_size(memory_budget),
        gzip_level=gzip_level,
    )
    start = time.perf_counter()
    read = read_export_batch(src, out / "raw", settings)
    t_read = time.perf_counter()
    merged = merge_segment_loads(read.loads_dir, out / "merged", settings)
    t_merge = time.perf_counter()
    files = write_s2s_files(merged.merged_dir, out / "outbox" / src.name, settings)
    end = time.perf_counter()
    return {
        "rows": read.rows_read,
        "seconds": end - start,
        "phases": {"read": t_read - start, "merge": t_merge - t_read, "write": end - t_merge},
        "gz_bytes": sum(f.bytes for f in files),
        "files": len(files),
        "text_bytes": sum(s.text_bytes for s in merged.by_file.values()),
        "outbox": str(out / "outbox" / src.name),
    }


def run_baseline(src: Path, out: Path) -> dict:
    """What a first attempt looks like: pandas groupby + ' '.join + gzip.open."""
    import pandas as pd

    start = time.perf_counter()
    df = pd.read_parquet(src)
    mobile = df["device_type"] != "cookie"
    df.loc[mobile, "user_id"] = df.loc[mobile, "user_id"].str.lower()
    df["mobile"] = mobile
    df = df.drop_duplicates(["client", "mobile", "user_id", "segment", "timestamp"])
    df["load"] = df["segment"].astype(str) + ":" + df["timestamp"].astype(str)
    lines = df.groupby(["client", "mobile", "user_id"])["load"].agg(" ".join).reset_index()
    out.mkdir(parents=True, exist_ok=True)
    gz_bytes = text_bytes = 0
    for (client, is_mobile), group in lines.groupby(["client", "mobile"]):
        path = out / f"{client or 'global'}_{int(is_mobile)}.log.gz"
        text = "\n".join(group["user_id"] + " " + group["load"]) + "\n"
        header = f"Version: 3\nFileIdentifier: {path.name}\nMobile: {int(is_mobile)}\n\n"
        with gzip.open(path, "wt") as f:
            f.write(header + text)
        gz_bytes += path.stat().st_size
        text_bytes += len(text)
    return {
        "rows": len(df.index),
        "seconds": time.perf_counter() - start,
        "gz_bytes": gz_bytes,
        "text_bytes": text_bytes,
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


def measure(args: list[str], script: str = __file__) -> tuple[dict, float]:
    """Run one variant in a child process; return its result and peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"variant {args[:2]} failed with status {status}")
    return json.loads(output), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000000,20000000")
    parser.add_argument("--memory-budget", default="1GiB")
    parser.add_argument("--gzip-level", type=int, default=4)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--snapshot", action="store_true", help="snapshot mode's diff vs a delta build instead"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ours":
        print(json.dumps(run_ours(args.src, args.out, args.memory_budget, args.gzip_level)))
        return
    if args.worker == "baseline":
        print(json.dumps(run_baseline(args.src, args.out)))
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="mm-bench-"))
    print(
        f"machine: {os.cpu_count()} cores; memory budget {args.memory_budget}; "
        f"gzip level {args.gzip_level}; work dir {root}"
    )
    if args.snapshot:
        from snapshot_variant import snapshot_benchmark

        sizes = [int(r) for r in args.rows.split(",")]
        snapshot_benchmark(root, sizes, args.memory_budget, args.gzip_level)
        return
    for rows in (int(r) for r in args.rows.split(",")):
        src = root / f"export_{rows}" / f"batch_{rows}"
        if not src.exists():
            # In a child process: a child forked from a parent holding the generated rows
            # would report the parent's pages as its own peak RSS.
            subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("generate_export.py")),
                    "--rows",
                    str(rows),
                    "--out",
                    str(src),
                ],
                check=True,
            )
        ours, rss = measure(
            [
                "--worker",
                "ours",
                "--src",
                str(src),
                "--out",
                str(root / f"ours_{rows}"),
                "--memory-budget",
                args.memory_budget,
                "--gzip-level",
                str(args.gzip_level),
            ]
        )
        z6 = zlib6_bytes(Path(ours["outbox"]))
        phases = " ".join(f"{k}={v:.1f}s" for k, v in ours["phases"].items())
        print(
            f"build rows={rows:>11,} variant=mm-assets  wall={ours['seconds']:7.1f}s "
            f"rows/s={rows / ours['seconds']:>11,.0f} "
            f"out_MB/s={ours['text_bytes'] / 1e6 / ours['seconds']:6.1f} "
            f"peak_rss_MB={rss:7.0f} gz_bytes={ours['gz_bytes']:,} ({phases}; "
            f"{ours['files']} files; zlib-6 on same text={z6:,}, "
            f"ratio={ours['gz_bytes'] / z6:.3f})",
            flush=True,
        )
        if args.skip_baseline:
            continue
        base, rss = measure(
            ["--worker", "baseline", "--src", str(src), "--out", str(root / f"baseline_{rows}")]
        )
        print(
            f"build rows={rows:>11,} variant=pandas     wall={base['seconds']:7.1f}s "
            f"rows/s={rows / base['seconds']:>11,.0f} "
            f"out_MB/s={base['text_bytes'] / 1e6 / base['seconds']:6.1f} "
            f"peak_rss_MB={rss:7.0f} gz_bytes={base['gz_bytes']:,}",
            flush=True,
        )


if __name__ == "__main__":
    main()
