"""Ingestion: the Segment-compatible tracking API, normalisation, the Redis stream producer,
the warehouse writer and the browser snippet."""
