"""A small MediaMath for fault tests: the asyncssh SFTP drop, the processing log watching it,
a ledger file, and built files, plus a worker run in a subprocess that a test kills with
SIGKILL (`deliver_worker.py`)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mm_assets.clients.mediamath_processing_log import ProcessingLogClient
from mm_assets.clients.mediamath_sftp import MediaMathSftp
from mm_assets.clients.transport import OutgoingFile
from mm_assets.core.quota import QuotaLimits
from mm_assets.delivery.deliver import DeliveryReport, deliver_batch
from mm_assets.delivery.ledger import Ledger
from mm_assets.sandbox.processing_log_server import SandboxProcessingLog
from mm_assets.sandbox.sftp_server import SandboxSftpServer

PROJECT = Path(__file__).resolve().parents[2]
BATCH = "batch_20261201"
# Large enough that a write pause point falls inside the file, small enough to stay fast.
FILE_BYTES = 300_000


@dataclass
class World:
    root: Path
    sftp: SandboxSftpServer
    log: SandboxProcessingLog

    @property
    def drop(self) -> Path:
        return self.sftp.root_dir

    @property
    def ledger_path(self) -> Path:
        return self.root / "state" / "ledger.sqlite"

    @property
    def known_hosts(self) -> Path:
        path = self.root / "known_hosts"
        path.write_text(self.sftp.known_hosts_line + "\n")
        return path

    def files(
        self, count: int, prefix: str = "Acme_ExamplePartner_2026120100"
    ) -> list[OutgoingFile]:
        outbox = self.root / "outbox"
        outbox.mkdir(exist_ok=True)
        made = []
        for i in range(count):
            name = f"{prefix}{i:04d}.log.gz"
            data = gzip.compress(os.urandom(FILE_BYTES), compresslevel=0)
            (outbox / name).write_bytes(data)
            md5 = hashlib.md5(data).hexdigest()
            made.append(OutgoingFile(name=name, path=outbox / name, size=len(data), md5_hex=md5))
        return made

    def transport_settings(self) -> dict[str, object]:
        return {
            "host": self.sftp.host,
            "port": self.sftp.port,
            "username": self.sftp.username,
            "password": self.sftp.password,
            "known_hosts": str(self.known_hosts),
            "connect_timeout": 10.0,
            "io_timeout": 10.0,
            "max_attempts": 2,
            "backoff_base_seconds": 0.01,
        }

    def transport(self) -> MediaMathSftp:
        return MediaMathSftp(**self.transport_settings())  # type: ignore[arg-type]

    def log_client(self) -> ProcessingLogClient:
        return ProcessingLogClient(
            self.log.url, self.sftp.username, self.sftp.password, max_total_wait=2.0
        )

    def deliver(
        self,
        files: list[OutgoingFile],
        *,
        run_id: str = "next",
        limits: QuotaLimits | None = None,
        with_log: bool = True,
    ) -> DeliveryReport:
        with self.transport() as transport, Ledger(self.ledger_path) as ledger:
            log = self.log_client() if with_log else None
            try:
                return deliver_batch(
                    files,
                    BATCH,
                    transport,
                    ledger,
                    limits or QuotaLimits(),
                    run_id=run_id,
                    processing_log=log,
                )
            finally:
                if log is not None:
                    log.close()

    def mediamath_reads_and_takes(self, *names: str) -> None:
        """MediaMath processes files (its log records them) and removes them from the drop."""
        self.log.records()
        for name in names:
            (self.drop / name).unlink()

    def drop_listing(self) -> list[str]:
        return sorted(p.name for p in self.drop.iterdir())

    def start_worker(self, files: list[OutgoingFile], run_id: str) -> subprocess.Popen[str]:
        """`deliver_worker` in its own process, delivering `files` with this world's ledger."""
        config = self.root / f"worker-{run_id}.json"
        config.write_text(
            json.dumps(
                {
                    "transport": self.transport_settings(),
                    "ledger": str(self.ledger_path),
                    "batch": BATCH,
                    "run_id": run_id,
                    "files": [
                        {"name": f.name, "path": str(f.path), "size": f.size, "md5": f.md5_hex}
                        for f in files
                    ],
                }
            )
        )
        return subprocess.Popen(
            [sys.executable, "-m", "mm_assets_tests.faults.deliver_worker", str(config)],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def sigkill(process: subprocess.Popen[str]) -> str:
    """kill -9 the worker; its stderr (scanned for secrets by the tests)."""
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return err


def secret_free(secret: str, *places: Path | str) -> list[str]:
    """Where `secret` appears among files under `places` (folders walked) and texts."""
    found = []
    needle = secret.encode()
    for place in places:
        if isinstance(place, str):
            if secret in place:
                found.append("<text>")
            continue
        paths = place.rglob("*") if place.is_dir() else [place]
        for path in paths:
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path))
    return found
