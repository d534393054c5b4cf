"""`MolocoExportSource`: one resource, one setting (`MM_MOLOCO_METHOD`) choosing the way in.

| method | rule | how |
|---|---|---|
| `local` (default) | | the local export folder (`BatchStorage.export_dir`), nothing staged |
| `wif` | MCM-WIF | credential configuration file -> google-auth -> GCS client |
| `dkr` | MCM-DKR | HMAC pair per session from the Management API -> S3-compatible endpoint |
| `sts` | MCM-STS | Storage Transfer Service into our own bucket -> GCS client on it |

A batch is the first path segment under `MM_MOLOCO_PREFIX` in `MM_MOLOCO_BUCKET`; its objects
are staged into `BatchStorage.export_dir/<batch>/`, where `raw_audiences` reads them.
MCM-LEGACY configurations (`MM_MOLOCO_METHOD=hmac|static`, a service-account key file) are
refused when the definitions load and again before any use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from mm_assets.clients.moloco_export import check_access_config
from mm_assets.clients.moloco_export.errors import CredentialError
from mm_assets.clients.moloco_export.key_rotation import (
    DEFAULT_S3_ENDPOINT,
    KeyRotationClient,
    KeyRotationSession,
    rotation_lock,
)
from mm_assets.clients.moloco_export.listing import (
    DEFAULT_PAGE_SIZE,
    ExportObject,
    ExportStore,
    GcsStore,
    LocalStore,
    S3Store,
    batch_fingerprint,
    group_batches,
    normalise_prefix,
)
from mm_assets.clients.moloco_export.staging import StageReport, stage_batch
from mm_assets.defs.settings import STATE_DIR, env_settings
from mm_assets.state.database import DATABASE_URL_ENV

logger = logging.getLogger(__name__)


@dataclass
class ExportAccess:
    """An open access session: a store and the prefix the batches live under."""

    store: ExportStore
    prefix: str
    location: str  # for messages and metadata: gs://bucket/prefix/ or a folder
    details: dict[str, Any] = field(default_factory=dict)


class MolocoExportSource(dg.ConfigurableResource):
    """Where the Moloco MCM export is read from, and how (see the module docstring)."""

    method: str = "local"
    bucket: str = ""
    prefix: str = ""
    credentials_file: str = ""
    gcp_project: str = ""
    gcs_endpoint: str = ""  # override (emulator, private endpoint); empty = Google
    api_base: str = ""
    platform_id: str = ""
    api_key: str = ""
    s3_endpoint: str = DEFAULT_S3_ENDPOINT
    rotation_spacing: str = "60"  # seconds, MCM-DKR: at least 1 minute
    key_activation_deadline: str = "90"  # seconds, MCM-DKR: up to 60 s to become active
    state_dir: str = str(STATE_DIR / "moloco")  # rotation lock + last rotation time
    # The shared database (the ledger's): when set, the rotation lock and time live there.
    state_database_url: str = ""
    sts_project: str = ""
    sts_destination_bucket: str = ""
    sts_endpoint: str = ""  # override of the transfer API endpoint; empty = Google
    sts_poll_interval: str = "10"
    sts_timeout: str = "21600"
    quiet_period: str = "600"  # seconds without change before a batch without _SUCCESS counts
    retry_deadline: str = "120"  # seconds the GCS client retries transient errors
    list_page_size: int = DEFAULT_PAGE_SIZE
    max_runs_per_tick: int = 20
    local_dir: str = ""  # method=local: empty = BatchStorage.export_dir

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        check_access_config(self.method, self.credentials_file)

    @property
    def normalised_method(self) -> str:
        return check_access_config(self.method, self.credentials_file)

    def secrets(self) -> tuple[str, ...]:
        """Values never to be shown (used to redact and by the tests' scans)."""
        return tuple(s for s in (self.api_key,) if s)

    # -- clients --------------------------------------------------------------------------

    def _gcs_credentials(self) -> Any:
        from mm_assets.clients.moloco_export.wif import load_wif_credentials

        if self.credentials_file:
            return load_wif_credentials(self.credentials_file)
        if self.gcs_endpoint or self.sts_endpoint:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()  # a local stand-in: like STORAGE_EMULATOR_HOST
        import google.auth

        try:
            # MCM-STS runs on GCP: the workload's own identity (metadata server).
            credentials, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
        except Exception as exc:
            raise CredentialError(
                f"no Google credentials for the Storage Transfer Service: {type(exc).__name__}"
            ) from None
        return credentials

    def _gcs_store(self, bucket: str, method: str) -> GcsStore:
        from mm_assets.clients.moloco_export.wif import gcs_client

        client = gcs_client(
            self._gcs_credentials(),
            self.gcp_project or self.sts_project or None,
            api_endpoint=self.gcs_endpoint or None,
        )
        return GcsStore(client, bucket, method=method, retry_deadline_s=float(self.retry_deadline))

    def transfer_runner(self, log: Callable[[str], None] | None = None) -> Any:
        from mm_assets.clients.moloco_export.storage_transfer import (
            StorageTransferRunner,
            transfer_client,
        )

        client = transfer_client(self._gcs_credentials(), self.sts_endpoint or None)
        return StorageTransferRunner(
            client,
            self.sts_project,
            self.bucket,
            self.prefix,
            self.sts_destination_bucket,
            poll_interval_s=float(self.sts_poll_interval),
            timeout_s=float(self.sts_timeout),
            log=log,
        )

    @contextlib.contextmanager
    def open(
        self,
        local_dir: str | Path = "",
        *,
        transfer: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> Iterator[ExportAccess]:
        """An access session. `dkr` holds the rotation lock for its whole length (MCM-DKR);
        `sts` with `transfer=True` first copies the export into the own bucket (MCM-STS)."""
        method = self.normalised_method
        prefix = normalise_prefix(self.prefix)
        if method == "local":
            root = self.local_dir or str(local_dir)
            yield ExportAccess(LocalStore(root), "", root)
        elif method == "wif":
            self._need("MM_MOLOCO_BUCKET", self.bucket)
            yield ExportAccess(
                self._gcs_store(self.bucket, "wif"), prefix, f"gs://{self.bucket}/{prefix}"
            )
        elif method == "dkr":
            self._need("MM_MOLOCO_BUCKET", self.bucket)
            session = KeyRotationSession(
                KeyRotationClient(self.api_base, self.platform_id, self.api_key),
                rotation_lock(
                    self.state_dir, float(self.rotation_spacing), self.state_database_url or None
                ),
                activation_deadline_s=float(self.key_activation_deadline),
            )
            with session.open(self.s3_endpoint, self.bucket) as (key, client):
                yield ExportAccess(
                    S3Store(client, self.bucket, (key.secret_key, key.key_id, self.api_key)),
                    prefix,
                    f"s3://{self.bucket}/{prefix} at {self.s3_endpoint}",
                    {
                        "key_rotations": session.rotations,
                        "waited_for_spacing_s": round(session.waited_for_spacing_s, 2),
                        "waited_for_key_activation_s": round(session.waited_for_activation_s, 2),
                    },
                )
        else:
            self._need("MM_MOLOCO_STS_DESTINATION_BUCKET", self.sts_destination_bucket)
            details: dict[str, Any] = {}
            if transfer:
                result = self.transfer_runner(log).run()
                details = {
                    "transfer_job": result.job_name,
                    "transfer_operation": result.operation,
                    "transfer_objects_copied": result.objects_copied,
                    "transfer_bytes_copied": result.bytes_copied,
                }
            yield ExportAccess(
                self._gcs_store(self.sts_destination_bucket, "sts"),
                prefix,
                f"gs://{self.sts_destination_bucket}/{prefix}",
                details,
            )

    @staticmethod
    def _need(name: str, value: str) -> None:
        if not value:
            raise CredentialError(f"{name} is not set")

    # -- what the asset and the sensor call --------------------------------------------------

    def list_batches(self, local_dir: str | Path = "") -> dict[str, list[ExportObject]]:
        """Every batch under the prefix with its objects (paged listing)."""
        with self.open(local_dir) as access:
            objects = list(access.store.iter_objects(access.prefix, self.list_page_size))
        return group_batches(objects, access.prefix)

    def stage(
        self,
        batch: str,
        dest: Path,
        local_dir: str | Path = "",
        log: Callable[[str], None] | None = None,
    ) -> tuple[StageReport, ExportAccess]:
        """Stage one batch into `dest` (for `local`: only describe the folder)."""
        log = log or logger.info
        with self.open(local_dir, transfer=True, log=log) as access:
            head = f"{access.prefix}{batch}/"
            objects = list(access.store.iter_objects(head, self.list_page_size))
            if access.store.method == "local":
                report = StageReport(
                    batch=batch,
                    method="local",
                    version=batch_fingerprint([o for o in objects if not o.is_marker]),
                )
                for obj in objects:
                    if obj.is_marker:
                        continue
                    report.objects += 1
                    report.bytes_total += obj.size
                    report.files[obj.name[len(head) :]] = {
                        "bytes": obj.size,
                        "version": obj.version,
                    }
                    report.skipped_unchanged.append(obj.name[len(head) :])
            else:
                report = stage_batch(access.store, access.prefix, batch, objects, dest, log=log)
        return report, access


def default_moloco_source() -> MolocoExportSource:
    """The resource from `MM_MOLOCO_*` settings. MCM-LEGACY configurations fail here, when
    the code location loads, with a message naming the supported methods."""
    import os

    check_access_config(
        os.environ.get("MM_MOLOCO_METHOD", "local"),
        os.environ.get("MM_MOLOCO_CREDENTIALS_FILE", ""),
    )
    return MolocoExportSource(
        **env_settings(
            MolocoExportSource,
            method="MM_MOLOCO_METHOD",
            bucket="MM_MOLOCO_BUCKET",
            prefix="MM_MOLOCO_PREFIX",
            credentials_file="MM_MOLOCO_CREDENTIALS_FILE",
            gcp_project="MM_MOLOCO_GCP_PROJECT",
            gcs_endpoint="MM_MOLOCO_GCS_ENDPOINT",
            api_base="MM_MOLOCO_API_BASE",
            platform_id="MM_MOLOCO_PLATFORM_ID",
            api_key="MM_MOLOCO_API_KEY",
            s3_endpoint="MM_MOLOCO_S3_ENDPOINT",
            rotation_spacing="MM_MOLOCO_ROTATION_SPACING",
            key_activation_deadline="MM_MOLOCO_KEY_ACTIVATION_DEADLINE",
            state_dir="MM_MOLOCO_STATE_DIR",
            state_database_url=DATABASE_URL_ENV,
            sts_project="MM_MOLOCO_STS_PROJECT",
            sts_destination_bucket="MM_MOLOCO_STS_DESTINATION_BUCKET",
            sts_endpoint="MM_MOLOCO_STS_ENDPOINT",
            sts_poll_interval="MM_MOLOCO_STS_POLL_INTERVAL",
            sts_timeout="MM_MOLOCO_STS_TIMEOUT",
            quiet_period="MM_MOLOCO_QUIET_PERIOD",
            retry_deadline="MM_MOLOCO_RETRY_DEADLINE",
            list_page_size="MM_MOLOCO_LIST_PAGE_SIZE",
            max_runs_per_tick="MM_MOLOCO_MAX_RUNS_PER_TICK",
        )
    )
