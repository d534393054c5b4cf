"""The Moloco MCM export as a Dagster source: resource, staging asset, new-batch sensor."""
