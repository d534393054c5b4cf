"""The real Debian OpenSSH `sshd` on 127.0.0.1 as an SFTP test peer (root only).

The most faithful stand-in for MediaMath's drop: same server code most SFTP hosts run.
Follows PEERS.md ("SFTP"): own host key, own config, a local password user whose session is
forced into internal-sftp in the drop folder.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
DEFAULT_USER = "mmsftp"


def is_available() -> bool:
    """True when this process may start sshd: running as root with OpenSSH installed."""
    return os.geteuid() == 0 and SSHD.exists() and shutil.which(SSH_KEYGEN) is not None


def ensure_openssh_installed(timeout: float = 600.0) -> bool:
    """Install Debian's openssh-server/client when root and missing; returns is_available().

    For CI set-up: images come without sshd. Non-root callers just get False.
    """
    if os.geteuid() != 0:
        return False
    if is_available():
        return True
    if shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    logger.info("installing openssh-server and openssh-client with apt-get")
    subprocess.run(
        ["apt-get", "update", "-q"], check=True, env=env, timeout=timeout, capture_output=True
    )
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "openssh-server", "openssh-client"],
        check=True,
        env=env,
        timeout=timeout,
        capture_output=True,
    )
    return is_available()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon reparented to an init that does not reap stays a zombie: that is dead too.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


class OpenSshServer:
    """sshd on `host:port` with one password user confined to internal-sftp in `root_dir`."""

    def __init__(
        self,
        root_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = DEFAULT_USER,
        password: str | None = None,
        state_dir: Path | str | None = None,
        authorized_keys: list[str] | None = None,
        extra_config: list[str] | None = None,
    ) -> None:
        """`authorized_keys` are public key lines also accepted for `username` (used by the
        benchmark to drive OpenSSH's own `sftp` CLI without a password)."""
        self.host = host
        self.port = port
        self.username = username
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self._own_state = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="mm-openssh-")).resolve()
        self._own_root = root_dir is None
        self.root_dir = Path(root_dir or (self.state_dir / "drop")).resolve()
        self.authorized_keys = list(authorized_keys or [])
        self.extra_config = list(extra_config or [])
        self.host_key_line = ""
        self._pid: int | None = None

    def __repr__(self) -> str:
        return f"OpenSshServer(host={self.host!r}, port={self.port}, root_dir={self.root_dir})"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "sshd.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "sshd.pid"

    @property
    def host_key_path(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key_line}"

    @property
    def login_attempts(self) -> int:
        """Password logins sshd logged so far (accepted or failed)."""
        return self.failed_logins + self.successful_logins

    @property
    def failed_logins(self) -> int:
        return self._count_log("Failed password for ")

    @property
    def successful_logins(self) -> int:
        return self._count_log("Accepted password for ")

    def _count_log(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except FileNotFoundError:
            return 0

    # -- set-up ----------------------------------------------------------------------------

    def _ensure_user(self) -> pwd.struct_passwd:
        try:
            entry = pwd.getpwnam(self.username)
        except KeyError:
            subprocess.run(
                ["useradd", "-M", "-s", "/usr/sbin/nologin", self.username],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(self.username)
        # chpasswd reads the secret from stdin so it never shows in a process list.
        subprocess.run(
            ["chpasswd"],
            input=f"{self.username}:{self.password}\n",
            text=True,
            check=True,
            capture_output=True,
        )
        return entry

    def _write_config(self) -> None:
        auth_keys = self.state_dir / "authorized_keys"
        auth_keys.write_text("".join(line.strip() + "\n" for line in self.authorized_keys))
        auth_keys.chmod(0o644)
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_path}",
            "UsePAM no",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {auth_keys}",
            # The state dir lives under /tmp, whose permissions StrictModes rejects.
            "StrictModes no",
            "PermitRootLogin no",
            f"AllowUsers {self.username}",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            *self.extra_config,
            f"Match User {self.username}",
            f"    ForceCommand internal-sftp -d {self.root_dir}",
            "    AllowTcpForwarding no",
            "    X11Forwarding no",
            "    PermitTTY no",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Self:
        if self._pid is not None:
            return self
        if not is_available():
            raise RuntimeError("OpenSSH sshd needs root and /usr/sbin/sshd (openssh-server)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        user = self._ensure_user()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.root_dir, user.pw_uid, user.pw_gid)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.host_key_path.exists():
            subprocess.run(
                [
                    SSH_KEYGEN,
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "mm-sandbox",
                    "-f",
                    str(self.host_key_path),
                ],
                check=True,
                capture_output=True,
            )
        pub = self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text()
        self.host_key_line = " ".join(pub.split()[:2])
        if self.port == 0:
            self.port = _free_port(self.host)
        self._write_config()
        test = subprocess.run(
            [str(SSHD), "-t", "-f", str(self.config_path)],
            check=False,
            capture_output=True,
            text=True,
        )
        if test.returncode != 0:
            raise RuntimeError(f"sshd -t rejected the config: {test.stderr.strip()}")
        self.pid_path.unlink(missing_ok=True)
        subprocess.run(
            [str(SSHD), "-f", str(self.config_path), "-E", str(self.log_path)],
            check=True,
            capture_output=True,
        )
        self._wait_ready()
        logger.info("OpenSSH sshd listening on %s:%d (pid %s)", self.host, self.port, self._pid)
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid_path.exists():
                text = self.pid_path.read_text().strip()
                if text:
                    self._pid = int(text)
                    try:
                        with socket.create_connection((self.host, self.port), timeout=1):
                            return
                    except OSError:
                        pass
            time.sleep(0.05)
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"sshd did not come up on {self.host}:{self.port}: {log[-2000:]}")

    def stop(self) -> None:
        pid = self._pid
        self._pid = None
        if pid is not None and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        elif self._own_root:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
