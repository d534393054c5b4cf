"""Run the local sandbox: MediaMath's SFTP drop and Cloud File Transfer, on 127.0.0.1.

    mm-assets sandbox [--state-dir .mm_assets/sandbox]

The state folder keeps what a client needs to reach the sandbox (ports, the SFTP host key as a
`known_hosts` file, the generated sandbox passwords in 0600 files) and the drop folder. The
`sandbox` delivery transport reads it. Stop with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

SFTP_PORT, CFT_PORT, PROCESSING_LOG_PORT = 2222, 5055, 5056
STATE_FILE = "sandbox.json"


def _password(path: Path) -> str:
    """The sandbox's own password: generated once, kept owner-readable only."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass(frozen=True)
class SandboxState:
    """What the `sandbox` transport needs to connect, read from the state folder."""

    state_dir: Path
    sftp_port: int
    sftp_username: str
    cft_credentials_url: str
    cft_s3_endpoint_url: str
    cft_username: str
    cft_integration: str
    cft_bucket: str
    processing_log_url: str = ""

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def drop_dir(self) -> Path:
        return self.state_dir / "sftp_drop"

    def sftp_password(self) -> str:
        return _password(self.state_dir / "sftp_password")

    def cft_password(self) -> str:
        return _password(self.state_dir / "cft_password")

    @classmethod
    def load(cls, state_dir: Path) -> SandboxState:
        path = state_dir / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"no sandbox state in {state_dir}: start the sandbox with `mm-assets sandbox`"
            )
        data = json.loads(path.read_text())
        return cls(state_dir=state_dir, **data)


def serve(
    state_dir: Path,
    sftp_port: int = SFTP_PORT,
    cft_port: int = CFT_PORT,
    stop: threading.Event | None = None,
    *,
    processing_log_port: int = PROCESSING_LOG_PORT,
    processing_delay: float = 0.0,
) -> None:
    from mm_assets.sandbox.cft_server import SandboxCft
    from mm_assets.sandbox.processing_log_server import SandboxProcessingLog, cft_bucket_source
    from mm_assets.sandbox.sftp_server import SandboxSftpServer

    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "sftp_drop").mkdir(exist_ok=True)
    stop = stop or threading.Event()
    sftp_password = _password(state_dir / "sftp_password")
    sftp = SandboxSftpServer(
        state_dir / "sftp_drop",
        port=sftp_port,
        password=sftp_password,
        host_key_path=state_dir / "ssh_host_ed25519_key",
    )
    cft = SandboxCft(port=cft_port, password=_password(state_dir / "cft_password"))
    with sftp, cft:
        # MediaMath's processing log judges what arrived in the drop or the bucket (S2S-LOG).
        log = SandboxProcessingLog(
            [state_dir / "sftp_drop"],
            sftp.username,
            sftp_password,
            processing_delay_seconds=processing_delay,
            page_size=100,
            allowed_namespaces=[os.environ.get("MM_SEGMENT_NAMESPACE") or "ep"],
            integration=cft.integration,
            port=processing_log_port,
            bucket_sources=[cft_bucket_source(cft)],
        )
        with log:
            (state_dir / "known_hosts").write_text(sftp.known_hosts_line + "\n")
            (state_dir / STATE_FILE).write_text(
                json.dumps(
                    {
                        "sftp_port": sftp.port,
                        "sftp_username": sftp.username,
                        "cft_credentials_url": cft.credentials_url,
                        "cft_s3_endpoint_url": cft.s3_endpoint_url,
                        "cft_username": cft.username,
                        "cft_integration": cft.integration,
                        "cft_bucket": cft.bucket,
                        "processing_log_url": log.url,
                    },
                    indent=2,
                )
            )
            print(
                f"sandbox ready: sftp 127.0.0.1:{sftp.port} (drop {sftp.root_dir}), "
                f"cft {cft.s3_endpoint_url}, processing log {log.url}; state in {state_dir}",
                flush=True,
            )
            stop.wait()
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    from mm_assets.defs.settings import STATE_DIR

    parser = argparse.ArgumentParser(prog="mm-assets sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR / "sandbox")
    parser.add_argument("--sftp-port", type=int, default=SFTP_PORT)
    parser.add_argument("--cft-port", type=int, default=CFT_PORT)
    parser.add_argument("--processing-log-port", type=int, default=PROCESSING_LOG_PORT)
    parser.add_argument(
        "--processing-delay",
        type=float,
        default=0.0,
        help="seconds before the processing log answers for a new file",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve(
        args.state_dir,
        args.sftp_port,
        args.cft_port,
        stop,
        processing_log_port=args.processing_log_port,
        processing_delay=args.processing_delay,
    )
    return 0
