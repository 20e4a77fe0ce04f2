"""Dramatiq actors of the ingest queue."""
