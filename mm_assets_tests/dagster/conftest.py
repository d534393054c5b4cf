"""The delivery tests' fixtures (a built sample batch, its outbox copy, an instance, an SFTP
drop, a delivery resource), shared with the flow and alert tests here, and `cli_env`: a
DAGSTER_HOME and storage for `mm-assets` commands run in the test process."""

import shutil
from pathlib import Path

import pytest

from mm_assets.defs.settings import SAMPLE_EXPORT_DIR
from mm_assets_tests.delivery.conftest import (  # noqa: F401 (fixtures)
    built,
    delivery,
    instance,
    sftp_server,
    storage,
)

BATCH = "batch_20261120"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The UI's instance launches a submitted run at once (as the daemon's queue would, later).
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MM_ASSETS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MM_ASSETS_OUTBOX_DIR", str(tmp_path / "outbox"))
    shutil.copytree(SAMPLE_EXPORT_DIR / BATCH, tmp_path / "export" / BATCH)
    return tmp_path
