"""What an operator reads first (issue 14, point 6): one start-up line saying what the process
serves; the path a client tried on a 404/405 completion line (never a metric label, never its
query); every `error_type` of `upstream_errors_total` and every translation direction exported
as 0 from the start, so alerts and `rate()` see a 0 instead of nothing."""

from __future__ import annotations

import httpx

from service.config.model import TRANSLATION_DIRECTIONS
from service.errors import ERROR_TYPES
from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream
from tests.scrape import scrape, series
from tests.support import RouterFactory


def test_start_up_line_and_zero_series_before_any_request(
    router_factory: RouterFactory, fake_upstream: FakeUpstream
) -> None:
    router = router_factory(base_profile(fake_upstream.url), workers=2)
    banner = router.wait_for_log(lambda r: r.get("event") == "api_router_starting")
    assert banner["level"] == "info"
    assert banner["profile"] == "testprov" and banner["upstream"] == fake_upstream.url
    assert banner["address"] == f"http://127.0.0.1:{router.port}" and banner["workers"] == 2
    assert len([r for r in router.logs() if r.get("event") == "api_router_starting"]) == 1

    found = series(scrape(router.url))
    for error_type in ERROR_TYPES:
        assert ("upstream_errors_total", (("error_type", error_type),)) in found, error_type
    for direction in TRANSLATION_DIRECTIONS:
        assert ("translations_total", (("direction", direction),)) in found, direction
    text = scrape(router.url)
    zero = [ln for ln in text.splitlines() if ln.startswith("upstream_errors_total{")]
    assert len(zero) == len(ERROR_TYPES) and all(ln.endswith(" 0.0") for ln in zero), zero


def test_a_404_or_405_line_names_the_path_without_its_query(
    router_factory: RouterFactory, fake_upstream: FakeUpstream
) -> None:
    router = router_factory(base_profile(fake_upstream.url))
    long_path = "/v1/" + "x" * 500
    with httpx.Client(base_url=router.url, timeout=10) as c:
        r = c.get("/v1/chat/completion?key=SECRETQUERY", headers={"X-Request-ID": "p404"})
        assert r.status_code == 404
        assert c.get(long_path, headers={"X-Request-ID": "plong"}).status_code == 404
        assert c.get("/v1/chat/completions", headers={"X-Request-ID": "p405"}).status_code == 405
        assert c.get("/health", headers={"X-Request-ID": "pok"}).status_code == 200

    def line(rid: str) -> dict[str, object]:
        return router.wait_for_log(
            lambda r: r.get("event") == "request_completed" and r.get("request_id") == rid
        )

    assert line("p404")["path"] == "/v1/chat/completion"
    assert line("p404")["route"] == "unmatched"
    assert line("plong")["path"] == long_path[:200]
    assert line("p405")["path"] == "/v1/chat/completions"
    assert "path" not in line("pok")  # a matched route says its route, as before
    assert "SECRETQUERY" not in router.output()
    # the path is never a metric label: 404s stay one `unmatched` series
    text = scrape(router.url)
    assert '"/v1/chat/completion"' not in text and "xxxx" not in text
    assert 'route="unmatched"' in text
