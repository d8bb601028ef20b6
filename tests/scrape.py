"""Reading the router's /metrics in tests: the real exposition, parsed by prometheus-client."""

from __future__ import annotations

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str, accept: str | None = None) -> str:
    headers = {"Accept": accept} if accept else {}
    # A fresh connection per scrape: a kept-alive one would count in active_connections.
    with httpx.Client(timeout=10) as c:
        resp = c.get(base_url + "/metrics", headers=headers)
    resp.raise_for_status()
    return resp.text


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, sample_name: str, **labels: str) -> float:
    """Sum of the samples named `sample_name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
