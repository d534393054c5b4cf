"""Snapshot mode in Dagster: the diff's safety check, the held state asset and its sensor."""
