"""MediaMathSftp against real SFTP servers over real sockets (S2S-SFTP, S2S-QUOTA).

Two peers: the in-process asyncssh sandbox (always; it also injects faults) and Debian's
OpenSSH sshd (needs root; installed on demand, as CI runs as root).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import asyncssh
import pytest

from mm_assets.clients.mediamath_sftp import MediaMathSftp, known_hosts_line
from mm_assets.clients.transport import (
    AuthenticationFailed,
    DeliveryError,
    FileRefused,
    HostKeyRejected,
    OutgoingFile,
    TransientDeliveryError,
)
from mm_assets.sandbox.openssh_server import OpenSshServer, ensure_openssh_installed
from mm_assets.sandbox.sftp_server import SandboxSftpServer

# Distinctive, so a leak into logs or messages cannot hide behind a common substring.
PASSWORD = "Pw-" + "s3cr3t-Kx9QzT4vLm"
WRONG_PASSWORD = "Pw-" + "wr0ng-Hj7RtY2pNb"


class SftpPeer(Protocol):
    host: str
    port: int
    username: str
    password: str
    root_dir: Path
    known_hosts_line: str

    @property
    def login_attempts(self) -> int: ...


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxSftpServer]:
    root = tmp_path_factory.mktemp("asyncssh-drop")
    with SandboxSftpServer(root, password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def openssh_server() -> Iterator[OpenSshServer]:
    if os.geteuid() != 0:
        pytest.skip("OpenSSH sshd peer needs root (password auth needs shadow access)")
    # As root (CI) the peer is mandatory: install it rather than skip.
    assert ensure_openssh_installed(), "could not install openssh-server"
    with OpenSshServer(password=PASSWORD) as server:
        yield server


@pytest.fixture(params=["asyncssh", "openssh"])
def peer(request: pytest.FixtureRequest) -> SftpPeer:
    name = "sandbox_server" if request.param == "asyncssh" else "openssh_server"
    return request.getfixturevalue(name)


def _drop_listing(peer: SftpPeer) -> set[str]:
    return {p.name for p in peer.root_dir.iterdir()}


@pytest.fixture
def clean_drop(peer: SftpPeer) -> Iterator[SftpPeer]:
    for path in peer.root_dir.iterdir():
        path.unlink()
    yield peer


def _make_file(tmp_path: Path, name: str, size: int) -> OutgoingFile:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return OutgoingFile(name=name, path=path, size=size, md5_hex=hashlib.md5(data).hexdigest())


def _client(peer: SftpPeer, tmp_path: Path, **overrides: object) -> MediaMathSftp:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(peer.known_hosts_line + "\n")
    kwargs: dict[str, object] = {
        "host": peer.host,
        "port": peer.port,
        "username": peer.username,
        "password": peer.password,
        "known_hosts": known_hosts,
        "connect_timeout": 10.0,
        "io_timeout": 10.0,
        "backoff_base_seconds": 0.01,
    }
    kwargs.update(overrides)
    return MediaMathSftp(**kwargs)  # type: ignore[arg-type]


def _fingerprint(pub_key_line: str) -> str:
    blob = base64.b64decode(pub_key_line.split()[-1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _login_attempts_settled(peer: SftpPeer, expected: int, timeout: float = 2.0) -> int:
    # sshd writes its log line just after answering the client.
    deadline = time.monotonic() + timeout
    while peer.login_attempts < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return peer.login_attempts


def test_upload_lands_complete_under_final_name(clean_drop: SftpPeer, tmp_path: Path) -> None:
    peer = clean_drop
    file = _make_file(tmp_path, "Agency_Partner_20250101120000.log.gz", 3 * 1024 * 1024 + 17)
    with _client(peer, tmp_path) as client:
        result = client.upload(file)
        assert client.remote_size(file.name) == file.size

    assert result.remote_path == file.name
    assert result.size == file.size
    assert result.attempts == 1
    assert _drop_listing(peer) == {file.name}  # no temp left behind
    assert (peer.root_dir / file.name).read_bytes() == file.path.read_bytes()


def test_pinned_host_key_and_remote_dir(clean_drop: SftpPeer, tmp_path: Path) -> None:
    peer = clean_drop
    (peer.root_dir / "incoming").mkdir()
    os.chown(peer.root_dir / "incoming", *_owner(peer.root_dir))
    file = _make_file(tmp_path, "Partner_20250101120001.log.gz", 100_000)
    pinned = peer.known_hosts_line.split(" ", 1)[1]  # bare `type base64`
    with _client(peer, tmp_path, known_hosts=None, host_key=pinned, remote_dir="incoming") as c:
        result = c.upload(file)
        assert c.remote_size(file.name) == file.size
    assert result.remote_path == f"incoming/{file.name}"
    assert {p.name for p in (peer.root_dir / "incoming").iterdir()} == {file.name}
    for path in (peer.root_dir / "incoming").iterdir():
        path.unlink()
    (peer.root_dir / "incoming").rmdir()


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def test_remote_size(clean_drop: SftpPeer, tmp_path: Path) -> None:
    peer = clean_drop
    (peer.root_dir / "Partner_20250101000000.log.gz").write_bytes(b"x" * 1234)
    with _client(peer, tmp_path) as client:
        assert client.remote_size("Partner_20250101000000.log.gz") == 1234
        assert client.remote_size("Partner_20990101000000.log.gz") is None


def test_dropped_connection_leaves_no_partial_and_retry_completes(
    sandbox_server: SandboxSftpServer, tmp_path: Path
) -> None:
    server = sandbox_server
    for path in server.root_dir.iterdir():
        path.unlink()
    file = _make_file(tmp_path, "Partner_20250101130000.log.gz", 4 * 1024 * 1024)

    # A single attempt shows what a drop leaves behind: nothing under the final name.
    server.drop_connection_after_bytes = 1024 * 1024
    with (
        _client(server, tmp_path, max_attempts=1) as client,
        pytest.raises(TransientDeliveryError, match="after 1 attempts"),
    ):
        client.upload(file)
    assert not (server.root_dir / file.name).exists()
    assert all(name.startswith(".") for name in _drop_listing(server))
    for path in server.root_dir.iterdir():
        path.unlink()

    dropped_before = server.dropped_connections
    server.drop_connection_after_bytes = 1024 * 1024
    with _client(server, tmp_path, max_attempts=3) as client:
        result = client.upload(file)
    assert server.dropped_connections == dropped_before + 1
    assert result.attempts == 2
    assert _drop_listing(server) == {file.name}  # the dropped attempt's temp was removed
    assert (server.root_dir / file.name).read_bytes() == file.path.read_bytes()


def test_wrong_host_key_is_rejected_without_retry(clean_drop: SftpPeer, tmp_path: Path) -> None:
    peer = clean_drop
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts = tmp_path / "known_hosts_wrong"
    known_hosts.write_text(known_hosts_line(peer.host, peer.port, other) + "\n")
    file = _make_file(tmp_path, "Partner_20250101140000.log.gz", 10_000)
    logins_before = peer.login_attempts

    started = time.monotonic()
    with (
        _client(peer, tmp_path, known_hosts=known_hosts, backoff_base_seconds=5.0) as client,
        pytest.raises(HostKeyRejected) as info,
    ):
        client.upload(file)
    elapsed = time.monotonic() - started

    message = str(info.value)
    assert f"{peer.host}:{peer.port}" in message
    assert _fingerprint(peer.known_hosts_line) in message
    assert elapsed < 4.0  # a retry would have slept >= 2.5 s
    assert _drop_listing(peer) == set()
    assert _login_attempts_settled(peer, logins_before) == logins_before  # password never sent


def test_unknown_host_is_rejected(clean_drop: SftpPeer, tmp_path: Path) -> None:
    peer = clean_drop
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    file = _make_file(tmp_path, "Partner_20250101150000.log.gz", 10_000)
    with (
        _client(peer, tmp_path, known_hosts=empty) as client,
        pytest.raises(HostKeyRejected, match="unknown host") as info,
    ):
        client.upload(file)
    assert _fingerprint(peer.known_hosts_line) in str(info.value)
    assert _drop_listing(peer) == set()


def test_wrong_password_fails_fast_without_retry(clean_drop: SftpPeer, tmp_path: Path) -> None:
    peer = clean_drop
    file = _make_file(tmp_path, "Partner_20250101160000.log.gz", 10_000)
    logins_before = peer.login_attempts

    started = time.monotonic()
    with (
        _client(peer, tmp_path, password=WRONG_PASSWORD, backoff_base_seconds=5.0) as client,
        pytest.raises(AuthenticationFailed) as info,
    ):
        client.upload(file)
    elapsed = time.monotonic() - started

    assert elapsed < 4.0
    assert _login_attempts_settled(peer, logins_before + 1) == logins_before + 1
    assert WRONG_PASSWORD not in str(info.value)
    assert _drop_listing(peer) == set()


def test_no_password_in_messages_or_logs(
    sandbox_server: SandboxSftpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = sandbox_server
    for path in server.root_dir.iterdir():
        path.unlink()
    caplog.set_level(logging.DEBUG)
    file = _make_file(tmp_path, "Partner_20250101170000.log.gz", 2 * 1024 * 1024)
    texts: list[str] = []

    with _client(server, tmp_path) as client:
        texts.append(repr(client))
        server.drop_connection_after_bytes = 512 * 1024
        client.upload(file)
    with _client(server, tmp_path, password=WRONG_PASSWORD) as client:
        with pytest.raises(AuthenticationFailed) as auth_info:
            client.upload(file)
        texts.append(str(auth_info.value))
    server.drop_connection_after_bytes = 1
    with _client(server, tmp_path, max_attempts=1) as client:
        with pytest.raises(TransientDeliveryError) as drop_info:
            client.upload(file)
        texts.append(str(drop_info.value))

    texts.append(caplog.text)
    assert "DEBUG" in caplog.text  # DEBUG capture really was on
    for text in texts:
        assert PASSWORD not in text
        assert WRONG_PASSWORD not in text


@pytest.mark.parametrize("refusal", ["failure", "permission"])
def test_a_server_echoing_the_password_in_its_refusals_leaks_it_nowhere(
    sandbox_server: SandboxSftpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    refusal: str,
) -> None:
    """Invariant 4, for text the server writes: its status messages reach our errors and logs
    (paramiko's included, at DEBUG) without the password. A failure is retried, then given up;
    a permission refusal is not retried."""
    server = sandbox_server
    caplog.set_level(logging.DEBUG)
    file = _make_file(tmp_path, "Partner_20250101171500.log.gz", 1000)
    server.faults.echo_password_refusal = refusal
    try:
        with (
            _client(server, tmp_path, max_attempts=2) as client,
            pytest.raises(DeliveryError) as refused,
        ):
            client.upload(file)
    finally:
        server.faults.echo_password_refusal = None
    assert server.faults.last_password == PASSWORD  # the server did have it to echo
    expected = TransientDeliveryError if refusal == "failure" else DeliveryError
    assert type(refused.value) is expected
    message = str(refused.value)
    assert "login was <redacted>" in message  # the server's text is kept, its secret is not
    # Our side's records (the client's and paramiko's); the in-process server logs its own.
    ours = [
        r.getMessage()
        for r in caplog.records
        if not r.name.startswith(("asyncssh", "mm_assets.sandbox"))
    ]
    assert any(r.startswith("[chan") for r in ours)  # paramiko's DEBUG records were captured
    for text in (message, repr(refused.value), *ours):
        assert PASSWORD not in text
    assert "Partner_20250101171500.log.gz" not in _drop_listing(server)


def test_file_over_limit_is_refused_before_connecting(tmp_path: Path) -> None:
    file = _make_file(tmp_path, "Partner_20250101180000.log.gz", 4096)
    # Port 9 on localhost: nothing listens, so any connection attempt would surface as a
    # transient error instead of FileRefused.
    client = MediaMathSftp(
        host="127.0.0.1",
        port=9,
        username="u",
        password=PASSWORD,
        max_file_bytes=4095,
        backoff_base_seconds=5.0,
    )
    started = time.monotonic()
    with pytest.raises(FileRefused, match="4095"):
        client.upload(file)
    assert time.monotonic() - started < 1.0

    huge = OutgoingFile(
        name="Partner_20250101180001.log.gz", path=file.path, size=4 * 1024**3 + 1, md5_hex=""
    )
    with pytest.raises(FileRefused, match="S2S-QUOTA"):
        MediaMathSftp(host="127.0.0.1", port=9, username="u", password=PASSWORD).upload(huge)


def test_drop_after_rename_is_not_delivered_twice(
    sandbox_server: SandboxSftpServer, tmp_path: Path
) -> None:
    server = sandbox_server
    for path in server.root_dir.iterdir():
        path.unlink()
    file = _make_file(tmp_path, "Partner_20250101190000.log.gz", 256 * 1024)
    server.drop_connection_after_rename = True
    with _client(server, tmp_path, max_attempts=3) as client:
        result = client.upload(file)
    assert not server.drop_connection_after_rename  # the fault did fire
    # The retry found its temp gone (renamed) and did not upload a second copy.
    assert result.attempts == 1
    assert _drop_listing(server) == {file.name}
    assert (server.root_dir / file.name).read_bytes() == file.path.read_bytes()


def test_refused_login_is_not_retried(sandbox_server: SandboxSftpServer, tmp_path: Path) -> None:
    server = sandbox_server
    server.fail_logins = 1
    before = server.login_attempts
    file = _make_file(tmp_path, "Partner_20250101200000.log.gz", 1000)
    with _client(server, tmp_path) as client, pytest.raises(AuthenticationFailed):
        client.upload(file)
    assert server.login_attempts == before + 1
    server.fail_logins = 0
