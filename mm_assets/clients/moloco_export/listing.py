"""What is in the export: objects, batches, versions, and the stores that list and read them.

A **batch** is the first path segment under the export prefix: `PREFIX/<batch>/...` (objects
directly under the prefix belong to no batch and are ignored). A batch's **version** is a hash of
its object names and generations (GCS) or ETags (S3) or mtimes (local), so rewriting an object
in place gives a new version while re-listing the same objects gives the same one.

Stores share one small interface (`ExportStore`): a paged listing and a streamed read. Errors
are sorted into `TransientSourceError` (retry later) and `CredentialError` (fix access).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mm_assets.clients.moloco_export.errors import (
    CredentialError,
    MolocoExportError,
    TransientSourceError,
)
from mm_assets.clients.redaction import redact

SUCCESS_MARKER = "_SUCCESS"
DEFAULT_PAGE_SIZE = 1000
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ExportObject:
    """One object of the export. `version` is the GCS generation, the S3 ETag or a local
    mtime+size: whatever changes when the object is rewritten. `md5_hex`/`crc32c_b64` are the
    checksums the store published (either may be missing, e.g. S3 multipart ETags)."""

    name: str
    size: int
    version: str
    md5_hex: str | None = None
    crc32c_b64: str | None = None
    updated: float = 0.0  # seconds since the epoch, as the store reports it

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def is_marker(self) -> bool:
        """Markers and hidden objects (`_SUCCESS`, `.x`) are not data (the reader skips them)."""
        return self.basename.startswith(("_", "."))


def normalise_prefix(prefix: str) -> str:
    """`a/b` -> `a/b/`; `` and `/` -> `` (the whole bucket)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def batch_of(name: str, prefix: str) -> str | None:
    """The batch an object belongs to: the first path segment under the prefix, else None."""
    prefix = normalise_prefix(prefix)
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    batch, sep, tail = rest.partition("/")
    if not sep or not tail or not batch or batch.startswith((".", "_")):
        return None
    return batch


def group_batches(objects: list[ExportObject], prefix: str) -> dict[str, list[ExportObject]]:
    batches: dict[str, list[ExportObject]] = {}
    for obj in objects:
        batch = batch_of(obj.name, prefix)
        if batch is not None and not obj.name.endswith("/"):
            batches.setdefault(batch, []).append(obj)
    return batches


def batch_fingerprint(objects: list[ExportObject]) -> str:
    """A version fingerprint of a batch: hash of its sorted (name, version) pairs."""
    digest = hashlib.sha256()
    for obj in sorted(objects, key=lambda o: o.name):
        digest.update(obj.name.encode("utf-8", "surrogateescape"))  # a name as its bytes
        digest.update(b"\0")
        digest.update(obj.version.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def has_success_marker(objects: list[ExportObject]) -> bool:
    return any(o.basename == SUCCESS_MARKER for o in objects)


class ExportStore(Protocol):
    """What staging and the sensor need from any access method."""

    method: str

    def iter_objects(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ExportObject]: ...

    def write_to(self, obj: ExportObject, out: BinaryIO) -> None:
        """Stream the listed version of `obj` into `out` (memory bounded)."""


# --- local folder ------------------------------------------------------------------------------


class LocalStore:
    """The local export folder: `root/<batch>/...` (the default, `method=local`)."""

    method = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def iter_objects(
        self, prefix: str = "", page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ExportObject]:
        base = self.root / normalise_prefix(prefix)
        if not base.is_dir():
            return
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            st = path.stat()
            yield ExportObject(
                name=path.relative_to(self.root).as_posix(),
                size=st.st_size,
                version=f"{st.st_mtime_ns}-{st.st_size}",
                updated=st.st_mtime,
            )

    def write_to(self, obj: ExportObject, out: BinaryIO) -> None:
        with open(self.root / obj.name, "rb") as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)


# --- Google Cloud Storage (MCM-WIF, and the own bucket of MCM-STS) ------------------------------


