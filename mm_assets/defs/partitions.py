"""One partition per export batch, added by the batch sensor or by `mm-assets build`."""

import warnings

import dagster as dg
import sqlalchemy as sa

export_batches = dg.DynamicPartitionsDefinition(name="export_batches")

# Every check is partitioned like its asset (one verdict per batch). Dagster 1.13 marks that
# "preview" and warns in every process that loads the definitions (the CLI, each run worker);
# the pinned version is the one tested, so the warning is noise to a user, said once here.
warnings.filterwarnings(
    "ignore",
    message="Specifying a partitions_def on an AssetCheckSpec",
    category=dg.PreviewWarning,
)


def register_export_batch(instance: dg.DagsterInstance, batch: str) -> None:
    """Add the batch's partition, also when another process adds it at the same moment.

    Dagster reads which keys exist and then inserts the others: the batch sensor and a
    command adding one new batch together meet its unique index, and the later one fails
    (for the sensor, a failed tick shown red although nothing needs a person).
    """
    try:
        instance.add_dynamic_partitions(export_batches.name, [batch])
    except sa.exc.IntegrityError:
        if not instance.has_dynamic_partition(export_batches.name, batch):
            raise
