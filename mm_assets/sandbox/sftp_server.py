"""In-process SFTP server (asyncssh) standing in for MediaMath's S2S drop (S2S-SFTP).

Runs its own asyncio loop in a background thread so synchronous code (paramiko, pytest) can
talk to it over a real socket. No root needed. Fault injection lets tests exercise the
client's retry path without mocking it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncssh

logger = logging.getLogger(__name__)

_HOST_KEY_ALG = "ssh-ed25519"


def _known_hosts_line(host: str, port: int, pub_key_line: str) -> str:
    # Same format as mediamath_sftp.known_hosts_line; duplicated so the sandbox has no
    # dependency on the client it is used to test.
    return f"[{host}]:{port} {pub_key_line}" if port != 22 else f"{host} {pub_key_line}"


class _Faults:
    """Mutable fault plan shared between the server thread and the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.drop_connection_after_bytes: int | None = None
        self.drop_connection_after_rename = False
        self.fail_logins = 0
        self.login_attempts = 0
        self.successful_logins = 0
        self.dropped_connections = 0
        # A server without posix-rename@openssh.com (it answers "unsupported").
        self.refuse_posix_rename = False
        # Hold the client mid-upload (after this many bytes) or after a rename, without
        # answering, so a test can SIGKILL the client at that exact point; `paused` tells it.
        self.pause_after_bytes: int | None = None
        self.pause_after_rename = False
        self.paused = threading.Event()
        self.release = threading.Event()
        self.renames: collections.Counter[str] = collections.Counter()
        # A hostile or careless server: every file open is refused with a status message that
        # echoes the password the client logged in with. `echo_password_refusal` is "failure"
        # (SSH_FX_FAILURE, which a client may retry) or "permission" (SSH_FX_PERMISSION_DENIED).
        self.echo_password_refusal: str | None = None
        self.last_password: str | None = None


async def _hold(faults: _Faults) -> None:
    faults.paused.set()
    while not faults.release.is_set():
        await asyncio.sleep(0.02)


class _PasswordServer(asyncssh.SSHServer):
    def __init__(
        self,
        username: str,
        password: str,
        faults: _Faults,
        conns: set[asyncssh.SSHServerConnection],
    ) -> None:
        self._username = username
        self._password = password
        self._faults = faults
        self._conns = conns
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        # Tracked from the first byte so stop() can also cut connections still in auth.
        self._conn = conn
        self._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        with self._faults.lock:
            self._faults.login_attempts += 1
            if self._faults.fail_logins > 0:
                self._faults.fail_logins -= 1
                return False
            ok = secrets.compare_digest(username, self._username) and secrets.compare_digest(
                password, self._password
            )
            if ok:
                self._faults.successful_logins += 1
                self._faults.last_password = password
            return ok


class _FaultySftpServer(asyncssh.SFTPServer):
    """SFTPServer that can cut its connection mid-upload, like a reset on the WAN."""

    def __init__(self, chan: asyncssh.SSHServerChannel, root: Path, faults: _Faults) -> None:
        super().__init__(chan, chroot=str(root).encode())
        self._faults = faults
        self._written = 0
        self._received = 0  # every byte written on this connection (for pause_after_bytes)

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        with self._faults.lock:
            refusal, password = self._faults.echo_password_refusal, self._faults.last_password
        if refusal is not None:
            message = f"cannot open {path.decode(errors='replace')}: login was {password}"
            if refusal == "permission":
                raise asyncssh.SFTPPermissionDenied(message)
            raise asyncssh.SFTPFailure(message)
        return super().open(path, pflags, attrs)

    def write(self, file_obj: object, offset: int, data: bytes) -> Any:
        with self._faults.lock:
            pause_at = self._faults.pause_after_bytes
            self._received += len(data)
            if pause_at is not None and self._received >= pause_at:
                self._faults.pause_after_bytes = None
                return self._write_after_hold(file_obj, offset, data)
            limit = self._faults.drop_connection_after_bytes
            if limit is None:
                return super().write(file_obj, offset, data)
            remaining = limit - self._written
            if len(data) < remaining:
                self._written += len(data)
                return super().write(file_obj, offset, data)
            # One-shot: the retry must get through on a fresh connection.
            self._faults.drop_connection_after_bytes = None
            self._faults.dropped_connections += 1
        if remaining > 0:
            super().write(file_obj, offset, data[:remaining])
        logger.info("fault injection: aborting connection after %d bytes", limit)
        self.connection.abort()
        raise asyncssh.SFTPConnectionLost("connection dropped by fault injection")

    async def _write_after_hold(self, file_obj: object, offset: int, data: bytes) -> int:
        await _hold(self._faults)
        return super().write(file_obj, offset, data)

    def _count_rename(self, newpath: bytes) -> None:
        with self._faults.lock:
            self._faults.renames[Path(newpath.decode()).name] += 1

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        super().rename(oldpath, newpath)
        self._count_rename(newpath)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> Any:
        if self._faults.refuse_posix_rename:
            raise asyncssh.SFTPOpUnsupported("posix-rename@openssh.com not supported")
        super().posix_rename(oldpath, newpath)
        self._count_rename(newpath)
        with self._faults.lock:
            if self._faults.pause_after_rename:
                self._faults.pause_after_rename = False
                # Renamed, but the reply waits: the client dies before it writes a receipt.
                return _hold(self._faults)
            if not self._faults.drop_connection_after_rename:
                return None
            self._faults.drop_connection_after_rename = False
            self._faults.dropped_connections += 1
        # The rename is done but its reply never reaches the client: the case where a
        # naive retry would deliver the file twice.
        logger.info("fault injection: aborting connection after a rename")
        self.connection.abort()
        raise asyncssh.SFTPConnectionLost("connection dropped by fault injection")


