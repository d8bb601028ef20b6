"""The coroutines a request waits in hold no closure cells.

CPython's cyclic collector runs a young-generation collection whenever allocations of tracked
objects outnumber deallocations by 700 since the last one. What a request holds while it
awaits the upstream (its coroutines and their objects) counts until it is freed, so with tens
of requests in flight a few more objects per request decide whether the collector runs every
few requests or rarely. A function whose nested functions capture its variables makes one
`cell` per captured name each time it starts, even on a branch that never makes the nested
function: `failover._relay` held four for the streaming branch on every JSON request, and one
worker serving JSON through a routing file at 64 connections ran 806 first-generation
collections in 8 s instead of 197, ~7 us of worker CPU per request (bench/README, "A routing
file's cost"). The stream's closures now live in `_relay_stream`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from service.proxy import failover, relay, sse, upstream

# The coroutines a proxied request is suspended in while its upstream answers (JSON and
# stream, plain profile and routing file).
WAITED_IN: list[Callable[..., Any]] = [
    relay.forward,
    relay._exchange,
    failover.forward_routed,
    failover._relay,
    failover._Attempts.run,
    failover._Attempts.open_stream,
    upstream.send,
    sse.relay_stream,
]


@pytest.mark.parametrize("fn", WAITED_IN, ids=lambda f: f.__qualname__)
def test_no_closure_cells_in_the_coroutines_a_request_waits_in(fn: Callable[..., Any]) -> None:
    assert inspect.iscoroutinefunction(fn)
    assert fn.__code__.co_cellvars == (), (
        f"{fn.__qualname__} makes a cell per call for {fn.__code__.co_cellvars}: move the "
        "nested functions to a function of their own (see this module's docstring)"
    )


def test_the_stream_branch_keeps_its_closures_apart() -> None:
    """The check above can fail: the routed stream's relay does capture its names."""
    assert set(failover._relay_stream.__code__.co_cellvars) >= {"attempts", "state"}
