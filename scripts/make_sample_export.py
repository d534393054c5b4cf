"""Regenerate the sample export in `data/export/` (committed; this script documents its making).

The sample exercises every rule the build implements: cookie and mobile IDs (upper- and
lower-case spellings of one device), global data and three agencies, a hashed taxonomy
(SportsDaily), removals and explicit timestamps, conflicting loads, a user too large for one
line, every input format, and a few bad rows that must be quarantined.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BATCH = Path(__file__).resolve().parents[1] / "data" / "export" / "batch_20261120"
FIELDS = ["user_id", "segment", "timestamp", "client", "device_type"]


def rows() -> list[dict[str, str]]:
    rng = random.Random(20261120)
    out: list[dict[str, str]] = []
    cookies = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(300)]
    devices = [str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper() for _ in range(120)]
    clients = ["", "", "Acme Retail", "Globex-Media", "SportsDaily"]
    for user in cookies + devices:
        mobile = user in devices
        for _ in range(rng.randint(1, 12)):
            client = rng.choice(clients)
            segment = (
                rng.choice(["sports_fan", "runner", "ski_2026", "golf"])
                if client == "SportsDaily"
                else str(rng.randint(10000, 10400))
            )
            ts = rng.choice(["0", "0", "0", "-1", str(1_760_000_000 + rng.randint(0, 9_999_999))])
            device = rng.choice(["idfa", "IDFA", "gaid"]) if mobile else rng.choice(["cookie", ""])
            out.append(
                {
                    "user_id": user,
                    "segment": segment,
                    "timestamp": ts,
                    "client": client,
                    "device_type": device,
                }
            )
    # One device spelled in both cases: the same device (S2S-MOB).
    out.append(
        {
            "user_id": devices[0].lower(),
            "segment": "10001",
            "timestamp": "0",
            "client": "",
            "device_type": "idfa",
        }
    )
    # A conflict: add, dated add and removal of one segment for one user (removal wins).
    for ts in ("0", "1765000000", "-1"):
        out.append(
            {
                "user_id": cookies[0],
                "segment": "10777",
                "timestamp": ts,
                "client": "",
                "device_type": "cookie",
            }
        )
    # A user with 1,200 loads: too many for one line of < 8,000 characters (S2S-LINE).
    out += [
        {
            "user_id": cookies[1],
            "segment": str(20000 + i),
            "timestamp": "0",
            "client": "",
            "device_type": "cookie",
        }
        for i in range(1200)
    ]
    rng.shuffle(out)
    return out


BAD_ROWS = [  # each must be quarantined with its reason
    {"user_id": "", "segment": "10001", "timestamp": "0", "client": "", "device_type": ""},
    {"user_id": "has space", "segment": "10001", "timestamp": "0", "client": "", "device_type": ""},
    {"user_id": "a:b", "segment": "10001", "timestamp": "0", "client": "", "device_type": ""},
    {
        "user_id": "0e6f9b1c-0000-4000-8000-000000000001",
        "segment": "not_a_number",
        "timestamp": "0",
        "client": "Acme Retail",
        "device_type": "cookie",
    },
    {
        "user_id": "0e6f9b1c-0000-4000-8000-000000000002",
        "segment": "3000000000",
        "timestamp": "0",
        "client": "",
        "device_type": "cookie",
    },
    {
        "user_id": "0e6f9b1c-0000-4000-8000-000000000003",
        "segment": "10001",
        "timestamp": "yesterday",
        "client": "",
        "device_type": "cookie",
    },
    {
        "user_id": "0e6f9b1c-0000-4000-8000-000000000004",
        "segment": "10001",
        "timestamp": "0",
        "client": "",
        "device_type": "fridge",
    },
    {
        "user_id": "0e6f9b1c-0000-4000-8000-000000000005",
        "segment": "10001",
        "timestamp": "0",
        "client": "!!!",
        "device_type": "cookie",
    },
]


def csv_bytes(items: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(items)
    return buf.getvalue().encode()


def main() -> None:
    BATCH.mkdir(parents=True, exist_ok=True)
    for old in BATCH.iterdir():
        old.unlink()
    data = rows()
    parts = [data[i::5] for i in range(5)]
    (BATCH / "audiences_part1.csv").write_bytes(
        csv_bytes(parts[0] + BAD_ROWS[:4])
        + b"0e6f9b1c-0000-4000-8000-00000000000f,10001,0,Caf\xe9,cookie\n"
    )  # not UTF-8
    (BATCH / "audiences_part2.csv.gz").write_bytes(
        gzip.compress(csv_bytes(parts[1] + BAD_ROWS[4:]), mtime=0)
    )
    pq.write_table(pa.Table.from_pylist(parts[2]), BATCH / "audiences_part3.parquet")
    jsonl = "\n".join(json.dumps(r) for r in parts[3]) + "\n{not json\n"
    (BATCH / "audiences_part4.jsonl").write_text(jsonl)
    (BATCH / "audiences_part5.jsonl.gz").write_bytes(
        gzip.compress(("\n".join(json.dumps(r) for r in parts[4]) + "\n").encode(), mtime=0)
    )
    (BATCH / "_SUCCESS").write_text("")
    print(f"wrote {sum(map(len, parts)) + len(BAD_ROWS) + 2} rows to {BATCH}")


if __name__ == "__main__":
    main()
