"""The processing-log resource: where MediaMath's log is (S2S-LOG), how long to wait for it."""

from __future__ import annotations

import dagster as dg

from mm_assets.clients.mediamath_processing_log import ProcessingLogClient
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.defs.settings import env_settings
from mm_assets.processing_log.polling import PollSettings, parse_duration
from mm_assets.processing_log.status_store import StatusStore


class MediaMathProcessingLog(dg.ConfigurableResource):
    """MediaMath's processing-log API (S2S-LOG), read with the delivery's SFTP credentials.

    `url`: empty = `https://s2s-api.datasvc.mediamath.com`, or for the `sandbox` delivery the
    sandbox's own log (from its state file). `deadline`: how long after upload a file may stay
    unanswered before it is reported timed out. `poll_interval`: first spacing between polls of
    one file, doubling up to `max_poll_interval`.
    """

    url: str = ""
    deadline: str = "6h"
    poll_interval: str = "1m"
    max_poll_interval: str = "30m"
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    # Kept short: the check and the sensor must finish; a file left pending is polled later.
    max_total_wait_seconds: float = 20.0
    ca_bundle: str = ""
    store_url: str = ""  # empty = the delivery ledger's database

    def poll_settings(self) -> PollSettings:
        return PollSettings(
            deadline=parse_duration(self.deadline),
            poll_interval=parse_duration(self.poll_interval),
            max_poll_interval=parse_duration(self.max_poll_interval),
        )

    def client(
        self, delivery: MediaMathDelivery, max_attempts: int | None = None
    ) -> ProcessingLogClient:
        url, username, password = delivery.processing_log_endpoint(self.url)
        return ProcessingLogClient(
            url,
            username,
            password,
            timeout=self.timeout_seconds,
            max_attempts=min(max_attempts or self.max_attempts, self.max_attempts),
            backoff=self.backoff_seconds,
            max_total_wait=self.max_total_wait_seconds,
            ca_bundle=self.ca_bundle or None,
        )

    def store(self, delivery: MediaMathDelivery) -> StatusStore:
        if self.store_url:
            return StatusStore(self.store_url)
        # Beside the receipts: the same database, so one backup (or one Postgres) holds both.
        ledger = delivery.get_ledger()
        try:
            return StatusStore(ledger.url.render_as_string(hide_password=False))
        finally:
            ledger.close()


def default_processing_log() -> MediaMathProcessingLog:
    return MediaMathProcessingLog(
        **env_settings(
            MediaMathProcessingLog,
            url="MM_PROCESSING_LOG_URL",
            deadline="MM_PROCESSING_LOG_DEADLINE",
            poll_interval="MM_PROCESSING_LOG_POLL_INTERVAL",
            ca_bundle="MM_PROCESSING_LOG_CA_BUNDLE",
        )
    )
