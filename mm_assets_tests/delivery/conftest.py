"""Fixtures of the gating and retry tests: the sample batch built once with its checks, then
per test a copy of its outbox, a Dagster instance, an SFTP drop and a delivery resource."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mm_assets.defs.delivery.resources import SftpDelivery
from mm_assets.defs.partitions import export_batches
from mm_assets.defs.resources import BatchStorage
from mm_assets.sandbox.sftp_server import SandboxSftpServer
from mm_assets_tests.delivery.test_delivery_assets import (
    BATCH,
    BUILD_ASSETS,
    BUILD_CHECKS,
    SAMPLE_BATCH,
    SFTP_PASSWORD,
    new_instance,
    sftp_delivery,
)
from mm_assets_tests.delivery.test_gating import build_resources


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gated")
    shutil.copytree(SAMPLE_BATCH, root / "export" / BATCH)
    storage = BatchStorage(
        export_dir=str(root / "export"),
        work_dir=str(root / "work"),
        outbox_dir=str(root / "outbox"),
    )
    with new_instance(root / "dagster") as instance:
        instance.add_dynamic_partitions(export_batches.name, [BATCH])
        result = dg.materialize(
            [*BUILD_ASSETS, *BUILD_CHECKS],
            selection=BUILD_ASSETS[1:],
            partition_key=BATCH,
            instance=instance,
            resources=build_resources(storage),
        )
        assert result.success
    return root


@pytest.fixture
def storage(built: Path, tmp_path: Path) -> BatchStorage:
    shutil.copytree(built / "outbox" / BATCH, tmp_path / "outbox" / BATCH)
    shutil.copytree(built / "work", tmp_path / "work")
    return BatchStorage(
        export_dir=str(built / "export"),
        work_dir=str(tmp_path / "work"),
        outbox_dir=str(tmp_path / "outbox"),
    )


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Any]:
    with new_instance(tmp_path / "dagster") as opened:
        opened.add_dynamic_partitions(export_batches.name, [BATCH])
        yield opened


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SandboxSftpServer]:
    with SandboxSftpServer(tmp_path / "drop", password=SFTP_PASSWORD) as server:
        yield server


@pytest.fixture
def delivery(sftp_server: SandboxSftpServer, tmp_path: Path) -> SftpDelivery:
    return sftp_delivery(sftp_server, tmp_path / "known_hosts", tmp_path / "ledger.sqlite")
