"""`Server-Timing` (SPEC §14): the router's own time and the upstream's, on every response.

A leaf module (the relay and the lifecycle listeners both use it). Durations are milliseconds
with three decimals, as the header's `dur` parameter wants them:

- a whole response (JSON, errors, 429s, `/health`…), written when it is about to be sent:
  `router;dur=<its own time>, upstream;dur=<the upstream's time>` — the same two numbers the
  lifecycle listeners record as `router_overhead_seconds` and `upstream_latency_seconds`
  (`upstream` absent when nothing was sent upstream);
- a stream, whose head goes out before its end is known: `router;dur=<own time until the head>,
  upstream;desc="head";dur=<until the upstream's head>, ttfb;dur=<request start to the head>`
  (only `ttfb` when heartbeats committed the head before the upstream answered: how that time
  divides between the router and the upstream is not known yet).
"""

from __future__ import annotations

SERVER_TIMING = "Server-Timing"


def _ms(secs: float) -> str:
    return f"{max(0.0, secs) * 1000:.3f}"


def whole(elapsed: float, upstream: float | None) -> str:
    """For a response sent whole: `elapsed` since the request's head, `upstream` its part."""
    if upstream is None:
        return f"router;dur={_ms(elapsed)}"
    return f"router;dur={_ms(elapsed - upstream)}, upstream;dur={_ms(upstream)}"


def stream_head(ttfb: float, upstream_head: float | None) -> str:
    """For a stream's head, written `ttfb` after the request's head; `upstream_head`: how long
    the upstream took to answer with its own head (None: it has not yet)."""
    if upstream_head is None:  # the wait was the upstream's, but how much of it is not known yet
        return f"ttfb;dur={_ms(ttfb)}"
    return (
        f'router;dur={_ms(ttfb - upstream_head)}, upstream;desc="head";dur={_ms(upstream_head)}, '
        f"ttfb;dur={_ms(ttfb)}"
    )
