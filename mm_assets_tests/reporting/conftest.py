"""The reporting tests reuse the delivery fixtures: the sample batch built once through
Dagster, per test a copy of its outbox and work folder, an SFTP drop and a delivery."""

from mm_assets_tests.delivery.conftest import (  # noqa: F401 (fixtures)
    built,
    delivery,
    instance,
    sftp_server,
    storage,
)
