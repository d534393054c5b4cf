"""The delivery resources: one per transport into MediaMath, behind one base.

`MediaMathDelivery` holds what every transport shares (ledger, quotas, retries, dry run);
`SftpDelivery` (S2S-SFTP) and `CftDelivery` (CFT-CRED, CFT-PUT) each build their client. The
definitions choose one when they load, from `MM_DELIVERY_TRANSPORT` (`default_delivery`);
the local sandbox's resource lives in `mm_assets/sandbox/` and is imported only when the
sandbox is chosen, so production code never imports the sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import dagster as dg

from mm_assets.clients.mediamath_processing_log import DEFAULT_BASE_URL
from mm_assets.clients.mediamath_sftp import DEFAULT_HOST, DEFAULT_PORT
from mm_assets.clients.transport import Transport
from mm_assets.core.build_settings import parse_size
from mm_assets.core.quota import BYTES_PER_DAY, FILES_PER_HOUR, GB, QuotaLimits
from mm_assets.defs.settings import STATE_DIR, env_settings, is_true
from mm_assets.delivery.ledger import Ledger
from mm_assets.delivery.retries import RetryPolicy
from mm_assets.state.database import DATABASE_URL_ENV

TRANSPORTS = ("sandbox", "sftp", "cft")


class MediaMathDelivery(dg.ConfigurableResource):
    """Delivery to MediaMath under S2S-QUOTA, with a ledger; subclasses pick the transport."""

    username: str = ""
    password: str = ""
    ledger_url: str = ""  # empty = SQLite file under the state folder
    files_per_hour: int = FILES_PER_HOUR
    bytes_per_day: str = f"{BYTES_PER_DAY // GB}GB"
    dry_run: str = "false"  # "true": build and validate, upload nothing
    retry_attempts: int = 5  # failed runs of a file before it needs a person
    retry_first_delay_seconds: int = 60  # doubles per failed run
    retry_max_delay_seconds: int = 3600

    def quota_limits(self) -> QuotaLimits:
        # The per-file limit is S2S-QUOTA's 4 GB for every transport (CFT-SAME): QuotaLimits'.
        return QuotaLimits(
            files_per_hour=self.files_per_hour, bytes_per_day=parse_size(self.bytes_per_day)
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.retry_attempts,
            first_delay=timedelta(seconds=self.retry_first_delay_seconds),
            max_delay=timedelta(seconds=self.retry_max_delay_seconds),
        )

    def state_dir(self) -> Path:
        """Where the default SQLite ledger lives."""
        return STATE_DIR

    def get_ledger(self) -> Ledger:
        if self.ledger_url:
            return Ledger(self.ledger_url)
        path = self.state_dir() / "ledger.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return Ledger(path)

    @property
    def is_dry_run(self) -> bool:
        return is_true(self.dry_run)

    def transport_label(self) -> str:
        """The transport's name as receipts record it ("sftp" or "cft")."""
        raise NotImplementedError

    def get_transport(self) -> Transport:
        raise NotImplementedError

    def not_ready(self) -> str | None:
        """Why a delivery cannot start at all right now, in the user's words, checked before a
        run is launched (None: go; remote failures are the run's to report)."""
        return None

    def processing_log_endpoint(self, url: str) -> tuple[str, str, str]:
        """(base URL, username, password) of the processing log (S2S-LOG: the SFTP login)."""
        return url or DEFAULT_BASE_URL, self.username, self.password

    @contextmanager
    def session(self) -> Iterator[tuple[Transport, Ledger]]:
        transport, ledger = self.get_transport(), self.get_ledger()
        try:
            yield transport, ledger
        finally:
            transport.close()
            ledger.close()


