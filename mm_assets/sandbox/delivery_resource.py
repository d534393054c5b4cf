"""The `sandbox` delivery resource: the local sandbox's SFTP drop and processing log.

Chosen by `default_delivery` only when `MM_DELIVERY_TRANSPORT=sandbox` (the default with no
environment), so production code never imports it. Its ledger lives with the sandbox's state:
the sandbox is a throwaway MediaMath, and so are its receipts and quota use.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg

from mm_assets.clients.transport import Transport
from mm_assets.defs.delivery.resources import MediaMathDelivery
from mm_assets.sandbox.run_sandbox import STATE_FILE, SandboxState, not_running_reason


class SandboxDelivery(MediaMathDelivery):
    """Delivery into `mm-assets sandbox` (its state folder says where and how)."""

    sandbox_state_dir: str

    def state_dir(self) -> Path:
        return Path(self.sandbox_state_dir)

    def _sandbox(self) -> SandboxState:
        path = self.state_dir() / STATE_FILE
        if not path.exists():
            raise dg.Failure(
                f"no sandbox state in {self.state_dir()}: start the sandbox with "
                f"`mm-assets sandbox`"
            )
        data = json.loads(path.read_text())
        # Only the fields SandboxState knows: the state file may carry newer keys than it.
        known = {f.name for f in dataclasses.fields(SandboxState)} - {"state_dir"}
        return SandboxState(
            state_dir=self.state_dir(), **{k: v for k, v in data.items() if k in known}
        )

    def not_ready(self) -> str | None:
        return not_running_reason(self.state_dir())

    def transport_label(self) -> str:
        return "sftp"

    def get_transport(self) -> Transport:
        # Imported here: paramiko loads only in the step that delivers.
        from mm_assets.clients.mediamath_sftp import MediaMathSftp

        sandbox = self._sandbox()
        return MediaMathSftp(
            host="127.0.0.1",
            port=sandbox.sftp_port,
            username=sandbox.sftp_username,
            password=sandbox.sftp_password(),
            known_hosts=sandbox.known_hosts,
            max_attempts=2,
            backoff_base_seconds=0.2,
        )

    def processing_log_endpoint(self, url: str) -> tuple[str, str, str]:
        sandbox = self._sandbox()
        url = url or sandbox.processing_log_url
        if not url:
            raise dg.Failure(
                f"the sandbox in {self.state_dir()} does not serve a processing log: "
                f"restart it with `mm-assets sandbox`"
            )
        return url, sandbox.sftp_username, sandbox.sftp_password()
