"""MCM-STS: GCP Storage Transfer Service copies the export into the customer's own bucket.

MOLOCO grants read access on the export bucket to the customer project's transfer service agent
`project-PROJECT_NUMBER@storage-transfer-service.iam.gserviceaccount.com`; the agent must also
be able to write the destination bucket. We create (once) or reuse a transfer job
`transferJobs/mm-assets-moloco-<hash>` for (project, source bucket, prefix, destination), run it,
wait for its operation while logging the counters, and the batch is then read from the own
bucket with the ordinary GCS client. When access is denied, the error names the agent's email
(asked from the API itself, `googleServiceAccounts.get`), which is what the customer has to
send to MOLOCO.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mm_assets.clients.moloco_export.errors import (
    CredentialError,
    TransferAccessDenied,
    TransferFailed,
    TransientSourceError,
)
from mm_assets.clients.moloco_export.listing import normalise_prefix

logger = logging.getLogger(__name__)

SERVICE_AGENT_FORMAT = "project-{number}@storage-transfer-service.iam.gserviceaccount.com"


def service_agent_email(project_number: str | int) -> str:
    return SERVICE_AGENT_FORMAT.format(number=project_number)


def transfer_client(credentials: Any = None, api_endpoint: str | None = None) -> Any:
    """The official client, REST transport (works through proxies and with a local stand-in)."""
    from google.cloud import storage_transfer

    options = {"api_endpoint": api_endpoint} if api_endpoint else None
    return storage_transfer.StorageTransferServiceClient(
        credentials=credentials, transport="rest", client_options=options
    )


@dataclass
class TransferResult:
    job_name: str
    operation: str
    created_job: bool
    objects_copied: int
    bytes_copied: int
    objects_found: int
    seconds: float


class StorageTransferRunner:
    def __init__(
        self,
        client: Any,
        project_id: str,
        source_bucket: str,
        prefix: str,
        destination_bucket: str,
        *,
        poll_interval_s: float = 10.0,
        timeout_s: float = 6 * 3600.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not project_id or not destination_bucket or not source_bucket:
            raise CredentialError(
                "Storage Transfer Service needs MM_MOLOCO_STS_PROJECT, "
                "MM_MOLOCO_BUCKET and MM_MOLOCO_STS_DESTINATION_BUCKET"
            )
        self.client = client
        self.project_id = project_id
        self.source_bucket = source_bucket
        self.prefix = normalise_prefix(prefix)
        self.destination_bucket = destination_bucket
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.log = log or logger.info
        self._agent: str | None = None

    @property
    def job_name(self) -> str:
        # Deterministic, so every run (and every process) reuses the same job.
        key = f"{self.project_id}|{self.source_bucket}|{self.prefix}|{self.destination_bucket}"
        return f"transferJobs/mm-assets-moloco-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def service_agent(self) -> str:
        """The project's transfer service agent email (MCM-STS: give it to MOLOCO)."""
        if self._agent is None:
            try:
                account = self.client.get_google_service_account(
                    request={"project_id": self.project_id}
                )
                self._agent = account.account_email
            except Exception:
                self._agent = service_agent_email("PROJECT_NUMBER")
        return self._agent

    def _denied(self, what: str) -> TransferAccessDenied:
        agent = self.service_agent()
        return TransferAccessDenied(
            f"Storage Transfer Service access denied while {what} (MCM-STS): MOLOCO must grant "
            f"read access on gs://{self.source_bucket} to the transfer service agent {agent}, "
            f"and that agent needs write access to gs://{self.destination_bucket}.",
            agent,
        )

    def _map(self, exc: Exception, what: str) -> Exception:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden):
            return self._denied(what)
        if isinstance(exc, gexc.Unauthenticated | gexc.Unauthorized | aexc.GoogleAuthError):
            return CredentialError(f"Storage Transfer Service: {what}: {type(exc).__name__}")
        if isinstance(
            exc,
            gexc.ServiceUnavailable
            | gexc.InternalServerError
            | gexc.TooManyRequests
            | gexc.DeadlineExceeded
            | ConnectionError,
        ):
            return TransientSourceError(f"Storage Transfer Service: {what}: {exc}")
        return TransferFailed(f"Storage Transfer Service: {what}: {type(exc).__name__}: {exc}")

    def ensure_job(self) -> bool:
        """Create the job unless it exists; True when it was created."""
        from google.api_core import exceptions as gexc
        from google.cloud import storage_transfer

        try:
            job = self.client.get_transfer_job(
                request={"job_name": self.job_name, "project_id": self.project_id}
            )
            if job.status != storage_transfer.TransferJob.Status.ENABLED:
                raise TransferFailed(f"{self.job_name} exists but is {job.status.name}")
            return False
        except gexc.NotFound:
            pass
        except TransferFailed:
            raise
        except Exception as exc:
            raise self._map(exc, f"looking up {self.job_name}") from None
        job = storage_transfer.TransferJob(
            name=self.job_name,
            project_id=self.project_id,
            description="mm-assets: Moloco MCM export -> own bucket (MCM-STS)",
            status=storage_transfer.TransferJob.Status.ENABLED,
            transfer_spec=storage_transfer.TransferSpec(
                gcs_data_source=storage_transfer.GcsData(
                    bucket_name=self.source_bucket, path=self.prefix
                ),
                gcs_data_sink=storage_transfer.GcsData(
                    bucket_name=self.destination_bucket, path=self.prefix
                ),
                # Incremental: objects already copied with the same content are skipped.
                transfer_options=storage_transfer.TransferOptions(
                    overwrite_when=storage_transfer.TransferOptions.OverwriteWhen.DIFFERENT
                ),
            ),
        )
        try:
            self.client.create_transfer_job(request={"transfer_job": job})
        except gexc.AlreadyExists:
            return False  # another process created it first
        except Exception as exc:
            raise self._map(exc, f"creating {self.job_name}") from None
        self.log(
            f"created transfer job {self.job_name}: gs://{self.source_bucket}/"
            f"{self.prefix} -> gs://{self.destination_bucket}/{self.prefix}"
        )
        return True

    def run(self) -> TransferResult:
        """Create or reuse the job, run it, wait for the operation (progress in the log)."""
        start = time.monotonic()
        created = self.ensure_job()
        try:
            op = self.client.run_transfer_job(
                request={"job_name": self.job_name, "project_id": self.project_id}
            )
        except Exception as exc:
            raise self._map(exc, f"starting {self.job_name}") from None
        name = op.operation.name
        self.log(f"transfer {name} started")
        last = None
        try:
            while not op.done():
                progress = self._counters(op)
                if progress != last:
                    self.log(
                        f"transfer {name}: {progress[0]} of {progress[2]} objects, "
                        f"{progress[1]} bytes copied"
                    )
                    last = progress
                if time.monotonic() - start > self.timeout_s:
                    raise TransientSourceError(
                        f"transfer {name} not done after {self.timeout_s:.0f} s"
                    )
                time.sleep(self.poll_interval_s)
            op.result()
        except (TransientSourceError, TransferAccessDenied):
            raise
        except Exception as exc:
            if "permission" in str(exc).lower() or "access" in str(exc).lower():
                raise self._denied(f"running {name}") from None
            raise self._map(exc, f"running {name}") from None
        copied, nbytes, found = self._counters(op)
        self.log(f"transfer {name} done: {copied} objects, {nbytes} bytes copied")
        return TransferResult(
            self.job_name, name, created, copied, nbytes, found, time.monotonic() - start
        )

    @staticmethod
    def _counters(op: Any) -> tuple[int, int, int]:
        meta = op.metadata
        counters = getattr(meta, "counters", None)
        if counters is None:
            return (0, 0, 0)
        return (
            int(counters.objects_copied_to_sink),
            int(counters.bytes_copied_to_sink),
            int(counters.objects_found_from_source),
        )
