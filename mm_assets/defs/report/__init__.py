"""The batch report in the UI: the `batch_report` asset, one partition per batch."""
