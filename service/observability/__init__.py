"""Metrics (all metric objects), logging (structlog) and the request lifecycle listeners."""

# A worker's flag file in the multiprocess metrics directory: up while its finished requests'
# records wait (completions); named here, where importing it imports no prometheus-client.
RECORD_FLAG = "completions_{pid}.flag"
