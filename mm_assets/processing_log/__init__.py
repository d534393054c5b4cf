"""MediaMath's processing log (S2S-LOG) as domain logic, no Dagster: the per-file status
store beside the delivery ledger and the polling that fills it. The Dagster checks and
sensor that use them are in `mm_assets/defs/processing_log/`."""
