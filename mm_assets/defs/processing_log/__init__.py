"""MediaMath's processing log (S2S-LOG) in Dagster: a check per batch, a polling sensor."""
