"""One partition per export batch, added by the batch sensor or by `mm-assets build`."""

import dagster as dg

export_batches = dg.DynamicPartitionsDefinition(name="export_batches")
