"""SFTP delivery into MediaMath's S2S drop (S2S-SFTP, S2S-QUOTA) with paramiko.

A file must only ever appear complete under its final name, because MediaMath picks up
`*.log.gz` files as soon as they exist. So every attempt writes a dot-prefixed temp name,
checks its size, and then renames it atomically with posix-rename.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import logging
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

from mm_assets.clients.redaction import SecretRedactingFilter
from mm_assets.clients.retry import Backoff, RetriesExhausted, retry
from mm_assets.clients.transport import (
    AuthenticationFailed,
    DeliveryError,
    FileRefused,
    HostKeyRejected,
    OutgoingFile,
    Sighting,
    TransientDeliveryError,
    UploadResult,
)
from mm_assets.core.quota import MAX_FILE_BYTES

if TYPE_CHECKING:
    # Imported where a key is parsed or a connection made: the code location imports this
    # module (for its defaults) in every command, and paramiko costs ~0.2 s of each one's CPU.
    import paramiko

logger = logging.getLogger(__name__)
# The server's words (status messages, disconnect reasons, banners) reach our errors and logs,
# and paramiko logs them too: a server may echo the password we logged in with (invariant 4).
_REDACTOR = SecretRedactingFilter()
_LOGGERS_OF_SERVER_TEXT = (__name__, "paramiko", "paramiko.transport", "paramiko.transport.sftp")
_T = TypeVar("_T")

DEFAULT_HOST = "sftp.datasvc.mediamath.com"
DEFAULT_PORT = 2222
DEFAULT_MAX_FILE_BYTES = MAX_FILE_BYTES  # S2S-QUOTA: at most 4 GB gzipped per file

# paramiko only sizes our *receive* window with these; a big one keeps the server's status
# replies to pipelined writes from ever stalling on window adjusts.
_WINDOW_SIZE = 2**27
_MAX_PACKET_SIZE = 2**18
# Read the local file in large blocks: fewer syscalls and Python-level iterations.
_READ_BLOCK = 1024 * 1024
# Every SFTP server accepts 32 KiB writes (draft-ietf-secsh-filexfer); larger ones only when
# the server says so through limits@openssh.com.
_SAFE_WRITE_REQUEST = 32768
_MAX_WRITE_REQUEST = 256 * 1024 - 1024
# AES-GCM needs no separate MAC pass, which matters in paramiko's per-packet Python path.
_PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
)
_RSA_ALGS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
# Our temporaries, by name: `.FINAL.<8 hex>.part` (see `_temp_name`). Nothing else in the drop
# is ever removed.
_TEMP_RE = re.compile(r"^\.(?P<final>[^/]+\.log\.gz)\.[0-9a-f]{8}\.part$")
# An upload in progress writes its temporary continuously; one untouched for this long belongs
# to a killed upload (ours, by name) and is removed.
DEFAULT_STALE_TEMP_SECONDS = 15 * 60.0


def _temp_name(final_name: str) -> str:
    return f".{final_name}.{secrets.token_hex(4)}.part"


def is_our_temporary(name: str, final_name: str | None = None) -> bool:
    """True for our upload temporaries (of `final_name` when given)."""
    match = _TEMP_RE.match(name)
    return match is not None and final_name in (None, match["final"])


def known_hosts_line(host: str, port: int, pub_key_line: str) -> str:
    """A known_hosts entry for `host:port` from a public key line `type base64 [comment]`."""
    key_type, key_b64 = pub_key_line.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key_type} {key_b64}"


def sha256_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint (`SHA256:...`), as `ssh-keygen -lf` shows it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _host_entry_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _parse_pinned_key(host_key: str, entry_name: str) -> paramiko.PKey:
    """A `[host]:port type base64` or `type base64` line -> key (host part must match)."""
    fields = host_key.split()
    if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        names = fields[0].split(",")
        if entry_name not in names:
            raise ValueError(f"pinned host key is for {fields[0]}, not {entry_name}")
        fields = fields[1:]
    if len(fields) < 2:
        raise ValueError("pinned host key must be 'type base64' or '[host]:port type base64'")
    import paramiko

    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ValueError(f"pinned host key cannot be parsed: {exc}") from exc


class _Session:
    """One authenticated connection: the SSH transport and its SFTP channel."""

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient) -> None:
        self.transport = transport
        self.sftp = sftp
        self.write_request = _SAFE_WRITE_REQUEST
        # Cleared when the server refuses posix-rename@openssh.com (plain rename then).
        self.posix_rename = True

    def close(self) -> None:
        # Closing a broken session must not mask the error that broke it.
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.transport.close()


class _RemotePermanentError(DeliveryError):
    """The server refused an SFTP operation in a way a retry cannot fix."""


class MediaMathSftp:
    """`Transport` into MediaMath's SFTP drop (S2S-SFTP)."""

    name = "sftp"
    delivered_files_stay_visible = False  # MediaMath moves files away once read

    def __init__(
        self,
        *,
        username: str,
        password: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        remote_dir: str = ".",
        known_hosts: Path | str | None = None,
        host_key: str | None = None,
        connect_timeout: float = 30.0,
        io_timeout: float = 120.0,
        max_attempts: int = 5,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        write_request_bytes: int | None = None,
        stale_temp_seconds: float = DEFAULT_STALE_TEMP_SECONDS,
    ) -> None:
        """Configure (no network I/O until the first upload).

        `known_hosts` is an OpenSSH known_hosts file; `host_key` pins one key line instead.
        Without either, every server is rejected: there is no trust-on-first-use.
        `write_request_bytes` forces the SFTP write size; by default 32 KiB, or what the
        server advertises through limits@openssh.com (capped at 255 KiB).
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        _REDACTOR.add(password)
        _REDACTOR.install(_LOGGERS_OF_SERVER_TEXT)
        self.remote_dir = remote_dir
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_file_bytes = max_file_bytes
        self.write_request_bytes = write_request_bytes
        self.stale_temp_seconds = stale_temp_seconds
        self._entry_name = _host_entry_name(host, port)
        self._trusted = self._load_trusted_keys(known_hosts, host_key)
        self._session: _Session | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"MediaMathSftp(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"remote_dir={self.remote_dir!r})"
        )

    # -- host keys -------------------------------------------------------------------------

    def _load_trusted_keys(
        self, known_hosts: Path | str | None, host_key: str | None
    ) -> list[paramiko.PKey]:
        import paramiko

        keys = paramiko.HostKeys()
        if known_hosts is not None:
            path = Path(known_hosts)
            if path.exists():
                keys.load(str(path))
            else:
                logger.warning("known_hosts file %s does not exist: no host is trusted", path)
        trusted: list[paramiko.PKey] = []
        # lookup() also matches hashed (`|1|...`) entries.
        entry = keys.lookup(self._entry_name)
        if entry is not None:
            trusted.extend(entry[t] for t in entry)
        if host_key is not None:
            trusted.append(_parse_pinned_key(host_key, self._entry_name))
        return trusted

    def _key_preferences(self, offered: tuple[str, ...]) -> list[str]:
        # Ask the server for a key type we hold first, so a server with several host keys
        # does not present one we would reject only because of its type.
        wanted: list[str] = []
        for key in self._trusted:
            algs = _RSA_ALGS if key.get_name() == "ssh-rsa" else (key.get_name(),)
            wanted.extend(a for a in algs if a in offered and a not in wanted)
        return wanted + [a for a in offered if a not in wanted]

    def _verify_host_key(self, transport: paramiko.Transport) -> None:
        presented = transport.get_remote_server_key()
        for known in self._trusted:
            if known.get_name() == presented.get_name() and known.asbytes() == presented.asbytes():
                return
        fingerprint = sha256_fingerprint(presented)
        if not self._trusted:
            reason = "unknown host (no trusted key for it)"
        else:
            reason = "host key does not match the trusted key (changed or wrong server)"
        raise HostKeyRejected(
            f"SFTP host key rejected for {self.host}:{self.port}: {reason}; server presented "
            f"{presented.get_name()} {fingerprint}"
        )

    # -- connection ------------------------------------------------------------------------

    def _connect(self) -> _Session:
        logger.debug("connecting to %s:%d", self.host, self.port)
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        import paramiko

        transport: paramiko.Transport | None = None
        try:
            transport = paramiko.Transport(
                sock,
                default_window_size=_WINDOW_SIZE,
                default_max_packet_size=_MAX_PACKET_SIZE,
            )
            # Gzip files do not compress; zlib would only burn CPU.
            transport.use_compression(False)
            transport.banner_timeout = self.connect_timeout
            transport.handshake_timeout = self.connect_timeout
            transport.auth_timeout = self.connect_timeout
            options = transport.get_security_options()
            offered = tuple(options.ciphers)
            options.ciphers = tuple(c for c in _PREFERRED_CIPHERS if c in offered) + tuple(
                c for c in offered if c not in _PREFERRED_CIPHERS
            )
            options.key_types = tuple(self._key_preferences(tuple(options.key_types)))
            # A bare Transport (not SSHClient): we verify the key ourselves, so we can name the
            # presented fingerprint on failure and never reach any auto-add policy.
            transport.start_client(timeout=self.connect_timeout)
            self._verify_host_key(transport)
            try:
                transport.auth_password(self.username, self._password, fallback=False)
            except paramiko.AuthenticationException as exc:
                raise AuthenticationFailed(
                    f"SFTP login refused for user {self.username!r} at {self.host}:{self.port} "
                    f"({type(exc).__name__})"
                ) from None
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise TransientDeliveryError("could not open the SFTP channel")
            sftp.get_channel().settimeout(self.io_timeout)
            session = _Session(transport, sftp)
            session.write_request = self._negotiate_write_size(sftp)
            logger.info(
                "connected to %s:%d as %s (cipher %s, write size %d)",
                self.host,
                self.port,
                self.username,
                transport.remote_cipher,
                session.write_request,
            )
            return session
        except BaseException:
            if transport is not None:
                transport.close()
            sock.close()
            raise

    def _negotiate_write_size(self, sftp: paramiko.SFTPClient) -> int:
        if self.write_request_bytes is not None:
            return self.write_request_bytes
        import paramiko

        try:
            # paramiko drops the server's extension list (and has no public API for
            # extended requests), so ask limits@openssh.com directly.
            kind, msg = sftp._request(paramiko.sftp.CMD_EXTENDED, "limits@openssh.com")
        except (OSError, paramiko.SFTPError):
            return _SAFE_WRITE_REQUEST
        if kind != paramiko.sftp.CMD_EXTENDED_REPLY:
            return _SAFE_WRITE_REQUEST
        msg.get_int64()  # max packet length
        msg.get_int64()  # max read length
        max_write = msg.get_int64()
        if max_write <= 0:
            return _SAFE_WRITE_REQUEST
        return max(_SAFE_WRITE_REQUEST, min(max_write, _MAX_WRITE_REQUEST))

    def _session_or_connect(self) -> _Session:
        session = self._session
        if session is not None and session.transport.is_active():
            return session
        self._drop_session()
        self._session = self._connect()
        return self._session

    def _drop_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def close(self) -> None:
        with self._lock:
            self._drop_session()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- error handling --------------------------------------------------------------------

    def _remote_path(self, name: str) -> str:
        if self.remote_dir in ("", "."):
            return name
        return f"{self.remote_dir.rstrip('/')}/{name}"

    @staticmethod
    def _is_transient(exc: BaseException) -> bool:
        if isinstance(exc, (HostKeyRejected, AuthenticationFailed, _RemotePermanentError)):
            return False
        if isinstance(exc, TransientDeliveryError):
            return True
        import paramiko

        if isinstance(exc, paramiko.AuthenticationException):
            return False
        if isinstance(exc, (paramiko.SSHException, EOFError, socket.timeout, ConnectionError)):
            return True
        if isinstance(exc, OSError):
            # SFTP status errors arrive as OSError; a missing folder or a permission
            # refusal will not heal by reconnecting, anything else (failure, lost socket) may.
            return exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM)
        return False

    # -- Transport API ---------------------------------------------------------------------

    def upload(self, file: OutgoingFile) -> UploadResult:
        """Send `file` so it only ever appears complete under `file.name`."""
        self._check_file(file)
        final = self._remote_path(file.name)
        # Temp of the previous failed attempt, and whether its rename may have been sent.
        stale: dict[str, object] = {"temp": None, "renamed_maybe": False}

        def attempt_upload(session: _Session, attempt: int) -> UploadResult:
            stale_temp = stale["temp"]
            if isinstance(stale_temp, str):
                if self._clean_stale_temp(session, stale_temp, bool(stale["renamed_maybe"])):
                    # The rename reached the server before the connection died: uploading
                    # again would deliver the file twice.
                    logger.info("%s was renamed before the connection dropped", final)
                    return UploadResult(final, file.size, attempt - 1)
                stale["temp"] = None
            if attempt == 1:
                self._remove_stale_temporaries(session, file.name)
            temp = self._remote_path(_temp_name(file.name))
            stale.update(temp=temp, renamed_maybe=False)
            try:
                self._send(session, file, temp)
            except _SizeMismatch:
                stale["temp"] = None  # _send already removed it
                raise
            stale["renamed_maybe"] = True
            self._rename(session, temp, final)
            logger.info(
                "uploaded %s (%d bytes) to %s:%d in %d attempt(s)",
                final,
                file.size,
                self.host,
                self.port,
                attempt,
            )
            return UploadResult(final, file.size, attempt)

        return self._with_retries(f"upload of {file.name}", attempt_upload, final)

    def _check_file(self, file: OutgoingFile) -> None:
        if "/" in file.name or file.name.startswith("."):
            raise FileRefused(f"{file.name!r} is not a valid remote file name")
        if file.size > self.max_file_bytes:
            raise FileRefused(
                f"{file.name} is {file.size} bytes, above the SFTP limit of "
                f"{self.max_file_bytes} bytes (S2S-QUOTA)"
            )
        try:
            actual = file.path.stat().st_size
        except OSError as exc:
            raise FileRefused(f"local file for {file.name} is not readable: {exc}") from None
        if actual != file.size:
            raise FileRefused(
                f"local file for {file.name} has {actual} bytes, the outbox says {file.size}"
            )

    def _permanent(self, exc: BaseException, what: str) -> BaseException:
        if isinstance(exc, DeliveryError):
            return exc  # ours: its text never quotes the password
        if isinstance(exc, OSError):
            return DeliveryError(
                _REDACTOR.redact(f"SFTP server refused {what!r}: {exc.strerror or exc}")
            )
        # Anything else (paramiko's own errors, a server's bytes it could not decode) may
        # quote the server, so it leaves as our error with its text redacted.
        return DeliveryError(f"{what} at {self.host}:{self.port} failed: {_describe(exc)}")

    def _rename(self, session: _Session, temp: str, final: str) -> None:
        """posix-rename, or a plain rename where the server lacks the extension (S2S-SFTP).

        The plain SFTP rename refuses an existing target, so it never replaces a file under
        the final name; it is used only after checking that the name is free.
        """
        if session.posix_rename:
            try:
                session.sftp.posix_rename(temp, final)
                return
            except OSError as exc:
                if exc.errno is not None or not _unsupported(exc):
                    raise
                logger.info("server refuses posix-rename@openssh.com; using plain rename")
                session.posix_rename = False
        try:
            size = session.sftp.stat(final).st_size
        except FileNotFoundError:
            session.sftp.rename(temp, final)
            return
        with contextlib.suppress(OSError):
            session.sftp.remove(temp)
        raise _RemotePermanentError(
            f"{final} already exists in the drop ({size} bytes) and the server cannot "
            f"replace it atomically (no posix-rename): not overwritten"
        )

    def _listing(self, session: _Session) -> list[paramiko.SFTPAttributes]:
        """The drop's entries, or none when the server does not let us list it (a drop may
        be write-only): temporaries are then neither seen nor removed, uploads go on."""
        folder = self.remote_dir if self.remote_dir not in ("", ".") else "."
        try:
            return session.sftp.listdir_attr(folder)
        except PermissionError as exc:
            logger.info("cannot list %s (%s): our temporaries are not checked", folder, exc)
            return []

    def _remove_stale_temporaries(self, session: _Session, final_name: str) -> None:
        """Remove our temporaries left by killed uploads: those of `final_name` (its delivery
        holds the in-flight record, so no live upload writes them) and any other of ours
        untouched for `stale_temp_seconds`. Never a file that is not ours by name."""
        now = time.time()
        for entry in self._listing(session):
            if not is_our_temporary(entry.filename) or stat.S_ISDIR(entry.st_mode or 0):
                continue
            idle = now - (entry.st_mtime or 0)
            if not is_our_temporary(entry.filename, final_name) and idle < self.stale_temp_seconds:
                continue
            try:
                session.sftp.remove(self._remote_path(entry.filename))
                logger.info("removed stale temporary %s (idle %.0f s)", entry.filename, idle)
            except FileNotFoundError:
                pass

    def _clean_stale_temp(self, session: _Session, stale_temp: str, renamed_maybe: bool) -> bool:
        """Remove a dropped attempt's temp; True when it is gone because its rename happened."""
        if renamed_maybe:
            try:
                session.sftp.stat(stale_temp)
            except FileNotFoundError:
                return True
        try:
            session.sftp.remove(stale_temp)
            logger.debug("removed stale temp %s", stale_temp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove stale temp %s: %s", stale_temp, _describe(exc))
        return False

    def _send(self, session: _Session, file: OutgoingFile, temp: str) -> None:
        sftp = session.sftp
        request = session.write_request
        started = time.monotonic()
        # bufsize=0: paramiko's own buffering would copy every block once more.
        with file.path.open("rb") as local, sftp.open(temp, "wb", bufsize=0) as remote:
            remote.set_pipelined(True)
            # Instance attribute: paramiko splits writes at this size.
            remote.MAX_REQUEST_SIZE = request
            block_size = max(_READ_BLOCK - _READ_BLOCK % request, request)
            while True:
                block = local.read(block_size)
                if not block:
                    break
                if len(block) <= request:
                    remote.write(block)
                    continue
                view = memoryview(block)
                for offset in range(0, len(block), request):
                    remote.write(bytes(view[offset : offset + request]))
        # Leaving the with-block waited for every pipelined write status, so errors surfaced.
        remote_size = sftp.stat(temp).st_size
        if remote_size != file.size:
            try:
                sftp.remove(temp)
            except OSError as exc:
                logger.warning("could not remove short temp %s: %s", temp, _describe(exc))
            raise _SizeMismatch(
                f"{temp} has {remote_size} bytes after upload, expected {file.size}"
            )
        elapsed = max(time.monotonic() - started, 1e-9)
        logger.debug(
            "wrote %s: %d bytes in %.2fs (%.1f MB/s)",
            temp,
            file.size,
            elapsed,
            file.size / elapsed / 1e6,
        )

    def remote_size(self, name: str) -> int | None:
        """Size of `name` in the drop, or None when it is not (or no longer) there."""
        return self.lookup(name).size

    def lookup(self, name: str) -> Sighting:
        """The final name's size and time in the drop, and our temporaries for it."""
        path = self._remote_path(name)

        def look(session: _Session) -> Sighting:
            try:
                attrs = session.sftp.stat(path)
                size: int | None = attrs.st_size
                landed = datetime.fromtimestamp(attrs.st_mtime, UTC) if attrs.st_mtime else None
            except FileNotFoundError:
                size, landed = None, None
            temps = tuple(
                sorted(
                    e.filename for e in self._listing(session) if is_our_temporary(e.filename, name)
                )
            )
            # MediaMath empties the drop after reading: absence proves nothing.
            return Sighting(name, size, landed, absent_is_proof=False, temporaries=temps)

        return self._with_retries(f"look-up of {path}", lambda session, _: look(session), path)

    def _with_retries(
        self,
        what: str,
        operation: Callable[[_Session, int], _T],
        target: str | None = None,
    ) -> _T:
        """`operation(session, attempt)` on a fresh connection per attempt (`clients.retry`);
        transient failures retried, others raised as our errors (never a secret)."""

        def attempt(number: int) -> _T:
            try:
                return operation(self._session_or_connect(), number)
            except Exception:
                self._drop_session()
                raise

        def log_retry(number: int, exc: Exception, delay: float) -> float:
            logger.warning(
                "%s failed (attempt %d/%d: %s); retrying in %.2fs",
                what,
                number,
                self.max_attempts,
                _describe(exc),
                delay,
            )
            return delay

        with self._lock:
            try:
                return retry(
                    attempt,
                    attempts=self.max_attempts,
                    backoff=Backoff(self.backoff_base_seconds, self.backoff_max_seconds),
                    retryable=self._is_transient,
                    before_retry=log_retry,
                )
            except RetriesExhausted as exhausted:
                raise TransientDeliveryError(
                    f"{what} at {self.host}:{self.port} failed after "
                    f"{exhausted.attempts} attempts: {_describe(exhausted.last)}"
                ) from None
            except Exception as exc:
                raise self._permanent(exc, target or what) from None


class _SizeMismatch(TransientDeliveryError):
    """The temp file's size differs from the local file: never renamed, retried."""


def _unsupported(exc: OSError) -> bool:
    # paramiko raises a bare IOError(text) for SSH_FX_OP_UNSUPPORTED / unknown extensions.
    text = str(exc).lower()
    return "unsupported" in text or "not supported" in text


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error recorded"
    text = _REDACTOR.redact(str(exc))  # often the server's own words
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
