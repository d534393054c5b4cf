"""Upload throughput: our MediaMathSftp (paramiko) against OpenSSH's own `sftp` client.

Same 200 MB incompressible file, same local OpenSSH sshd, same run, 3 repetitions each.
Needs root (sshd); installs openssh-server with apt-get when missing.

    python -m benchmarks.sftp_upload [--size-mb 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mm_assets.clients.mediamath_sftp import MediaMathSftp
from mm_assets.clients.transport import OutgoingFile
from mm_assets.sandbox.openssh_server import (
    OpenSshServer,
    ensure_openssh_installed,
)

TARGET_RATIO = 0.80


def _make_file(path: Path, size: int) -> str:
    md5 = hashlib.md5()
    block = 4 * 1024 * 1024
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = os.urandom(min(block, left))
            md5.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return md5.hexdigest()


def _client_key(state: Path) -> tuple[Path, str]:
    key = state / "cli_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-cli", "-f", str(key)],
        check=True,
    )
    pub = key.with_name(key.name + ".pub").read_text()
    return key, " ".join(pub.split()[:2])


def _bench_paramiko(server: OpenSshServer, known_hosts: Path, file: OutgoingFile) -> float:
    client = MediaMathSftp(
        host=server.host,
        port=server.port,
        username=server.username,
        password=server.password,
        known_hosts=known_hosts,
        max_attempts=1,
    )
    try:
        started = time.perf_counter()
        client.upload(file)
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    return elapsed


def _bench_openssh(
    server: OpenSshServer, known_hosts: Path, key: Path, local: Path, remote: str
) -> float:
    cmd = [
        "sftp",
        "-q",
        "-b",
        "-",
        "-P",
        str(server.port),
        "-i",
        str(key),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "BatchMode=yes",
        f"{server.username}@{server.host}",
    ]
    # Same shape as ours: temp name, then rename, so both tools do the same remote work.
    temp = f".{remote}.cli.part"
    script = f"put {local} {temp}\nrename {temp} {remote}\n"
    started = time.perf_counter()
    subprocess.run(cmd, input=script, text=True, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    if not ensure_openssh_installed():
        print("sftp-upload  skipped: needs root and OpenSSH sshd", file=sys.stderr)
        return 2

    state = Path(tempfile.mkdtemp(prefix="mm-sftp-bench-"))
    try:
        size = args.size_mb * 1000 * 1000
        name = "Bench_20250101000000.log.gz"
        local = state / name
        md5 = _make_file(local, size)
        file = OutgoingFile(name=name, path=local, size=size, md5_hex=md5)
        key, pub = _client_key(state)
        with OpenSshServer(authorized_keys=[pub]) as server:
            known_hosts = state / "known_hosts"
            known_hosts.write_text(server.known_hosts_line + "\n")
            results: dict[str, list[float]] = {"paramiko": [], "openssh-sftp": []}
            # Interleaved so drift in machine load hits both tools alike.
            for rep in range(args.reps):
                for tool in ("paramiko", "openssh-sftp"):
                    if tool == "paramiko":
                        elapsed = _bench_paramiko(server, known_hosts, file)
                    else:
                        elapsed = _bench_openssh(server, known_hosts, key, local, name)
                    landed = (server.root_dir / name).stat().st_size
                    if landed != size:
                        raise RuntimeError(f"{tool} left {landed} bytes, expected {size}")
                    (server.root_dir / name).unlink()
                    mbps = size / elapsed / 1e6
                    results[tool].append(mbps)
                    print(f"  rep={rep + 1} tool={tool} seconds={elapsed:.2f} MB/s={mbps:.1f}")
            medians = {tool: statistics.median(v) for tool, v in results.items()}
            for tool, values in results.items():
                runs = " ".join(f"{v:.1f}" for v in values)
                print(
                    f"sftp-upload  tool={tool}  MB/s={medians[tool]:.1f}  "
                    f"(median of {len(values)}: {runs})  file={args.size_mb}MB"
                )
            ratio = medians["paramiko"] / medians["openssh-sftp"]
            verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
            print(
                f"sftp-upload  ratio paramiko/openssh={ratio:.2f}  "
                f"target>={TARGET_RATIO:.2f} {verdict}"
            )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
