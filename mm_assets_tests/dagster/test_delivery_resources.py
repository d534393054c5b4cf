"""One delivery resource per transport, chosen once when the definitions load; the sandbox
stays out of production imports; S2S-QUOTA's 4 GB per file holds for every transport."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mm_assets.clients.transport import OutgoingFile
from mm_assets.core.quota import GB
from mm_assets.defs.delivery.resources import (
    CftDelivery,
    MediaMathDelivery,
    SftpDelivery,
    default_delivery,
)
from mm_assets.delivery.deliver import Status, deliver_batch
from mm_assets.delivery.ledger import Ledger

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def loaded_in_fresh_python(transport: str) -> dict[str, object]:
    """Load the code location as `dagster dev` does, in a new interpreter."""
    code = (
        "import json, sys\n"
        "from mm_assets.definitions import defs\n"
        "delivery = defs.resources['delivery']\n"
        "sandbox = sorted(m for m in sys.modules if m.startswith('mm_assets.sandbox'))\n"
        "print(json.dumps({'resource': type(delivery).__name__, 'sandbox_imported': sandbox,\n"
        "                  'paramiko_imported': 'paramiko' in sys.modules}))"
    )
    env = {"MM_DELIVERY_TRANSPORT": transport, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("transport, resource", [("sftp", "SftpDelivery"), ("cft", "CftDelivery")])
def test_production_transports_load_without_importing_the_sandbox(
    transport: str, resource: str
) -> None:
    loaded = loaded_in_fresh_python(transport)
    assert (loaded["resource"], loaded["sandbox_imported"]) == (resource, [])


def test_loading_the_definitions_leaves_paramiko_to_the_first_sftp_connection() -> None:
    # Every command loads the code location, `mm-assets build` too: SFTP's library (~0.2 s of
    # CPU) loads only when a file is sent (test_sftp_transport sends them).
    assert loaded_in_fresh_python("sftp")["paramiko_imported"] is False


def test_the_sandbox_resource_is_chosen_only_when_asked_for() -> None:
    assert loaded_in_fresh_python("sandbox")["resource"] == "SandboxDelivery"


def test_an_unknown_transport_is_refused_when_the_definitions_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_DELIVERY_TRANSPORT", "ftp")
    with pytest.raises(Exception, match="MM_DELIVERY_TRANSPORT must be one of"):
        default_delivery()


def test_transports_declare_whether_delivered_files_stay_visible() -> None:
    sftp = SftpDelivery(username="u", password="p").get_transport()
    cft = CftDelivery(username="u", password="p", cft_integration="i").get_transport()
    assert (sftp.delivered_files_stay_visible, cft.delivered_files_stay_visible) == (False, True)


@pytest.mark.parametrize("delivery", [SftpDelivery(), CftDelivery(cft_integration="i")])
def test_a_file_over_4_gb_is_refused_over_every_transport(
    delivery: MediaMathDelivery, tmp_path: Path
) -> None:
    """S2S-QUOTA: 4 GB per file, also over CFT, whose own object limit (CFT-PUT) is 5 GB."""
    assert delivery.quota_limits().max_file_bytes == 4 * GB
    big = OutgoingFile(
        name="ExamplePartner_20261120120000.log.gz",
        path=tmp_path / "never-read.log.gz",  # refused before any byte is read or sent
        size=4_500_000_000,
        md5_hex="0" * 32,
    )
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        report = deliver_batch(
            [big],
            "batch",
            delivery.get_transport(),
            ledger,
            delivery.quota_limits(),
            now=lambda: datetime(2026, 11, 20, 12, tzinfo=UTC),
        )
    assert report.entries[0].status is Status.REFUSED
    assert "S2S-QUOTA" in report.entries[0].message
