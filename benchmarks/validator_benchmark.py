"""How fast the S2S validator checks files: the per-line path (the validator as it was before
the block path) against the block path, on one core and on all of them.

Two file sets by default: one file of 1 M lines, and the files of a 20 M-row build (21 files,
5.16 M lines, 19.2 M loads: the shape `build_benchmark.py` measured). Lines are UUID users with
~3.7 loads on average and a long tail, a few users long enough to continue on a second line
(S2S-LINE); the files are gzipped at isal level 1. Or point it at a built outbox.

    python benchmarks/validator_benchmark.py                   # both sets
    python benchmarks/validator_benchmark.py --sets 1m         # the 1 M-line file only
    python benchmarks/validator_benchmark.py --outbox .mm_assets/outbox/batch_20261120

Every file of a set must come out valid on every path: the timings are of accepted files, the
common case of a build's check.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from isal import igzip

from mm_assets.core.s2s_validator import FileReport, exact_report, validate_file
from mm_assets.core.s2s_validator_pool import validate_files

LIMIT = 8000  # S2S-LINE
SETS = {
    # name: (files, lines)
    "1m": (1, 1_000_000),
    "20m_rows": (21, 5_160_000),
}


def _header(name: str) -> str:
    return (
        f"Version: 3\nFileIdentifier: {name}\nDateCreated: 1764547200\nUserNamespace: mm\n"
        "SegmentNamespace: ep\nMobile: 0\n\n"
    )


def _write_file(path: Path, lines: int, rnd: random.Random) -> None:
    """``lines`` rows of distinct UUID users, loads distinct within a user."""
    pool = [f"{seg}:{rnd.choice(('0', '-1', '1764547200'))}" for seg in range(100_000, 105_000)]
    size = len(pool)
    written = 0
    with igzip.open(path, "wb", compresslevel=1) as out:
        out.write(_header(path.name).encode())
        while written < lines:
            rows = []
            for _ in range(min(100_000, lines - written)):
                uid = f"{rnd.getrandbits(128):032x}"
                uid = f"{uid[:8]}-{uid[8:12]}-4{uid[13:16]}-a{uid[17:20]}-{uid[20:]}"
                k = 1 + int(rnd.expovariate(1 / 2.7)) if rnd.random() > 1e-4 else 600
                start, step = rnd.randrange(size), rnd.choice((1, 7, 13))
                loads = [pool[(start + i * step) % size] for i in range(min(k, size))]
                line = uid
                for load in loads:  # a second line only when the first cannot take more
                    if len(line) + 1 + len(load) < LIMIT:
                        line += " " + load
                    else:
                        rows.append(line)
                        written += 1
                        line = f"{uid} {load}"
                rows.append(line)
                written += 1
            out.write(("\n".join(rows) + "\n").encode())


def make_set(folder: Path, files: int, lines: int, seed: int = 1) -> list[Path]:
    """Files whose sizes fall off like a build's (global and big agencies first)."""
    weights = [1 / (i + 1) for i in range(files)]
    rnd = random.Random(seed)
    paths = []
    for i, w in enumerate(weights):
        path = folder / f"Agency{i:02d}_ExamplePartner_20261201000000.log.gz"
        _write_file(path, max(1, round(lines * w / sum(weights))), rnd)
        paths.append(path)
    return paths


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the pool's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(
    label: str, paths: list[Path], run: Callable[[list[Path]], list[FileReport]]
) -> tuple[float, float]:
    """Wall and CPU seconds; lines per CPU second is the speed of one core, whatever else the
    machine is doing at the time (wall seconds on a busy machine are not)."""
    cpu, started = _cpu_seconds(), time.perf_counter()
    reports = run(paths)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    assert all(r.ok for r in reports), [r.violations[:3] for r in reports if not r.ok]
    lines = sum(r.lines for r in reports)
    loads = sum(r.loads for r in reports)
    print(
        f"  {label:<26} wall {seconds:6.2f} s {lines / seconds:>11,.0f} lines/s | "
        f"cpu {cpu:6.2f} s {lines / cpu:>11,.0f} lines/cpu-s  ({lines:,} lines, {loads:,} loads)"
    )
    return seconds, cpu


def measure(name: str, paths: list[Path]) -> None:
    cpus = os.cpu_count() or 1
    gz = sum(p.stat().st_size for p in paths)
    print(f"{name}: {len(paths)} file(s), {gz / 1e6:,.1f} MB gzipped")
    slow = _timed("per-line path, 1 process", paths, lambda ps: [exact_report(p) for p in ps])
    fast = _timed("block path, 1 process", paths, lambda ps: [validate_file(p) for p in ps])
    both = _timed(
        f"block path, {cpus} threads",
        paths,
        lambda ps: validate_files(ps, cpus=cpus),
    )
    print(
        f"  speed-up per core (cpu): {slow[1] / fast[1]:.1f}x; wall: {slow[0] / fast[0]:.1f}x "
        f"on one core, {slow[0] / both[0]:.1f}x on {cpus}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--outbox", type=Path, help="validate this folder's *.log.gz instead")
    args = parser.parse_args()
    if args.outbox:
        measure(str(args.outbox), sorted(args.outbox.glob("*.log.gz")))
        return
    with tempfile.TemporaryDirectory(prefix="validator_benchmark_") as tmp:
        for name in args.sets:
            folder = Path(tmp) / name
            folder.mkdir()
            files, lines = SETS[name]
            started = time.perf_counter()
            paths = make_set(folder, files, lines)
            print(f"({name}: generated in {time.perf_counter() - started:.1f} s)")
            measure(name, paths)


if __name__ == "__main__":
    main()