class SandboxSftpServer:
    """asyncssh SFTP server on 127.0.0.1 with password auth, chrooted to `root_dir`."""

    def __init__(
        self,
        root_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "mm_partner",
        password: str | None = None,
        host_key_path: Path | str | None = None,
    ) -> None:
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if root_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="mm-sftp-drop-")
            root_dir = self._own_tmp.name
        self.root_dir = Path(root_dir).resolve()
        self.host = host
        self.port = port
        self.username = username
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self._host_key = self._load_or_create_key(host_key_path)
        self.host_key_line = self._host_key.export_public_key().decode().split("\n")[0].strip()
        # Drop the key comment: the line is what a known_hosts entry needs, nothing more.
        self.host_key_line = " ".join(self.host_key_line.split()[:2])
        self._faults = _Faults()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()

    def __repr__(self) -> str:
        return f"SandboxSftpServer(host={self.host!r}, port={self.port}, root_dir={self.root_dir})"

    @staticmethod
    def _load_or_create_key(path: Path | str | None) -> asyncssh.SSHKey:
        if path is not None and Path(path).exists():
            return asyncssh.read_private_key(str(path))
        key = asyncssh.generate_private_key(_HOST_KEY_ALG)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            key.write_private_key(str(path))
            Path(path).chmod(0o600)
        return key

    # -- fault injection -------------------------------------------------------------------

    @property
    def drop_connection_after_bytes(self) -> int | None:
        return self._faults.drop_connection_after_bytes

    @drop_connection_after_bytes.setter
    def drop_connection_after_bytes(self, value: int | None) -> None:
        with self._faults.lock:
            self._faults.drop_connection_after_bytes = value

    @property
    def drop_connection_after_rename(self) -> bool:
        return self._faults.drop_connection_after_rename

    @drop_connection_after_rename.setter
    def drop_connection_after_rename(self, value: bool) -> None:
        with self._faults.lock:
            self._faults.drop_connection_after_rename = value

    @property
    def faults(self) -> _Faults:
        """The fault switches (refuse_posix_rename, pause_after_bytes, pause_after_rename,
        paused / release events, echo_password_refusal) and what the server saw (renames by
        final name)."""
        return self._faults

    @property
    def fail_logins(self) -> int:
        return self._faults.fail_logins

    @fail_logins.setter
    def fail_logins(self, value: int) -> None:
        with self._faults.lock:
            self._faults.fail_logins = value

    @property
    def login_attempts(self) -> int:
        """Password checks seen so far (right or wrong)."""
        return self._faults.login_attempts

    @property
    def successful_logins(self) -> int:
        return self._faults.successful_logins

    @property
    def dropped_connections(self) -> int:
        return self._faults.dropped_connections

    @property
    def known_hosts_line(self) -> str:
        return _known_hosts_line(self.host, self.port, self.host_key_line)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            return self
        self.root_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="sandbox-sftp-server", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "sandbox SFTP server listening on %s:%d, drop %s", self.host, self.port, self.root_dir
        )
        return self

    async def _listen(self) -> None:
        faults = self._faults
        root = self.root_dir

        def server_factory() -> asyncssh.SSHServer:
            return _PasswordServer(self.username, self.password, faults, self._conns)

        def sftp_factory(chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
            return _FaultySftpServer(chan, root, faults)

        self._acceptor = await asyncssh.listen(
            self.host,
            self.port,
            server_factory=server_factory,
            server_host_keys=[self._host_key],
            sftp_factory=sftp_factory,
            allow_scp=False,
            # Interactive sessions are not part of an SFTP drop.
            session_factory=None,
        )
        self.port = self._acceptor.get_port()

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        # Awaiting the cancelled tasks lets them unwind before the loop closes; otherwise
        # asyncio reports "Task was destroyed but it is pending".
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
            self._loop = None
            self._thread = None
            self._acceptor = None
            if self._own_tmp is not None:
                self._own_tmp.cleanup()
                self._own_tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
