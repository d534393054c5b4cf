"""What every delivery transport to MediaMath (SFTP, Cloud File Transfer) offers.

The delivery code talks to this protocol only; the SFTP and CFT clients implement it.
No Dagster import here (DESIGN.md, layer 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class OutgoingFile:
    """A built S2S file ready to leave the machine."""

    name: str  # the final remote name == FileIdentifier (S2S-HDR)
    path: Path  # the local file in the outbox
    size: int  # gzipped bytes
    md5_hex: str


@dataclass(frozen=True)
class UploadResult:
    remote_path: str
    size: int
    attempts: int


@dataclass(frozen=True)
class Sighting:
    """What a transport can see of one file name in MediaMath's drop or bucket right now.

    `size` is None when the final name is not there. `absent_is_proof`: the transport keeps
    every file it received (CFT objects stay in the bucket), so "not there" proves it never
    landed; an SFTP drop is emptied by MediaMath after reading, so there it proves nothing.
    `temporaries`: our own dot-prefixed temporary names for this file still in the drop (an
    upload died before its rename).
    """

    name: str
    size: int | None
    landed_at: datetime | None
    absent_is_proof: bool
    temporaries: tuple[str, ...] = ()


class DeliveryError(Exception):
    """A delivery failed. Messages never carry a secret (password, key, token)."""

    retryable: bool = False


class TransientDeliveryError(DeliveryError):
    """Connection reset, timeout, 5xx: worth another try on a fresh connection."""

    retryable = True


class AuthenticationFailed(DeliveryError):
    """Wrong username/password or refused credentials: never retried."""


class HostKeyRejected(DeliveryError):
    """The server's host key is unknown or changed (S2S-SFTP): never retried."""


class FileRefused(DeliveryError):
    """The file breaks a transport rule (size limit, multipart) and was not sent."""


class ServiceDown(TransientDeliveryError):
    """A service every file needs (the CFT credentials endpoint) is down after its retries.

    The batch stops at the first one: its other files would each wait out the same outage.
    They are sent by a later run.
    """


class Transport(Protocol):
    """One way into MediaMath's drop (S2S-SFTP or CFT-PUT)."""

    name: str  # "sftp" or "cft"
    # The transport's own ceiling; delivery applies S2S-QUOTA's 4 GB to every transport.
    max_file_bytes: int
    # Capability: a delivered file stays listed in the drop (CFT's bucket), so "absent" means
    # "never landed". False for SFTP, where MediaMath moves files away once it has read them.
    delivered_files_stay_visible: bool

    def upload(self, file: OutgoingFile) -> UploadResult:
        """Send the file so it only ever appears complete under `file.name`."""
        ...

    def remote_size(self, name: str) -> int | None:
        """Size of `name` in the drop, or None when it is not (or no longer) there."""
        ...

    def lookup(self, name: str) -> Sighting:
        """What the drop or bucket shows of `name` (see `Sighting`); raises DeliveryError."""
        ...

    def close(self) -> None: ...