class SftpDelivery(MediaMathDelivery):
    """MediaMath's SFTP drop (S2S-SFTP), host key pinned by `known_hosts` or `host_key`."""

    sftp_host: str = DEFAULT_HOST
    sftp_port: int = DEFAULT_PORT
    remote_dir: str = "."
    known_hosts: str = ""
    host_key: str = ""
    # Tries within one upload (fresh connection each); the run-level retries come on top.
    connect_attempts: int = 5
    backoff_seconds: float = 1.0

    def transport_label(self) -> str:
        return "sftp"

    def get_transport(self) -> Transport:
        # Imported here: paramiko (and its crypto) would otherwise load with the definitions
        # in every step process, most of which never deliver.
        from mm_assets.clients.mediamath_sftp import MediaMathSftp

        return MediaMathSftp(
            host=self.sftp_host,
            port=self.sftp_port,
            username=self.username,
            password=self.password,
            remote_dir=self.remote_dir,
            known_hosts=Path(self.known_hosts) if self.known_hosts else None,
            host_key=self.host_key or None,
            max_attempts=self.connect_attempts,
            backoff_base_seconds=self.backoff_seconds,
        )


class CftDelivery(MediaMathDelivery):
    """MediaMath Cloud File Transfer: temporary credentials (CFT-CRED), one PUT (CFT-PUT)."""

    cft_credentials_url: str = ""
    cft_bucket: str = "prod-default-cft"
    cft_integration: str = ""
    cft_endpoint_url: str = ""  # empty = AWS S3

    def transport_label(self) -> str:
        return "cft"

    def get_transport(self) -> Transport:
        # Imported here, like the SFTP client: botocore loads only when CFT delivers.
        from mm_assets.clients.mediamath_cft import MediaMathCft

        return MediaMathCft(
            credentials_url=self.cft_credentials_url,
            username=self.username,
            password=self.password,
            integration=self.cft_integration,
            bucket=self.cft_bucket,
            endpoint_url=self.cft_endpoint_url or None,
        )


# Settings of every transport: field name -> environment variable.
SHARED_VARIABLES = {
    "username": "MM_SFTP_USERNAME",
    "password": "MM_SFTP_PASSWORD",
    "ledger_url": DATABASE_URL_ENV,  # also the register's and the locks' (mm_assets.state)
    "files_per_hour": "MM_QUOTA_FILES_PER_HOUR",
    "bytes_per_day": "MM_QUOTA_BYTES_PER_DAY",
    "dry_run": "MM_DELIVERY_DRY_RUN",
    "retry_attempts": "MM_DELIVERY_RETRY_ATTEMPTS",
    "retry_first_delay_seconds": "MM_DELIVERY_RETRY_FIRST_DELAY_SECONDS",
}


def default_delivery() -> MediaMathDelivery:
    """The delivery resource `MM_DELIVERY_TRANSPORT` names, read once when definitions load."""
    transport = os.environ.get("MM_DELIVERY_TRANSPORT", "sandbox") or "sandbox"
    if transport == "sftp":
        return SftpDelivery(
            **env_settings(
                SftpDelivery,
                sftp_host="MM_SFTP_HOST",
                sftp_port="MM_SFTP_PORT",
                remote_dir="MM_SFTP_REMOTE_DIR",
                known_hosts="MM_SFTP_KNOWN_HOSTS",
                host_key="MM_SFTP_HOST_KEY",
                **SHARED_VARIABLES,
            )
        )
    if transport == "cft":
        return CftDelivery(
            **env_settings(
                CftDelivery,
                cft_credentials_url="MM_CFT_CREDENTIALS_URL",
                cft_bucket="MM_CFT_BUCKET",
                cft_integration="MM_CFT_INTEGRATION",
                cft_endpoint_url="MM_CFT_S3_ENDPOINT_URL",
                **SHARED_VARIABLES,
            )
        )
    if transport == "sandbox":
        # Only here: the sandbox is a development stand-in, never loaded in production.
        from mm_assets.sandbox.delivery_resource import SandboxDelivery

        shared = {k: v for k, v in SHARED_VARIABLES.items() if k not in ("username", "password")}
        return SandboxDelivery(
            **{
                "sandbox_state_dir": str(STATE_DIR / "sandbox"),
                **env_settings(SandboxDelivery, sandbox_state_dir="MM_SANDBOX_STATE_DIR", **shared),
            }
        )
    raise dg.DagsterInvalidDefinitionError(
        f"MM_DELIVERY_TRANSPORT must be one of {', '.join(TRANSPORTS)}, not {transport!r}"
    )
