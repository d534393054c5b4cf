"""`dagster-webserver` as a user starts it, in its own process, and its GraphQL API."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from mm_assets_tests.cli.first_hour import PROJECT_ROOT

WEBSERVER = Path(sys.executable).with_name("dagster-webserver")
# Generous bounds (CI's two busy cores): only a hang reaches them.
READY_TIMEOUT = 240
REQUEST_TIMEOUT = 120


class Webserver:
    def __init__(self, url: str) -> None:
        self.url = url

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        answer = requests.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables},
            timeout=REQUEST_TIMEOUT,
        )
        answer.raise_for_status()
        body = answer.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]


def _free_port() -> int:
    # The kernel's choice of a free ephemeral port; dagster-webserver has no `--port 0` (it
    # takes 0 as "3000, or another if taken"), so a race for it is retried below.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def dagster_webserver(env: dict[str, str], log_dir: Path) -> Iterator[Webserver]:
    """`dagster-webserver -w workspace.yaml` on a free port until the block ends."""
    for attempt in range(3):
        port = _free_port()
        log_path = log_dir / f"webserver_{attempt}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [str(WEBSERVER), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if _ready(process, f"http://127.0.0.1:{port}"):
                yield Webserver(f"http://127.0.0.1:{port}")
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if "address already in use" not in log_path.read_text().lower():
            raise AssertionError(f"dagster-webserver did not start:\n{log_path.read_text()}")
    raise AssertionError("no free port for dagster-webserver after 3 tries")


def _ready(process: subprocess.Popen[bytes], url: str) -> bool:
    """True once the webserver answers; False if it exited first (a port taken meanwhile)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if requests.get(f"{url}/server_info", timeout=10).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"dagster-webserver did not answer within {READY_TIMEOUT} s")