def _gcs_error(exc: Exception, what: str) -> MolocoExportError:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    text = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, aexc.TransportError):
        return TransientSourceError(text)
    if isinstance(exc, aexc.GoogleAuthError | gexc.Unauthorized | gexc.Forbidden | gexc.NotFound):
        # NotFound on the export bucket is an access problem too: GCS answers 404 to readers
        # who may not see a bucket's name, and retrying will not make it appear.
        return CredentialError(text)
    return TransientSourceError(text)


class GcsStore:
    """One bucket through the official client (MCM-WIF: credentials from the federation file)."""

    def __init__(
        self, client: Any, bucket: str, method: str = "wif", retry_deadline_s: float = 120.0
    ) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.client = client
        self.bucket = bucket
        self.method = method
        # The client's own retry (transient errors, backoff) bounded by a setting, so a sensor
        # tick gives up in time and says why instead of hanging for the default 120 s.
        self.retry = DEFAULT_RETRY.with_timeout(retry_deadline_s)
        self.timeout = min(60.0, max(retry_deadline_s, 1.0))

    def iter_objects(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ExportObject]:
        try:
            blobs = self.client.list_blobs(
                self.bucket,
                prefix=normalise_prefix(prefix),
                page_size=page_size,
                retry=self.retry,
                timeout=self.timeout,
            )
            for page in blobs.pages:
                for blob in page:
                    yield ExportObject(
                        name=blob.name,
                        size=int(blob.size or 0),
                        version=str(blob.generation),
                        md5_hex=base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None,
                        crc32c_b64=blob.crc32c,
                        updated=blob.updated.timestamp() if blob.updated else 0.0,
                    )
        except MolocoExportError:
            raise
        except Exception as exc:
            raise _gcs_error(exc, f"listing gs://{self.bucket}/{prefix}") from None

    def write_to(self, obj: ExportObject, out: BinaryIO) -> None:
        # The generation pins the read to the version that was listed: a rewrite during the
        # download fails the read instead of mixing two versions. Raw bytes, so the checksums
        # compare with what was stored (no transparent gunzip).
        blob = self.client.bucket(self.bucket).blob(obj.name, generation=int(obj.version))
        try:
            blob.download_to_file(out, raw_download=True, checksum=None, retry=self.retry)
        except Exception as exc:
            raise _gcs_error(exc, f"reading gs://{self.bucket}/{obj.name}") from None


# --- S3-compatible endpoint (MCM-DKR) -----------------------------------------------------------


def s3_error(exc: Exception, what: str, secrets: tuple[str | None, ...] = ()) -> MolocoExportError:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    text = redact(f"{what}: {type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        if status in (401, 403) or code in (
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "NoSuchBucket",
        ):
            return CredentialError(text)
        return TransientSourceError(text)
    if isinstance(exc, NoCredentialsError):
        return CredentialError(text)
    if isinstance(exc, BotoCoreError):
        return TransientSourceError(text)
    return TransientSourceError(text)


class S3Store:
    """The export bucket through GCS's S3-compatible XML API with an HMAC pair (MCM-DKR)."""

    method = "dkr"

    def __init__(self, client: Any, bucket: str, secrets: tuple[str | None, ...] = ()) -> None:
        self.client = client
        self.bucket = bucket
        self._secrets = secrets

    def iter_objects(
        self, prefix: str, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[ExportObject]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=normalise_prefix(prefix),
                PaginationConfig={"PageSize": page_size},
            )
            for page in pages:
                for item in page.get("Contents", []):
                    etag = item["ETag"].strip('"')
                    yield ExportObject(
                        name=item["Key"],
                        size=int(item["Size"]),
                        version=etag,
                        # A multipart ETag (`...-N`) is not an MD5 of the bytes.
                        md5_hex=None if "-" in etag else etag,
                        updated=item["LastModified"].timestamp(),
                    )
        except MolocoExportError:
            raise
        except Exception as exc:
            raise s3_error(exc, f"listing s3://{self.bucket}/{prefix}", self._secrets) from None

    def write_to(self, obj: ExportObject, out: BinaryIO) -> None:
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=obj.name, IfMatch=f'"{obj.version}"'
            )["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK):
                    out.write(chunk)
            finally:
                body.close()
        except Exception as exc:
            raise s3_error(exc, f"reading s3://{self.bucket}/{obj.name}", self._secrets) from None
