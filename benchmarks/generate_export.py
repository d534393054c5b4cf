"""Generate a realistic Moloco-style audience export for the benchmark.

Shape (issue 2): UUID users with ~8 segment loads on average and a long tail with hundreds,
~5,000 segment codes with a skewed popularity, 20 agencies plus global (skewed), a share of
mobile device IDs (upper-case IDFAs, so the case folding is exercised), a few removals and
explicit timestamps, and ~3 % repeated loads.

    python benchmarks/generate_export.py --rows 2000000 --out /tmp/export/batch_2m
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
AGENCIES = [f"Agency{i:02d}" for i in range(1, 21)]


def _uuids(rng: np.random.Generator, n: int, upper: np.ndarray) -> np.ndarray:
    """n random UUID v4 strings as a numpy bytes array, vectorised (no per-row Python)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nib = np.empty((n, 32), dtype=np.uint8)
    nib[:, 0::2] = HEX[raw >> 4]
    nib[:, 1::2] = HEX[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in (
        (slice(0, 8), slice(0, 8)),
        (slice(9, 13), slice(8, 12)),
        (slice(14, 18), slice(12, 16)),
        (slice(19, 23), slice(16, 20)),
        (slice(24, 36), slice(20, 32)),
    ):
        out[:, dst] = nib[:, src]
    out[upper] = np.where(
        (out[upper] >= ord("a")) & (out[upper] <= ord("f")), out[upper] - 32, out[upper]
    )
    return out.view("S36").ravel()


def generate(rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    # Loads per user: mostly a handful, a Pareto tail reaching hundreds (and a few > 1,000,
    # which must continue on a second line: S2S-LINE).
    per_user = np.minimum(1 + rng.pareto(1.6, size=rows // 4) * 4, 1500).astype(np.int64)
    cum = np.cumsum(per_user)
    n_users = int(np.searchsorted(cum, rows)) + 1
    per_user = per_user[:n_users]
    per_user[-1] -= int(cum[n_users - 1] - rows)
    mobile_user = rng.random(n_users) < 0.3
    ids = _uuids(rng, n_users, upper=mobile_user & (rng.random(n_users) < 0.5))
    user_of_row = np.repeat(np.arange(n_users), per_user)

    agency_weights = 1.0 / np.arange(1, 21) ** 1.1
    home_agency = rng.choice(20, size=n_users, p=agency_weights / agency_weights.sum())
    is_global = rng.random(rows) < 0.5
    segment_weights = 1.0 / np.arange(1, 5001) ** 0.9
    segment = 100_000 + rng.choice(5000, size=rows, p=segment_weights / segment_weights.sum())
    kind = rng.random(rows)
    timestamp = np.where(
        kind < 0.85,
        0,
        np.where(kind < 0.9, -1, 1_760_000_000 + rng.integers(0, 10_000_000, size=rows)),
    )
    # ~3 % repeated loads: copy the previous row of the same user.
    repeat = (rng.random(rows) < 0.03) & (np.r_[False, user_of_row[1:] == user_of_row[:-1]])
    src = np.where(repeat, np.arange(rows) - 1, np.arange(rows))
    segment, timestamp, is_global = segment[src], timestamp[src], is_global[src]

    client = np.where(is_global, "", np.array(AGENCIES)[home_agency[user_of_row]])
    device = np.where(mobile_user[user_of_row], "idfa", "cookie")
    order = rng.permutation(rows)  # exports are not grouped by user
    return pa.table(
        {
            "user_id": pa.array(ids[user_of_row][order].astype(str)),
            "segment": pa.array(segment[order].astype(str)),
            "timestamp": pa.array(timestamp[order].astype(np.int64)),
            "client": pa.array(client[order]),
            "device_type": pa.array(device[order]),
        }
    )


def write_export(rows: int, out: Path, files: int = 4, seed: int = 7) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    table = generate(rows, seed)
    step = -(-rows // files)
    for i in range(files):
        pq.write_table(
            table.slice(i * step, step), out / f"part-{i:04d}.parquet", compression="zstd"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    write_export(args.rows, args.out, args.files)
    print(f"wrote {args.rows:,} rows to {args.out}")


if __name__ == "__main__":
    main()
