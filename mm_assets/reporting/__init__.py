"""What the data engineer reads: one report per batch (no Dagster import)."""
