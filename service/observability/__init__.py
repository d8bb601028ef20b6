"""Metrics (all metric objects), logging (structlog) and the request lifecycle listeners."""
