"""Run the local sandbox: MediaMath's SFTP drop and Cloud File Transfer, on 127.0.0.1.

    mm-assets sandbox [--state-dir .mm_assets/sandbox] [--status]

The state folder keeps what a client needs to reach the sandbox (ports, the process id, the SFTP
host key as a `known_hosts` file, the generated sandbox passwords in 0600 files) and the drop
folder. The `sandbox` delivery transport reads it. Stop with Ctrl-C (or SIGTERM).

Ports are settings (`MM_SANDBOX_SFTP_PORT`, `MM_SANDBOX_CFT_PORT`,
`MM_SANDBOX_PROCESSING_LOG_PORT`; 0 picks a free one), so a second sandbox can run beside the
first with its own state folder. A sandbox already running in the state folder is never
replaced: a second start says so in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sys
import threading
from dataclasses import dataclass, fields
from pathlib import Path

STATE_FILE = "sandbox.json"
# How long a port may take to answer before the sandbox counts as not running.
_PROBE_SECONDS = 2.0


class SandboxCannotStart(Exception):
    """The sandbox cannot start here; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class SandboxPorts:
    """Where the sandbox listens: each port a setting, defaulting to the usual ones."""

    sftp: int = 2222
    cft: int = 5055
    processing_log: int = 5056

    @classmethod
    def from_environment(cls) -> SandboxPorts:
        """The one place the port settings are read (README: MM_SANDBOX_*_PORT)."""
        default = cls()

        def port(name: str, fallback: int) -> int:
            value = os.environ.get(name, "").strip()
            if not value:
                return fallback
            if not value.isdigit() or int(value) > 65535:
                raise SandboxCannotStart(f"{name}={value!r} is not a port (0-65535)")
            return int(value)

        return cls(
            sftp=port("MM_SANDBOX_SFTP_PORT", default.sftp),
            cft=port("MM_SANDBOX_CFT_PORT", default.cft),
            processing_log=port("MM_SANDBOX_PROCESSING_LOG_PORT", default.processing_log),
        )


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
    pid: int = 0

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
        # Only the fields this version knows: the state file may carry newer keys.
        known = {f.name for f in fields(cls)} - {"state_dir"}
        return cls(state_dir=state_dir, **{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        return (
            f"sftp 127.0.0.1:{self.sftp_port}, cft {self.cft_s3_endpoint_url}, "
            f"processing log {self.processing_log_url}; state in {self.state_dir}"
        )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def running_sandbox(state_dir: Path) -> SandboxState | None:
    """The sandbox serving from `state_dir`, or None: its state file names a live process and
    its SFTP port answers (a state file left by a killed sandbox does not count)."""
    try:
        state = SandboxState.load(state_dir)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if not _alive(state.pid) or not _answers(state.sftp_port):
        return None
    return state


def not_running_reason(state_dir: Path) -> str | None:
    """Why no sandbox serves from `state_dir`, with how to start one (None: one is running)."""
    if running_sandbox(state_dir) is not None:
        return None
    start = "start it with `mm-assets sandbox` (or `bash scripts/ui.sh`)"
    if not (state_dir / STATE_FILE).exists():
        return f"no sandbox is running (no state in {state_dir}): {start}"
    return f"the sandbox of {state_dir} is not running (it was stopped or killed): {start}"


def _port_in_use(port: int) -> bool:
    if port == 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers bind (address reuse on), so a port in TIME_WAIT does not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _refuse_to_start(state_dir: Path, ports: dict[str, int]) -> None:
    """Raise SandboxCannotStart when a sandbox already serves this state folder or a port is
    taken: checked before binding, because the HTTP servers exit the process on a bind error."""
    if (running := running_sandbox(state_dir)) is not None:
        raise SandboxCannotStart(
            f"a sandbox is already running from {state_dir} (pid {running.pid}): "
            f"{running.describe()}; use it, or stop it first"
        )
    for setting, port in ports.items():
        if _port_in_use(port):
            raise SandboxCannotStart(
                f"port {port} is in use by another program (another sandbox?): stop it, or "
                f"set {setting} to another port (0 picks a free one)"
            )


def serve(
    state_dir: Path,
    sftp_port: int | None = None,
    cft_port: int | None = None,
    stop: threading.Event | None = None,
    *,
    processing_log_port: int | None = None,
    processing_delay: float = 0.0,
) -> None:
    """Serve until `stop` is set; ports not given come from the settings (SandboxPorts)."""
    from mm_assets.sandbox.cft_server import SandboxCft
    from mm_assets.sandbox.processing_log_server import SandboxProcessingLog, cft_bucket_source
    from mm_assets.sandbox.sftp_server import SandboxSftpServer

    ports = SandboxPorts.from_environment()
    sftp_port = ports.sftp if sftp_port is None else sftp_port
    cft_port = ports.cft if cft_port is None else cft_port
    if processing_log_port is None:
        processing_log_port = ports.processing_log
    _refuse_to_start(
        state_dir,
        {
            "MM_SANDBOX_SFTP_PORT": sftp_port,
            "MM_SANDBOX_CFT_PORT": cft_port,
            "MM_SANDBOX_PROCESSING_LOG_PORT": processing_log_port,
        },
    )
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
                        "pid": os.getpid(),
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`mm-assets sandbox`'s arguments (the CLI's parser shows them in its help). The port
    defaults are resolved when the sandbox starts, so a bad setting fails only `sandbox`."""
    from mm_assets.defs.settings import STATE_DIR

    default = SandboxPorts()
    parser.add_argument(
        "--state-dir",
        type=Path,
        # The same folder the `sandbox` delivery transport reads.
        default=Path(os.environ.get("MM_SANDBOX_STATE_DIR") or STATE_DIR / "sandbox"),
        help="state folder: ports, host key, passwords, the SFTP drop "
        "(default: MM_SANDBOX_STATE_DIR or .mm_assets/sandbox)",
    )
    for flag, setting, what, port in (
        ("--sftp-port", "MM_SANDBOX_SFTP_PORT", "SFTP drop", default.sftp),
        ("--cft-port", "MM_SANDBOX_CFT_PORT", "Cloud File Transfer", default.cft),
        (
            "--processing-log-port",
            "MM_SANDBOX_PROCESSING_LOG_PORT",
            "processing-log API",
            default.processing_log,
        ),
    ):
        parser.add_argument(
            flag, type=int, metavar="PORT", help=f"{what} port (default: {setting} or {port})"
        )
    parser.add_argument(
        "--processing-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds before the processing log answers for a new file",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="do not start: say whether a sandbox runs from the state folder (exit 0) or not "
        "(exit 1)",
    )


def run(args: argparse.Namespace) -> int:
    """`mm-assets sandbox` with parsed arguments."""
    if args.status:
        running = running_sandbox(args.state_dir)
        if running is None:
            print(not_running_reason(args.state_dir))
            return 1
        print(f"sandbox running (pid {running.pid}): {running.describe()}")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve(
            args.state_dir,
            args.sftp_port,
            args.cft_port,
            stop,
            processing_log_port=args.processing_log_port,
            processing_delay=args.processing_delay,
        )
    except SandboxCannotStart as exc:
        print(f"mm-assets sandbox: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mm-assets sandbox", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
