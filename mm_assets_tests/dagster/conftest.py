"""The delivery tests' fixtures (a built sample batch, its outbox copy, an instance, an SFTP
drop, a delivery resource), shared with the flow and alert tests here."""

from mm_assets_tests.delivery.conftest import (  # noqa: F401 (fixtures)
    built,
    delivery,
    instance,
    sftp_server,
    storage,
)
