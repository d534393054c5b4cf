"""The delivery resource: which transport carries files to MediaMath, the ledger and quotas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from mm_assets.clients.mediamath_cft import MediaMathCft
from mm_assets.clients.mediamath_sftp import MediaMathSftp
from mm_assets.clients.transport import Transport
from mm_assets.core.build_settings import parse_size
from mm_assets.core.quota import QuotaLimits
from mm_assets.defs.settings import STATE_DIR, int_setting, is_true, setting
from mm_assets.delivery.ledger import Ledger
from mm_assets.sandbox.run_sandbox import SandboxState

TRANSPORTS = ("sandbox", "sftp", "cft")


class MediaMathDelivery(dg.ConfigurableResource):
    """Delivery to MediaMath (S2S-SFTP, CFT-CRED/CFT-PUT) under S2S-QUOTA, with a ledger.

    `transport`: `sandbox` (the local sandbox's SFTP drop, the default), `sftp` or `cft`.
    """

    transport: str = "sandbox"
    sftp_host: str = "sftp.datasvc.mediamath.com"
    sftp_port: int = 2222
    username: str = ""
    password: str = ""
    remote_dir: str = "."
    known_hosts: str = ""
    host_key: str = ""
    cft_credentials_url: str = ""
    cft_bucket: str = "prod-default-cft"
    cft_integration: str = ""
    cft_endpoint_url: str = ""  # empty = AWS S3
    ledger_url: str = ""  # empty = SQLite file under the state folder
    files_per_hour: int = 20
    bytes_per_day: str = "5GB"
    dry_run: str = "false"  # "true": build and validate, upload nothing
    sandbox_state_dir: str = str(STATE_DIR / "sandbox")

    def quota_limits(self, max_file_bytes: int) -> QuotaLimits:
        return QuotaLimits(
            files_per_hour=self.files_per_hour,
            bytes_per_day=parse_size(self.bytes_per_day),
            max_file_bytes=max_file_bytes,
        )

    def get_ledger(self) -> Ledger:
        if self.ledger_url:
            return Ledger(self.ledger_url)
        # The sandbox is a throwaway MediaMath: its receipts and quota use live with it.
        folder = Path(self.sandbox_state_dir) if self.transport == "sandbox" else STATE_DIR
        path = folder / "ledger.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return Ledger(path)

    @property
    def is_dry_run(self) -> bool:
        return is_true(self.dry_run)

    def transport_label(self) -> str:
        return "sftp" if self.transport == "sandbox" else self.transport

    def get_transport(self) -> Transport:
        if self.transport not in TRANSPORTS:
            raise dg.Failure(
                f"MM_DELIVERY_TRANSPORT must be one of {', '.join(TRANSPORTS)}, "
                f"not {self.transport!r}"
            )
        if self.transport == "cft":
            return MediaMathCft(
                credentials_url=self.cft_credentials_url,
                username=self.username,
                password=self.password,
                integration=self.cft_integration,
                bucket=self.cft_bucket,
                endpoint_url=self.cft_endpoint_url or None,
            )
        if self.transport == "sftp":
            return MediaMathSftp(
                host=self.sftp_host,
                port=self.sftp_port,
                username=self.username,
                password=self.password,
                remote_dir=self.remote_dir,
                known_hosts=Path(self.known_hosts) if self.known_hosts else None,
                host_key=self.host_key or None,
            )
        sandbox = SandboxState.load(Path(self.sandbox_state_dir))
        return MediaMathSftp(
            host="127.0.0.1",
            port=sandbox.sftp_port,
            username=sandbox.sftp_username,
            password=sandbox.sftp_password(),
            known_hosts=sandbox.known_hosts,
            max_attempts=2,
            backoff_base_seconds=0.2,
        )

    @contextmanager
    def session(self) -> Iterator[tuple[Transport, Ledger]]:
        transport, ledger = self.get_transport(), self.get_ledger()
        try:
            yield transport, ledger
        finally:
            transport.close()
            ledger.close()


def default_delivery() -> MediaMathDelivery:
    return MediaMathDelivery(
        transport=setting("MM_DELIVERY_TRANSPORT", "sandbox"),
        sftp_host=setting("MM_SFTP_HOST", "sftp.datasvc.mediamath.com"),
        sftp_port=int_setting("MM_SFTP_PORT", 2222),
        username=setting("MM_SFTP_USERNAME", ""),
        password=setting("MM_SFTP_PASSWORD", ""),
        remote_dir=setting("MM_SFTP_REMOTE_DIR", "."),
        known_hosts=setting("MM_SFTP_KNOWN_HOSTS", ""),
        host_key=setting("MM_SFTP_HOST_KEY", ""),
        cft_credentials_url=setting("MM_CFT_CREDENTIALS_URL", ""),
        cft_bucket=setting("MM_CFT_BUCKET", "prod-default-cft"),
        cft_integration=setting("MM_CFT_INTEGRATION", ""),
        cft_endpoint_url=setting("MM_CFT_S3_ENDPOINT_URL", ""),
        ledger_url=setting("MM_DELIVERY_LEDGER_URL", ""),
        files_per_hour=int_setting("MM_QUOTA_FILES_PER_HOUR", 20),
        bytes_per_day=setting("MM_QUOTA_BYTES_PER_DAY", "5GB"),
        dry_run=setting("MM_DELIVERY_DRY_RUN", "false"),
        sandbox_state_dir=setting("MM_SANDBOX_STATE_DIR", str(STATE_DIR / "sandbox")),
    )
