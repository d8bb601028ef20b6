"""Hot reload (SPEC §3): a good edit is applied, a broken edit keeps the last good config."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import base_profile
from tests.fakes.upstream import FakeUpstream, Reply, openai_chat
from tests.scrape import scrape, value
from tests.support import RouterFactory, RouterProcess


def _wait(predicate, timeout: float = 6.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            # One worker has it; each worker checks once a second, so all have it 1 s later.
            time.sleep(1.2)
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _rewrite(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data if isinstance(data, str) else json.dumps(data))
    os.replace(tmp, path)  # what editors and ConfigMap updates do: an atomic rename


def test_good_edit_applied_broken_edit_ignored(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    profile = base_profile(upstream.url)
    r = router_factory(profile, workers=2)
    path = r.profile_path
    body = {"model": "gpt-4", "messages": []}
    httpx.post(r.url + "/v1/chat/completions", json=body)
    assert upstream.last.json()["model"] == "up-model-4"

    # a good edit: new mapping, new name
    profile["modelMapping"] = {"gpt-4": "reloaded-model"}
    profile["name"] = "renamed"
    _rewrite(path, profile)
    _wait(lambda: httpx.get(r.url + "/health").json()["profile"] == "renamed")
    # every worker has it: several requests on fresh connections
    for _ in range(6):
        httpx.post(r.url + "/v1/chat/completions", json=body)
        assert upstream.last.json()["model"] == "reloaded-model"

    # a broken edit: invalid value; the last good config stays
    _rewrite(path, {**profile, "rateLimit": {"requestsPerMinute": -5}})
    _wait(lambda: httpx.get(r.url + "/health").json()["config"]["lastError"] is not None)
    state = httpx.get(r.url + "/health").json()["config"]
    assert state["status"] == "error"
    assert "$.rateLimit.requestsPerMinute" in state["lastError"]
    assert state["reloadFailures"] >= 1
    for _ in range(4):
        resp = httpx.post(r.url + "/v1/chat/completions", json=body)
        assert resp.status_code == 200
        assert upstream.last.json()["model"] == "reloaded-model"
    r.wait_for_log(lambda x: x.get("event") == "config_reload_failed")
    metrics = httpx.get(r.url + "/metrics").text
    # one broken edit, seen by each of the 2 workers
    assert "\nconfig_reload_failures_total 2.0\n" in metrics

    # invalid JSON too
    _rewrite(path, "{ not json")
    _wait(
        lambda: "invalid JSON" in (httpx.get(r.url + "/health").json()["config"]["lastError"] or "")
    )
    assert httpx.post(r.url + "/v1/chat/completions", json=body).status_code == 200

    # fixing the file clears the error
    profile["modelMapping"] = {"gpt-4": "fixed-model"}
    _rewrite(path, profile)
    _wait(lambda: httpx.get(r.url + "/health").json()["config"]["status"] == "ok")
    httpx.post(r.url + "/v1/chat/completions", json=body)
    assert upstream.last.json()["model"] == "fixed-model"


def test_configmap_style_symlink_swap_is_picked_up(
    tmp_path: Path, upstream: FakeUpstream, router_factory: RouterFactory
) -> None:
    """Kubernetes mounts a ConfigMap as `name -> ..data/name`, `..data -> ..<timestamp>/` and
    updates it by swapping the `..data` link: the router must follow the path, not the file it
    pointed at when it started."""
    profile = base_profile(upstream.url)

    def version(tag: str, data: dict[str, object]) -> None:
        d = tmp_path / f"..{tag}"
        d.mkdir()
        (d / "profile.json").write_text(json.dumps(data))
        link = tmp_path / "..data_tmp"
        link.symlink_to(d.name)
        os.replace(link, tmp_path / "..data")

    version("v1", profile)
    (tmp_path / "profile.json").symlink_to("..data/profile.json")
    r = router_factory(tmp_path / "profile.json")
    body = {"model": "gpt-4", "messages": []}
    httpx.post(r.url + "/v1/chat/completions", json=body)
    assert upstream.last.json()["model"] == "up-model-4"
    version("v2", {**profile, "name": "swapped", "modelMapping": {"gpt-4": "from-v2"}})
    _wait(lambda: httpx.get(r.url + "/health").json()["profile"] == "swapped")
    httpx.post(r.url + "/v1/chat/completions", json=body)
    assert upstream.last.json()["model"] == "from-v2"
    assert httpx.get(r.url + "/health").json()["config"]["status"] == "ok"


def test_health_reports_when_the_config_was_loaded(router: RouterProcess) -> None:
    state = httpx.get(router.url + "/health").json()["config"]
    assert abs(state["loadedAt"] - time.time()) < 3600


def test_a_request_in_flight_is_reported_with_the_config_it_ran_on(
    router_factory: RouterFactory, upstream: FakeUpstream
) -> None:
    """SPEC §3: requests in flight keep the config they started with, their log line and
    metrics included (they were reported under the new profile's name and models)."""
    profile = base_profile(upstream.url)
    r = router_factory(profile, env={"LOG_FORMAT": "json"})
    upstream.reply_with(
        lambda req: Reply(
            headers=[("Content-Type", "application/json")],
            body=json.dumps(
                {**openai_chat("up-model-4"), "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
            ).encode(),
            delay=2.5,
        )
    )
    result: list[httpx.Response] = []
    body = {"model": "gpt-4", "messages": [], "x": "in-flight"}
    t = threading.Thread(
        target=lambda: result.append(httpx.post(r.url + "/v1/chat/completions", json=body))
    )
    t.start()
    time.sleep(0.3)  # the request is waiting for the upstream
    _rewrite(r.profile_path, {**profile, "name": "renamed", "modelMapping": {}})
    _wait(lambda: httpx.get(r.url + "/health").json()["profile"] == "renamed", timeout=4)
    t.join(10)
    assert result and result[0].status_code == 200
    line = r.wait_for_log(
        lambda x: x.get("event") == "request_completed" and x["route"] == "/v1/chat/completions"
    )
    assert line["provider"] == "testprov"  # the profile it ran on
    # its model is one the old profile knew (the new one maps nothing): not `other`
    assert value(scrape(r.url), "tokens_total", model="up-model-4") == 5
