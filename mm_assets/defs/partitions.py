"""One partition per export batch, added by the batch sensor or by `mm-assets build`."""

import warnings

import dagster as dg

export_batches = dg.DynamicPartitionsDefinition(name="export_batches")

# Every check is partitioned like its asset (one verdict per batch). Dagster 1.13 marks that
# "preview" and warns in every process that loads the definitions (the CLI, each run worker);
# the pinned version is the one tested, so the warning is noise to a user, said once here.
warnings.filterwarnings(
    "ignore",
    message="Specifying a partitions_def on an AssetCheckSpec",
    category=dg.PreviewWarning,
)
