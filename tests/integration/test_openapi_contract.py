"""docs/openapi.yaml against the live router (schemathesis): for every documented operation,
generated requests (valid and invalid) get no 5xx made by the router itself (the upstream is the
fake, answering normally), a documented status, and a body that matches its documented schema:
every router error is the OpenAI shape, or the Anthropic one on /v1/messages."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.support import ROOT, RouterFactory

schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(fake_upstream: FakeUpstream, module_router_factory: RouterFactory) -> str:
    profile = base_profile(fake_upstream.url, rateLimit={"requestsPerMinute": 6000, "burst": 20})
    return module_router_factory(profile).url


@pytest.fixture(autouse=True)
def _default_upstream(fake_upstream: FakeUpstream) -> None:
    """The fake answers normally (its default replies): the session's fake may still hold the
    reply an earlier test of this worker set without resetting it (an event stream, say, which it
    then sent to a HEAD as a body: the router's 502 was that test's, not this contract's)."""
    fake_upstream.reset()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_router_keeps_its_contract(case: schemathesis.Case, live: str) -> None:
    case.call_and_validate(base_url=live, checks=CHECKS, timeout=30)
